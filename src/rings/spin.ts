/**
 * Adaptive spinning before sleeping on a doorbell.
 *
 * A thread woken through the kernel pays a wake-up (5–65 µs here, more
 * under load); a spinning thread pays a core. The classic answer: spin for
 * about as long as a wake-up costs, and only while traffic is hot.
 * - The budget is time, not polls, so it means the same on any CPU.
 * - A spin that finds work sets the budget to the maximum (traffic is hot).
 * - A spin that runs out halves it; below 1 µs it drops to zero: an idle
 *   thread parks at once and costs nothing.
 * - A sleep that ended sooner than the maximum budget means spinning would
 *   have caught the work: the budget doubles (from 2 µs when it was zero).
 * A SpinLimiter shared between threads caps how many spin at once, so that on
 * a 2-core machine three threads never burn both cores while the thread that
 * has the work waits for a time slice.
 */
import { performance } from "node:perf_hooks";
import { InvalidOptionError } from "../util/errors.js";
import type { Waitable } from "./doorbell.js";

export interface SpinOptions {
  /** Longest spin in µs before parking (default 100: one to two wake-ups here). */
  readonly maxSpinMicros?: number;
  /** Cap on concurrent spinners across threads. */
  readonly limiter?: SpinLimiter;
}

/** Polls between two clock reads: a poll is a few ns, a clock read tens. */
const POLLS_PER_CLOCK_READ = 32;
const SMALLEST_BUDGET_MICROS = 1;
const RESTART_BUDGET_MICROS = 2;
/** spinTurning polls this long between turns of the event loop. */
const TIGHT_MICROS_PER_TURN = 2;

export class AdaptiveSpin {
  private budgetMicros: number;
  private readonly maxMicros: number;
  private readonly limiter: SpinLimiter | undefined;
  /** Statistics: spins that found work, spins that ran out, sleeps. */
  hits = 0;
  misses = 0;
  sleeps = 0;

  constructor(options: SpinOptions = {}) {
    this.maxMicros = options.maxSpinMicros ?? 100;
    if (!Number.isFinite(this.maxMicros) || this.maxMicros < 0) {
      throw new InvalidOptionError(
        `spin.maxSpinMicros must be a non-negative number, got ${String(this.maxMicros)}`,
      );
    }
    this.budgetMicros = this.maxMicros;
    this.limiter = options.limiter;
  }

  get currentBudgetMicros(): number {
    return this.budgetMicros;
  }

  /** Poll `w` for up to the budget. True when work turned up. */
  spin(w: Waitable): boolean {
    if (w.hasPending()) return true;
    const budget = this.budgetMicros;
    if (budget === 0) return false;
    if (this.limiter !== undefined && !this.limiter.tryEnter()) return false;
    try {
      const deadline = performance.now() + budget / 1000;
      do {
        for (let i = 0; i < POLLS_PER_CLOCK_READ; i++) {
          if (w.hasPending()) {
            this.hits++;
            this.budgetMicros = this.maxMicros;
            return true;
          }
        }
      } while (performance.now() < deadline);
    } finally {
      this.limiter?.leave();
    }
    this.misses++;
    const half = budget / 2;
    this.budgetMicros = half < SMALLEST_BUDGET_MICROS ? 0 : half;
    return false;
  }

  /**
   * spin() for a thread whose own event loop produces some of the work
   * (devices running on it complete in microtasks and timers): look between
   * turns of the event loop (under 1 µs each here) instead of in a tight loop
   * that would keep those completions from ever running.
   */
  spinTurning(w: Waitable): Promise<boolean> | boolean {
    if (w.hasPending()) return true;
    const budget = this.budgetMicros;
    if (budget === 0) return false;
    if (this.limiter !== undefined && !this.limiter.tryEnter()) return false;
    const deadline = performance.now() + budget / 1000;
    // One promise per spin and a bare setImmediate per turn: awaiting timers/promises' setImmediate made a
    // promise, an Immediate and closures per turn, garbage the scavenger pays for on the data path.
    return new Promise<boolean>((resolve) => {
      const turn = (): void => {
        // A few microseconds of tight polling per turn: a turn costs an epoll round of its own.
        const until = Math.min(deadline, performance.now() + TIGHT_MICROS_PER_TURN / 1000);
        let found = w.hasPending();
        while (!found && performance.now() < until) {
          for (let i = 0; i < POLLS_PER_CLOCK_READ && !found; i++) found = w.hasPending();
        }
        if (found) {
          this.limiter?.leave();
          this.hits++;
          this.budgetMicros = this.maxMicros;
          resolve(true);
        } else if (performance.now() >= deadline) {
          this.limiter?.leave();
          this.misses++;
          const half = budget / 2;
          this.budgetMicros = half < SMALLEST_BUDGET_MICROS ? 0 : half;
          resolve(false);
        } else setImmediate(turn);
      };
      setImmediate(turn);
    });
  }

  /** The thread slept `sleptMs` before work came: had the spin lasted that long, no sleep was needed. */
  woke(sleptMs: number): void {
    this.sleeps++;
    if (sleptMs * 1000 <= this.maxMicros) this.grow();
  }

  /** Work turned up in the final check right after a spin ran out: the spin was almost long enough. */
  sleptInVain(): void {
    this.grow();
  }

  private grow(): void {
    this.budgetMicros = Math.min(this.maxMicros, Math.max(this.budgetMicros * 2, RESTART_BUDGET_MICROS));
  }
}

export const SPIN_LIMITER_BYTES = 64;

/** A counter of spinning threads in shared memory, capped at `maxSpinners`. */
export class SpinLimiter {
  private readonly word: Int32Array;

  static create(): SharedArrayBuffer {
    return new SharedArrayBuffer(SPIN_LIMITER_BYTES);
  }

  constructor(
    sab: SharedArrayBuffer,
    readonly maxSpinners: number,
  ) {
    if (!Number.isInteger(maxSpinners) || maxSpinners < 0) {
      throw new InvalidOptionError(`maxSpinners must be a non-negative integer, got ${String(maxSpinners)}`);
    }
    this.word = new Int32Array(sab, 0, 1);
  }

  tryEnter(): boolean {
    if (Atomics.add(this.word, 0, 1) < this.maxSpinners) return true;
    Atomics.sub(this.word, 0, 1);
    return false;
  }

  leave(): void {
    Atomics.sub(this.word, 0, 1);
  }

  get spinning(): number {
    return Atomics.load(this.word, 0);
  }
}
