/**
 * Is this thread's host oversubscribed right now? The input of the adaptive
 * wait strategy (spin.ts): on a quiet host a spin costs an idle core and
 * saves a wake-up; on a busy one (a VMM's vCPU threads running flat out) a
 * spinning thread is preempted mid-path and steals the time of the very
 * threads it waits for, so it must park sooner.
 *
 * Two signals, both per thread:
 * - The kernel's own account (Linux, `/proc/thread-self/schedstat`: time on
 *   CPU, time runnable but waiting for a CPU, slices run). Read at most every
 *   SAMPLE_MS (open, read into a reused buffer, close: about 10 µs; no
 *   descriptor outlives the call, so a worker ended by terminate() leaks none),
 *   parsed in place.
 *   Over each window: the share of the window spent waiting for a CPU, and the
 *   mean wait per slice. A thread on a quiet host gets a CPU within a few µs
 *   of becoming runnable; on a busy one it queues behind whole time slices.
 * - Preemption seen directly: a gap of PREEMPT_GAP_MICROS or more between two
 *   clock reads of a tight spin (which reads the clock every few hundred ns)
 *   means the thread was descheduled. Works where /proc does not.
 * Either marks the host contended for HOLD_MS (each new sign extends it), so
 * a host that calms down gets spinning back within HOLD_MS.
 */
import { closeSync, openSync, readSync } from "node:fs";

/** Least time between two schedstat readings. */
const SAMPLE_MS = 10;
/** How long one sign of contention keeps the host marked contended. */
const HOLD_MS = 200;
/** A clock gap this long inside a tight spin is a preemption, not a slow poll. */
export const PREEMPT_GAP_MICROS = 40;
/** Contended when the thread waited for a CPU this share of the window or more... */
const WAIT_SHARE = 0.05;
/** ...and the mean wait per slice was at least this (a wake-up on an idle core is a few µs). */
const WAIT_PER_SLICE_MICROS = 30;

/** Names the calling thread's own account. */
const SCHEDSTAT = "/proc/thread-self/schedstat";

export class ContentionProbe {
  /** False where the kernel's account is not read (asked so, not Linux, /proc hidden, or closed). */
  private schedstat: boolean;
  private readonly buf = new Uint8Array(96);
  private nextSampleAt = 0;
  private lastAt = 0;
  private lastWaitNs = 0;
  private lastSlices = 0;
  private contendedUntil = 0;
  /** Statistics: windows found contended, preemptions seen in spins. */
  contendedWindows = 0;
  preemptions = 0;

  /** `schedstat`: read the kernel's account where it exists (default). */
  constructor(schedstat = true) {
    this.schedstat = schedstat;
  }

  /**
   * True while the host looks oversubscribed. `now`: performance.now(). Cheap: reads /proc at most every
   * 10 ms, on the calling thread (the account is that thread's).
   */
  contended(now: number): boolean {
    if (now >= this.nextSampleAt && this.schedstat) this.sample(now);
    return now < this.contendedUntil;
  }

  /** A spin saw its thread descheduled for `gapMicros`. */
  preempted(now: number, _gapMicros: number): void {
    this.preemptions++;
    this.contendedUntil = now + HOLD_MS;
  }

  /** Stop reading the kernel's account (preemptions in spins still count). */
  close(): void {
    this.schedstat = false;
  }

  /** Whether the kernel's account is read. */
  get readsSchedstat(): boolean {
    return this.schedstat;
  }

  /** This thread's CPU time so far in ns, from the kernel's account (null where there is none). */
  cpuNs(): number | null {
    return this.schedstat && this.read() ? this.runNs : null;
  }

  private runNs = 0;
  private waitNs = 0;
  private slices = 0;

  /** Read "<run ns> <wait ns> <slices>\n" and parse it in place (no string). */
  private read(): boolean {
    let n: number;
    let fd = -1;
    try {
      fd = openSync(SCHEDSTAT, "r");
      n = readSync(fd, this.buf, 0, this.buf.length, 0);
    } catch {
      this.schedstat = false; // not Linux, or /proc hidden: preemptions in spins are the only signal
      return false;
    } finally {
      if (fd >= 0) closeSync(fd);
    }
    let field = 0;
    let v = 0;
    for (let i = 0; i <= n && field < 3; i++) {
      const c = i < n ? this.buf[i]! : 32;
      if (c >= 48 && c <= 57) v = v * 10 + (c - 48);
      else {
        if (field === 0) this.runNs = v;
        else if (field === 1) this.waitNs = v;
        else this.slices = v;
        field++;
        v = 0;
      }
    }
    return field === 3;
  }

  private sample(now: number): void {
    this.nextSampleAt = now + SAMPLE_MS;
    if (!this.read()) return;
    const waitNs = this.waitNs;
    const slices = this.slices;
    if (this.lastAt !== 0) {
      const windowNs = (now - this.lastAt) * 1e6;
      const dWait = waitNs - this.lastWaitNs;
      const dSlices = slices - this.lastSlices;
      const busy =
        dWait >= WAIT_SHARE * windowNs && dSlices > 0 && dWait / dSlices >= WAIT_PER_SLICE_MICROS * 1000;
      if (busy) {
        this.contendedWindows++;
        this.contendedUntil = now + HOLD_MS;
      }
    }
    this.lastAt = now;
    this.lastWaitNs = waitNs;
    this.lastSlices = slices;
  }
}
