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
 *
 * On a contended host (contention.ts: the thread waits for a CPU, or was
 * preempted inside a spin) every spin is cut to contendedSpinMicros (16 µs):
 * there a spinning thread is preempted mid-path and takes the CPU of the
 * threads it waits for and of the host's own work (a VMM's vCPUs); parking
 * sooner leaves them the core and wakes with the scheduler's favour for a
 * sleeper. `hits`/`misses` say how often spinning paid (WaitStats).
 */
import { performance } from "node:perf_hooks";
import { InvalidOptionError } from "../util/errors.js";
import { ContentionProbe, EngineThreads, PREEMPT_GAP_MICROS } from "./contention.js";
import type { Waitable } from "./waitable.js";

export interface SpinOptions {
  /** Longest spin in µs before parking (default 100: one to two wake-ups here). */
  readonly maxSpinMicros?: number;
  /** Cap on concurrent spinners across threads. */
  readonly limiter?: SpinLimiter;
  /**
   * Longest spin in µs while the host is contended (default CONTENDED_SPIN_MICROS; never more than
   * maxSpinMicros). Long enough to catch a peer that is on a CPU and answering, far too short to be
   * preempted in.
   */
  readonly contendedSpinMicros?: number;
  /**
   * What says the host is contended: a ContentionProbe (the default opens one on the calling thread,
   * so construct the spin on the thread that waits), or null to never look (tests).
   */
  readonly probe?: ContentionProbe | null;
}

/** A waiting thread's account: how often spinning paid, how often the host was found contended. */
export interface WaitStats {
  /** Spins that found work. */
  readonly hits: number;
  /** Spins that ran out (the thread then parked). */
  readonly misses: number;
  /** Sleeps that ended in a wake-up. */
  readonly sleeps: number;
  /** Spins cut to the contended cap. */
  readonly contendedSpins: number;
  /** Preemptions seen inside spins. */
  readonly preemptions: number;
  /** 10 ms windows in which the thread waited for a CPU while foreign work ran (the kernel's account). */
  readonly contendedWindows: number;
  /** Work that is not the engine's in the last measured window, in cores (0 where it is not measured). */
  readonly foreignCores: number;
  /** The thread's CPU time in ns (the kernel's account; null where there is none). */
  readonly cpuNs: number | null;
}

/** The default spin cap on a contended host, µs: a peer that is running answers within it. */
export const CONTENDED_SPIN_MICROS = 16;

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
  private readonly contendedMicros: number;
  readonly probe: ContentionProbe | null;
  /** Statistics: spins that found work, spins that ran out, sleeps, spins cut short by contention. */
  hits = 0;
  misses = 0;
  sleeps = 0;
  contendedSpins = 0;

  constructor(options: SpinOptions = {}) {
    this.maxMicros = options.maxSpinMicros ?? 100;
    if (!Number.isFinite(this.maxMicros) || this.maxMicros < 0) {
      throw new InvalidOptionError(
        `spin.maxSpinMicros must be a non-negative number, got ${String(this.maxMicros)}`,
      );
    }
    this.budgetMicros = this.maxMicros;
    this.limiter = options.limiter;
    const contended = options.contendedSpinMicros ?? CONTENDED_SPIN_MICROS;
    if (Number.isNaN(contended) || contended < 0) {
      throw new InvalidOptionError(
        `spin.contendedSpinMicros must be a non-negative number (Infinity: never cut short), got ${String(contended)}`,
      );
    }
    this.contendedMicros = Math.min(contended, this.maxMicros);
    // Reads nothing until asked (a spin longer than the cap is about to start, or statistics).
    // The connection's engine threads sit beside the spinner count, so the probe tells their work from the host's.
    this.probe =
      options.probe !== undefined
        ? options.probe
        : new ContentionProbe(true, options.limiter?.threads ?? null);
  }

  /**
   * How long the next spin may last: the adaptive budget, capped on a contended host, where a spinning
   * thread takes the CPU of the thread it waits for and is preempted mid-path.
   */
  private spinMicros(now: number): number {
    const budget = this.budgetMicros;
    if (budget === 0 || this.probe === null || budget <= this.contendedMicros) return budget;
    if (!this.probe.contended(now)) return budget;
    this.contendedSpins++;
    return this.contendedMicros;
  }

  get currentBudgetMicros(): number {
    return this.budgetMicros;
  }

  /** Poll `w` for up to the budget. True when work turned up. */
  spin(w: Waitable): boolean {
    if (w.hasPending()) return true;
    if (this.budgetMicros === 0) return false;
    const budget = this.spinMicros(performance.now());
    if (budget === 0) return false;
    if (this.limiter !== undefined && !this.limiter.tryEnter()) return false;
    // Read the clock after the probe (which may have read /proc): only the spin's own gaps count.
    let now = performance.now();
    try {
      const deadline = now + budget / 1000;
      do {
        for (let i = 0; i < POLLS_PER_CLOCK_READ; i++) {
          if (w.hasPending()) {
            this.hits++;
            this.budgetMicros = this.maxMicros;
            return true;
          }
        }
        const before = now;
        now = performance.now();
        // A gap this long between two reads of a tight loop: the thread was descheduled.
        if ((now - before) * 1000 >= PREEMPT_GAP_MICROS) this.probe?.preempted(now, (now - before) * 1000);
      } while (now < deadline);
    } finally {
      this.limiter?.leave();
    }
    this.missed();
    return false;
  }

  /** A spin ran out: halve the budget; below 1 µs, park at once from now on. */
  private missed(): void {
    this.misses++;
    const half = this.budgetMicros / 2;
    this.budgetMicros = half < SMALLEST_BUDGET_MICROS ? 0 : half;
  }

  /**
   * spin() for a thread whose own event loop produces some of the work
   * (devices running on it complete in microtasks and timers): look between
   * turns of the event loop (under 1 µs each here) instead of in a tight loop
   * that would keep those completions from ever running.
   */
  spinTurning(w: Waitable): Promise<boolean> | boolean {
    if (w.hasPending()) return true;
    if (this.budgetMicros === 0) return false;
    const start = performance.now();
    const budget = this.spinMicros(start);
    if (budget === 0) return false;
    if (this.limiter !== undefined && !this.limiter.tryEnter()) return false;
    const deadline = start + budget / 1000;
    // One promise per spin and a bare setImmediate per turn: awaiting timers/promises' setImmediate made a
    // promise, an Immediate and closures per turn, garbage the scavenger pays for on the data path.
    return new Promise<boolean>((resolve) => {
      const turn = (): void => {
        // A few microseconds of tight polling per turn: a turn costs an epoll round of its own.
        let now = performance.now();
        const until = Math.min(deadline, now + TIGHT_MICROS_PER_TURN / 1000);
        let found = w.hasPending();
        while (!found && now < until) {
          for (let i = 0; i < POLLS_PER_CLOCK_READ && !found; i++) found = w.hasPending();
          const before = now;
          now = performance.now();
          // Only gaps inside the tight poll count: a turn of the event loop may run real work.
          if ((now - before) * 1000 >= PREEMPT_GAP_MICROS) this.probe?.preempted(now, (now - before) * 1000);
        }
        if (found) {
          this.limiter?.leave();
          this.hits++;
          this.budgetMicros = this.maxMicros;
          resolve(true);
        } else if (now >= deadline) {
          this.limiter?.leave();
          this.missed();
          resolve(false);
        } else setImmediate(turn);
      };
      setImmediate(turn);
    });
  }

  /** What the wait strategy did so far, for statistics. */
  snapshot(): WaitStats {
    return {
      hits: this.hits,
      misses: this.misses,
      sleeps: this.sleeps,
      contendedSpins: this.contendedSpins,
      preemptions: this.probe?.preemptions ?? 0,
      contendedWindows: this.probe?.contendedWindows ?? 0,
      foreignCores: this.probe?.foreignCores ?? 0,
      cpuNs: this.probe?.cpuNs() ?? null,
    };
  }

  /** The waiting loop ended: stop reading the kernel's account. */
  close(): void {
    this.probe?.close();
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

/** The engine threads' registry (contention.ts) follows the spinner count in the same shared memory. */
const ENGINE_THREADS_OFFSET = 8;
const ENGINE_THREAD_SLOTS = 30;
export const SPIN_LIMITER_BYTES = ENGINE_THREADS_OFFSET + EngineThreads.bytes(ENGINE_THREAD_SLOTS);

/**
 * A counter of spinning threads in shared memory, capped at `maxSpinners`; beside it, the registry of the
 * threads that wait on the connection's rings.
 */
export class SpinLimiter {
  private readonly word: Int32Array;
  /** The connection's engine threads (null in a buffer too small to hold them). */
  readonly threads: EngineThreads | null;

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
    this.threads =
      sab.byteLength >= SPIN_LIMITER_BYTES
        ? new EngineThreads(sab, ENGINE_THREADS_OFFSET, ENGINE_THREAD_SLOTS)
        : null;
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
