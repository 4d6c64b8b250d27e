/**
 * Doorbells: how a ring end wakes its peer (the event channel of Xen).
 *
 * A doorbell is one Int32 word in a SharedArrayBuffer, a sequence number.
 * ring() bumps it and notifies; a waiter reads it, makes the final check
 * (armAndCheck: set the ring's event index, look once more), and sleeps only
 * while the word still holds the value it read. Any ring() after that read
 * changes the word, so no wake-up is lost. One doorbell can serve several
 * rings (a backend worker waits on its urb ring and its port rings at once).
 *
 * Waiting spins first (see spin.ts): a wake-up through the kernel costs
 * 25–50 µs on this machine, a spin costs a core, so spin only while traffic
 * is hot. Threads that need their event loop (libusb completions, the VMM's
 * main thread) use waitAsync, never wait.
 */
import { performance } from "node:perf_hooks";
import { InvalidOptionError } from "../util/errors.js";
import type { AdaptiveSpin } from "./spin.js";

/** What a doorbell waiter watches: a ring end, or several at once. */
export interface Waitable {
  /** Cheap look, no side effects on the peer: is there work (or a fault) now? */
  hasPending(): boolean;
  /** Arm notification (event index) and look once more: true means do not sleep. */
  armAndCheck(): boolean;
}

/** Several waitables behind one doorbell. */
export function anyOf(items: readonly Waitable[]): Waitable {
  return {
    hasPending: () => items.some((w) => w.hasPending()),
    armAndCheck: () => {
      // Arm them all before deciding, so none can be missed between checks.
      let pending = false;
      for (const w of items) pending = w.armAndCheck() || pending;
      return pending;
    },
  };
}

export const DOORBELL_BYTES = 64;

export type WaitOutcome = "work" | "woken" | "timed-out";

export class Doorbell {
  private readonly word: Int32Array;
  private readonly index: number;

  /** A doorbell on its own 64-byte line. */
  static create(): SharedArrayBuffer {
    return new SharedArrayBuffer(DOORBELL_BYTES);
  }

  constructor(sab: SharedArrayBuffer, byteOffset = 0) {
    if (!(sab instanceof SharedArrayBuffer))
      throw new InvalidOptionError("doorbell buffer must be a SharedArrayBuffer");
    if (byteOffset % 4 !== 0 || byteOffset < 0 || byteOffset + 4 > sab.byteLength) {
      throw new InvalidOptionError(
        `doorbell byteOffset ${byteOffset} is not an aligned word inside the buffer`,
      );
    }
    this.word = new Int32Array(sab);
    this.index = byteOffset / 4;
  }

  /** Wake whoever waits on this doorbell. */
  ring(): void {
    // The seq-cst add orders this ring after the ring-index store that
    // published the work; a waiter that read the old value will not sleep.
    Atomics.add(this.word, this.index, 1);
    Atomics.notify(this.word, this.index);
  }

  /** Current sequence number (for tests and statistics). */
  get sequence(): number {
    return Atomics.load(this.word, this.index);
  }

  /**
   * Block until `w` has work: spin (if the spinner allows), then sleep in
   * Atomics.wait. Never call on a thread whose event loop must run.
   */
  wait(w: Waitable, spin?: AdaptiveSpin, timeoutMs?: number): WaitOutcome {
    if (spin?.spin(w)) return "work";
    const seq = Atomics.load(this.word, this.index);
    if (w.armAndCheck()) {
      spin?.sleptInVain();
      return "work";
    }
    const slept = performance.now();
    const r = Atomics.wait(this.word, this.index, seq, timeoutMs);
    if (r === "timed-out") return "timed-out";
    spin?.woke(performance.now() - slept);
    return "woken";
  }

  /**
   * Like wait() but the sleep is Atomics.waitAsync, so the thread's event
   * loop keeps running. Returns null when work was found without sleeping
   * (no promise allocated on the hot path), else a promise settled on wake.
   * No timeout: a pending waitAsync does not keep a thread alive, and a
   * timeout made the tail latency 8× worse on this machine. `alreadySpun`:
   * the caller spun with spin.spinTurning; `spin` only learns from the sleep.
   */
  waitAsync(w: Waitable, spin?: AdaptiveSpin, alreadySpun = false): Promise<WaitOutcome> | null {
    if (!alreadySpun && spin?.spin(w)) return null;
    const seq = Atomics.load(this.word, this.index);
    if (w.armAndCheck()) {
      spin?.sleptInVain();
      return null;
    }
    const r = Atomics.waitAsync(this.word, this.index, seq);
    if (!r.async) return null; // the word moved between the load and the wait: work is there
    const slept = performance.now();
    return r.value.then((v) => {
      if (v === "timed-out") return "timed-out";
      spin?.woke(performance.now() - slept);
      return "woken";
    });
  }
}
