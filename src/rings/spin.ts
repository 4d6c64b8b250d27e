/**
 * Adaptive spinning before sleeping on a doorbell.
 *
 * The budget (in polls of the waitable) doubles when a spin finds work, and
 * halves when it runs out and the thread has to sleep, within [min, max]:
 * hot traffic keeps a thread awake, idle traffic parks it at no CPU cost.
 * A SpinLimiter shared between threads caps how many spin at once, so that
 * on a 2-core machine three threads never burn both cores while the thread
 * with the actual work waits for a time slice.
 */
import { InvalidOptionError } from "../util/errors.js";
import type { Waitable } from "./doorbell.js";

export interface SpinOptions {
  /** Smallest budget in polls (0 lets the spinner stop spinning altogether when idle). */
  readonly minPolls?: number;
  /** Largest budget in polls; about 20 ns each here, so 4096 ≈ 80 µs, close to two wake-up costs. */
  readonly maxPolls?: number;
  /** Cap on concurrent spinners across threads. */
  readonly limiter?: SpinLimiter;
}

export class AdaptiveSpin {
  private budget: number;
  private readonly minPolls: number;
  private readonly maxPolls: number;
  private readonly limiter: SpinLimiter | undefined;
  /** Statistics: spins that found work, spins that ran out. */
  hits = 0;
  misses = 0;

  constructor(options: SpinOptions = {}) {
    this.minPolls = options.minPolls ?? 0;
    this.maxPolls = options.maxPolls ?? 4096;
    if (!Number.isInteger(this.minPolls) || this.minPolls < 0) {
      throw new InvalidOptionError(
        `spin.minPolls must be a non-negative integer, got ${String(this.minPolls)}`,
      );
    }
    if (!Number.isInteger(this.maxPolls) || this.maxPolls < this.minPolls) {
      throw new InvalidOptionError(
        `spin.maxPolls must be an integer ≥ minPolls, got ${String(this.maxPolls)}`,
      );
    }
    this.budget = this.maxPolls;
    this.limiter = options.limiter;
  }

  get currentBudget(): number {
    return this.budget;
  }

  /** Poll `w` up to the budget. True when work turned up. */
  spin(w: Waitable): boolean {
    if (w.hasPending()) return true;
    const polls = this.budget;
    if (polls === 0) return false;
    if (this.limiter !== undefined && !this.limiter.tryEnter()) return false;
    try {
      for (let i = 0; i < polls; i++) {
        if (w.hasPending()) {
          this.hits++;
          this.budget = Math.min(this.maxPolls, Math.max(polls * 2, 64));
          return true;
        }
      }
    } finally {
      this.limiter?.leave();
    }
    this.misses++;
    this.budget = Math.max(this.minPolls, polls >> 1);
    return false;
  }

  /** Work arrived during the final check after a missed spin: the spin was almost long enough. */
  sleptInVain(): void {
    this.budget = Math.min(this.maxPolls, Math.max(this.budget * 2, 64));
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
