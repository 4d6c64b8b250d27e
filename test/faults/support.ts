/**
 * Leak accounting for the fault-injection tests: what must be back to zero (or to its baseline) once a
 * fault has played out — grants the frontend holds, URB ids in flight on both sides, URBs waiting in
 * the frontend's pending queue, port worker threads alive in the backend.
 */
import type { Connection } from "../../src/engine/connection.js";
import type { VirtualHostController } from "../../src/frontend/index.js";
import type { Urb, UrbCompletion } from "../../src/frontend/types.js";

export interface Leaks {
  /** Grant refs the frontend has out (granted, not revoked). */
  readonly grants: number;
  readonly frontendInFlight: number;
  readonly frontendPending: number;
  readonly backendInFlight: number;
  /** Port worker threads started by the backend and not yet exited. */
  readonly liveWorkers: number;
  /** URBs each attached port worker still holds. */
  readonly portInFlight: number;
}

export async function leaks(conn: Connection, hcd: VirtualHostController): Promise<Leaks> {
  const s = await conn.stats();
  const fs = hcd.stats();
  let portInFlight = 0;
  for (const p of Object.values(s.portWorkers)) portInFlight += p?.inFlight ?? 0;
  return {
    grants: hcd.grants.entries - hcd.grants.freeCount,
    frontendInFlight: fs.inFlight,
    frontendPending: fs.pending,
    backendInFlight: s.inFlight,
    liveWorkers: s.liveWorkers,
    portInFlight,
  };
}

/** Wait until nothing is held anywhere and exactly `workers` port workers are alive. */
export async function expectNoLeaks(
  conn: Connection,
  hcd: VirtualHostController,
  workers: number,
): Promise<void> {
  let last: Leaks | null = null;
  const want: Leaks = {
    grants: 0,
    frontendInFlight: 0,
    frontendPending: 0,
    backendInFlight: 0,
    liveWorkers: workers,
    portInFlight: 0,
  };
  const deadline = Date.now() + 5000;
  for (;;) {
    last = await leaks(conn, hcd);
    if (JSON.stringify(last) === JSON.stringify(want)) return;
    if (Date.now() > deadline)
      throw new Error(`leaks: ${JSON.stringify(last)}, want ${JSON.stringify(want)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Submit with a count of completions, so "exactly once" can be checked. */
export class Tracked {
  readonly completions: UrbCompletion[] = [];
  readonly done: Promise<UrbCompletion>;
  constructor(
    hcd: VirtualHostController,
    readonly urb: Urb,
  ) {
    this.done = new Promise((resolve) =>
      hcd.submitWithCallback(urb, (c) => {
        this.completions.push(c);
        resolve(c);
      }),
    );
  }
}
