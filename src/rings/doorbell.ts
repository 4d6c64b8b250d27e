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
 *
 * A doorbell has one waiting thread. When it rings on that same thread (the
 * frontend and backend on one thread: Connection option backendThread
 * "shared"), the parked waitAsync waiter is woken without Atomics.notify, in
 * this turn's microtasks (up to SAME_TURN_WAKES a turn, then at the next
 * turn): notify reaches an async waiter through V8's task queue and the
 * loop's async handle, and on that path notify alone was a sixth of the
 * thread's time (node --cpu-prof, one thread, 1 in flight); a wake at the
 * next turn cost each hop between the loops an epoll round and a pass through
 * the loop's phases, two or three per packet on a network server.
 * The waiter's Atomics.waitAsync stays registered and is reused by its next
 * park, so a ring from another thread still wakes it and none piles up; a
 * ring on the waiting thread while it runs needs no wake at all (its next
 * park looks at the rings first).
 */
import { performance } from "node:perf_hooks";
import { InvalidOptionError } from "../util/errors.js";
import type { AdaptiveSpin } from "./spin.js";
import type { Waitable } from "./waitable.js";

export { anyOf, type Waitable } from "./waitable.js";

export const DOORBELL_BYTES = 64;

export type WaitOutcome = "work" | "woken" | "timed-out";

/** This thread's park on one doorbell word: who to wake, and whether an Atomics.waitAsync is registered. */
interface Park {
  wake: (() => void) | null;
  registered: boolean;
}

/**
 * This thread's parks by doorbell buffer and word. Module state is per thread, and a buffer another
 * thread posted here is a different object: only a ring on the waiter's own thread finds its park.
 */
const parks = new WeakMap<SharedArrayBuffer, Map<number, Park>>();

function parkOf(sab: SharedArrayBuffer, index: number): Park {
  let byIndex = parks.get(sab);
  if (byIndex === undefined) {
    byIndex = new Map();
    parks.set(sab, byIndex);
  }
  let park = byIndex.get(index);
  if (park === undefined) {
    park = { wake: null, registered: false };
    byIndex.set(index, park);
  }
  return park;
}

/**
 * Same-thread wakes run as microtasks, at most SAME_TURN_WAKES per turn of the event loop: a hand-off
 * between the loops of one thread (frontend, backend) then costs no turn of its own, which on a network
 * server is an epoll round and a pass through every phase of the loop per hop. Past the budget the wake
 * waits for the next turn, so I/O and timers keep their place however busy the loops are.
 */
export const SAME_TURN_WAKES = 64;
let sameTurnWakes = 0;
let budgetResetScheduled = false;

function resetSameTurnBudget(): void {
  sameTurnWakes = 0;
  budgetResetScheduled = false;
}

function wakeOnThisThread(wake: () => void): void {
  if (sameTurnWakes < SAME_TURN_WAKES) {
    sameTurnWakes++;
    if (!budgetResetScheduled) {
      budgetResetScheduled = true;
      setImmediate(resetSameTurnBudget);
    }
    queueMicrotask(wake);
  } else setImmediate(wake);
}

export class Doorbell {
  private readonly word: Int32Array;
  private readonly index: number;
  /** This thread's park on the word (shared by every Doorbell of this thread on it). */
  private readonly park: Park;

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
    this.park = parkOf(sab, this.index);
  }

  /** Wake whoever waits on this doorbell. */
  ring(): void {
    // The seq-cst add orders this ring after the ring-index store that
    // published the work; a waiter that read the old value will not sleep.
    Atomics.add(this.word, this.index, 1);
    const park = this.park;
    const wake = park.wake;
    if (wake !== null) {
      // The waiter is parked on this very thread (and a doorbell has one waiting thread): wake it in this
      // turn's microtasks while the turn's budget lasts, else at the next turn (two loops waking each other
      // in microtasks without a bound would starve the event loop).
      park.wake = null;
      wakeOnThisThread(wake);
    } else if (!park.registered) {
      Atomics.notify(this.word, this.index);
    }
    // else: the waiting thread is this one and it is running; it looks at its rings before it parks.
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
    const park = this.park;
    if (!park.registered) {
      const r = Atomics.waitAsync(this.word, this.index, seq);
      if (!r.async) return null; // the word moved between the load and the wait: work is there
      park.registered = true;
      // A ring from another thread: wake whoever is parked then. A waiter registered before this park's
      // load of `seq` hears every notify after it, so reusing it loses no wake-up.
      void r.value.then(() => {
        park.registered = false;
        const wake = park.wake;
        park.wake = null;
        wake?.();
      });
    }
    const slept = performance.now();
    return new Promise<WaitOutcome>((resolve) => {
      park.wake = () => {
        spin?.woke(performance.now() - slept);
        resolve("woken");
      };
    });
  }
}
