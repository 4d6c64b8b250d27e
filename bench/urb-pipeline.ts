/**
 * The engine benches' driver: complete `total` URBs keeping `depth` in
 * flight, each slot resubmitting its own URB from its completion callback
 * (no promise and no closure per URB, so the figure is the engine's).
 */
import type { VirtualHostController } from "../src/frontend/index.js";
import type { Urb, UrbCompletion } from "../src/frontend/types.js";
import { OK } from "../src/urb/status.js";

/** `make` gives each slot its URB (distinct objects: the controller refuses one already outstanding). */
export function urbPipeline(
  hcd: VirtualHostController,
  make: () => Urb,
  total: number,
  depth: number,
): Promise<void> {
  // URBs and callbacks are made before the first submit, so a timed run measures the engine alone.
  const urbs = Array.from({ length: Math.min(depth, total) }, make);
  return new Promise((resolve, reject) => {
    let submitted = 0;
    let completed = 0;
    const callbacks = urbs.map((u) => {
      const onDone = (c: UrbCompletion): void => {
        if (c.status !== OK) {
          reject(new Error(`URB failed with status ${c.status}`));
          return;
        }
        if (++completed === total) resolve();
        else if (submitted < total) {
          submitted++;
          hcd.submitWithCallback(u, onDone);
        }
      };
      return onDone;
    });
    for (let i = 0; i < urbs.length; i++) {
      submitted++;
      hcd.submitWithCallback(urbs[i]!, callbacks[i]!);
    }
  });
}
