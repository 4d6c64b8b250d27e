/**
 * A daemon's control socket and toolstack (src/toolstack), as `serve --control` and `redirect --control`
 * start them: the saved state restored first, then the socket opened; closed before the server.
 */

import type { FaceLogger } from "../network-face/log.js";
import { ControlServer, defaultControlPath } from "../toolstack/control-server.js";
import { defaultStateDir, StateStore } from "../toolstack/state-store.js";
import { Toolstack, type ToolstackOptions } from "../toolstack/toolstack.js";
import type { ControlSource } from "./status-page.js";

/** Ports `serve --control` keeps free for runtime binds (each holds 8 MiB of guest memory). */
export const CONTROL_SPARE_PORTS = 8;

export interface SteeringSettings {
  /** --control: a path, or true (or "default") for the default path. */
  readonly control?: string | boolean | undefined;
  readonly stateDir?: string | undefined;
}

export interface Steering {
  readonly toolstack: Toolstack;
  readonly control: ControlServer;
  /** What the status page and the metrics read. */
  readonly source: ControlSource;
  close(): Promise<void>;
}

export function controlPathOf(settings: SteeringSettings): string | null {
  if (settings.control === undefined || settings.control === false) return null;
  const given = settings.control;
  return typeof given === "string" && given !== "default" ? given : defaultControlPath();
}

/** Restore the saved state, then listen on the control socket. */
export async function startSteering(
  settings: SteeringSettings,
  parts: Omit<ToolstackOptions, "store" | "log">,
  log: FaceLogger,
): Promise<Steering | null> {
  const path = controlPathOf(settings);
  if (path === null) return null;
  const store = new StateStore(settings.stateDir ?? defaultStateDir());
  const toolstack = new Toolstack({ ...parts, store, log });
  await toolstack.restore();
  let control: ControlServer;
  try {
    control = await ControlServer.start({ path, handler: (r) => toolstack.handle(r), log });
  } catch (err) {
    await toolstack.close();
    throw new Error(`cannot open the control socket ${path}: ${(err as Error).message}`);
  }
  log.info(`control socket: ${path} (state in ${store.dir})`);
  return {
    toolstack,
    control,
    source: {
      path,
      counters: () => ({
        ...toolstack.counters,
        refusals: toolstack.counters.refusals + control.refusals,
      }),
      list: () => toolstack.list(),
    },
    async close() {
      await control.close();
      await toolstack.close();
    },
  };
}
