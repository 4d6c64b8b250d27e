/**
 * The service loop: how every ring consumer of usbvirt (the frontend's
 * controller, the backend host, the port service) runs on its thread. One
 * loop, one yield rule, so the three threads of a connection wait and yield
 * alike and a change to the rule is made once.
 *
 * The rule, per turn:
 * 1. poll() once (the owner handles a bounded batch and says how many
 *    items it handled). A poll that throws ends the loop with that error.
 *    If `stalled()` then says the peer broke the protocol, consume nothing
 *    more for STALLED_BACKOFF_MS and look again (the control plane decides).
 * 2. Work found: look again at once, after the microtasks the poll queued
 *    (a device on this thread completes in them; an awaited submit resolves
 *    in one and may submit again). Every `pollsPerYield` busy polls in a row,
 *    yield a whole turn of the event loop instead (setImmediate), so timers,
 *    I/O and the control plane keep flowing under load.
 * 3. No work: spin (spin.ts: adaptive, capped on a contended host, at most
 *    `maxSpinners` threads at once), then park on the doorbell in
 *    Atomics.waitAsync (doorbell.ts: event indices armed, a final check,
 *    never Atomics.wait: the event loop stays free). When `turning()` says
 *    this thread's own event loop produces work (devices on this thread, the
 *    VMM's own microtasks), the spin looks between turns of the event loop
 *    (spinTurning) instead of in a tight loop that would keep that work from
 *    running.
 * stop() ends the loop: a parked loop is woken through its doorbell, a
 * spinning one stops at its next look at `running` (a spin between turns
 * runs out its budget first); the returned promise settles when the loop has
 * returned and closed its spin (its contention probe).
 */
import type { Doorbell, Waitable } from "./doorbell.js";
import type { AdaptiveSpin } from "./spin.js";

export interface ServiceLoopOptions {
  /** Handle a bounded batch of work; the number of items handled (0: nothing to do). */
  readonly poll: () => number;
  /** What the spin and the park watch: the ring end(s) `poll` consumes, behind `bell`. */
  readonly waitable: Waitable;
  /** The doorbell the peers ring. */
  readonly bell: Doorbell;
  readonly spin: AdaptiveSpin;
  /** Busy polls in a row between two yields to the event loop (default DEFAULT_POLLS_PER_YIELD). */
  readonly pollsPerYield?: number;
  /** True while this thread's event loop produces work for poll: spin between its turns. */
  readonly turning?: () => boolean;
  /** True when the peer broke the protocol: stop consuming, look again after STALLED_BACKOFF_MS. */
  readonly stalled?: () => boolean;
}

/** Busy polls in a row between two yields to the event loop, unless the owner says otherwise. */
export const DEFAULT_POLLS_PER_YIELD = 16;

/** How long a stalled owner is left alone before the loop looks again. */
export const STALLED_BACKOFF_MS = 50;

/** Awaited to let microtasks run: awaiting a settled native promise allocates less than `await null`. */
const RESOLVED: Promise<void> = Promise.resolve();

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function backOff(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, STALLED_BACKOFF_MS));
}

export class ServiceLoop {
  private readonly poll: () => number;
  private readonly waitable: Waitable;
  private readonly bell: Doorbell;
  private readonly spin: AdaptiveSpin;
  private readonly pollsPerYield: number;
  private readonly turning: (() => boolean) | undefined;
  private readonly stalled: (() => boolean) | undefined;
  private running = false;
  private loop: Promise<void> | null = null;

  constructor(options: ServiceLoopOptions) {
    this.poll = options.poll;
    this.waitable = options.waitable;
    this.bell = options.bell;
    this.spin = options.spin;
    this.pollsPerYield = options.pollsPerYield ?? DEFAULT_POLLS_PER_YIELD;
    this.turning = options.turning;
    this.stalled = options.stalled;
  }

  /** True between start() and stop(). */
  get isRunning(): boolean {
    return this.running;
  }

  /** Start the loop on this thread; the promise settles when it has returned (rejects if a poll threw). */
  start(): Promise<void> {
    if (this.loop !== null) return this.loop;
    this.running = true;
    const loop = this.run().finally(() => {
      this.running = false;
      this.loop = null;
      this.spin.close();
    });
    this.loop = loop;
    return loop;
  }

  /** End the loop; resolves once it has returned (with the loop's error, if a poll threw). */
  stop(): Promise<void> {
    this.running = false;
    const loop = this.loop;
    if (loop === null) return Promise.resolve();
    // Wake the loop if it is parked (a spinning one looks at `running` before it parks).
    this.bell.ring();
    return loop;
  }

  private async run(): Promise<void> {
    const waitable = this.waitable;
    let busy = 0;
    while (this.running) {
      const handled = this.poll();
      if (this.stalled?.() === true) {
        busy = 0;
        await backOff();
        continue;
      }
      if (handled > 0) {
        if (++busy >= this.pollsPerYield) {
          busy = 0;
          await yieldToEventLoop();
        } else await RESOLVED;
        continue;
      }
      // `busy` is not reset by a park: a same-thread ring wakes the park in this turn's microtasks
      // (doorbell.ts), so busy polls separated by parks still run without a turn of the event loop
      // between them; only the yield above gives I/O and timers their turn.
      const turning = this.turning?.() === true;
      if (turning && (await this.spin.spinTurning(waitable))) continue;
      // stop() may have run during a spin between turns; from here to the park nothing else runs, and a
      // stop() after the park rings the bell.
      if (!this.running) break;
      const wait = this.bell.waitAsync(waitable, this.spin, turning);
      if (wait !== null) await wait;
    }
  }
}
