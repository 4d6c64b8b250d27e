/**
 * Is this thread's host oversubscribed right now? The input of the adaptive
 * wait strategy (spin.ts): on a quiet host a spin costs an idle core and
 * saves a wake-up; on a busy one (a VMM's vCPU threads running flat out) a
 * spinning thread is preempted mid-path and steals the time of the very
 * threads it waits for, so it must park sooner.
 *
 * Signs that this thread competes for a CPU, both per thread:
 * - The kernel's own account (Linux, `/proc/thread-self/schedstat`: time on
 *   CPU, time runnable but waiting for a CPU, slices run), read at most every
 *   SAMPLE_MS. Over each window: the share of the window spent waiting for a
 *   CPU, and the mean wait per slice. A thread on a quiet host gets a CPU
 *   within a few µs of becoming runnable; on a busy one it queues behind
 *   whole time slices.
 * - Preemption seen directly: a gap of PREEMPT_GAP_MICROS or more between two
 *   clock reads of a tight spin (which reads the clock every few hundred ns).
 *
 * Competing with whom matters. On a quiet 2-core host the engine's own threads
 * (frontend, backend, port workers: an EngineThreads registry in the
 * connection's shared memory) queue behind each other, and there spinning
 * still pays: the peer it waits for is one of them and runs soon. Only work
 * that is not the engine's can be stolen from, so a sign counts only while
 * the host runs FOREIGN_CORES or more of it: the host's busy time
 * (`/proc/stat`) minus the engine threads' run time, every HOST_SAMPLE_MS.
 * Without a registry or `/proc/stat`, every sign counts.
 *
 * A counted sign marks the host contended for HOLD_MS (each new one extends
 * it), so a host that calms down gets spinning back within HOLD_MS. Every
 * file is opened, read into a reused buffer and closed (about 10 µs; no
 * descriptor outlives the call, so a worker ended by terminate() leaks none)
 * and parsed in place.
 */
import { closeSync, openSync, readlinkSync, readSync } from "node:fs";

/** Least time between two readings of this thread's account. */
const SAMPLE_MS = 10;
/** How long one sign of contention keeps the host marked contended. */
const HOLD_MS = 200;
/** A clock gap this long inside a tight spin is a preemption, not a slow poll. */
export const PREEMPT_GAP_MICROS = 40;
/** Contended when the thread waited for a CPU this share of the window or more... */
const WAIT_SHARE = 0.05;
/** ...and the mean wait per slice was at least this (a wake-up on an idle core is a few µs). */
const WAIT_PER_SLICE_MICROS = 30;
/**
 * Least time between two readings of the host's busy time: `/proc/stat` counts in 10 ms ticks, so a
 * window of 100 ms on two cores is 20 ticks, good to about a tenth of a core.
 */
const HOST_SAMPLE_MS = 100;
/** A window longer than this (the thread was parked) only starts a new one: its average says little of now. */
const HOST_WINDOW_MAX_MS = 1000;
/** Work that is not the engine's, in cores, above which a sign of competing for a CPU counts. */
export const FOREIGN_CORES = 0.5;
/** How long one window with foreign work keeps it counted present (longer than HOST_SAMPLE_MS). */
const FOREIGN_HOLD_MS = 3 * HOST_SAMPLE_MS;
/** `/proc/stat` counts in USER_HZ ticks, 100 per second on every Linux architecture Node runs on. */
const MS_PER_TICK = 10;

/** One reading of a thread's account: ns on a CPU, ns runnable but waiting for one, slices run. */
export interface ThreadAccount {
  runNs: number;
  waitNs: number;
  slices: number;
}

/**
 * Where the probe reads the kernel's account. The default reads `/proc`; tests give their own.
 * Every method answers null where there is no account to read.
 */
export interface KernelAccount {
  /** The calling thread's account. */
  thisThread(into: ThreadAccount): boolean;
  /** The calling thread's id (a tid), or null. */
  thisThreadId(): number | null;
  /** Run time in ns of thread `tid` of this process, or null (it ended, or no account). */
  threadRunNs(tid: number): number | null;
  /** The host's busy time in ms over all CPUs so far (user, nice, system, irq, softirq, steal), or null. */
  hostBusyMs(): number | null;
}

/**
 * The connection's engine threads, by id, in shared memory: each thread that waits on the engine's
 * rings registers itself, so any of them can tell the engine's CPU time from other work.
 */
export class EngineThreads {
  /** [0]: changes so far (a window across one is not measured); [1..]: thread ids (0: free). */
  private readonly words: Int32Array;

  /** Bytes a registry of `slots` threads takes. */
  static bytes(slots: number): number {
    return 4 * (1 + slots);
  }

  constructor(sab: SharedArrayBuffer, byteOffset: number, slots: number) {
    this.words = new Int32Array(sab, byteOffset, 1 + slots);
  }

  /** Add `tid`. False when the registry is full (that thread then counts as foreign work). */
  register(tid: number): boolean {
    for (let i = 1; i < this.words.length; i++) {
      if (Atomics.compareExchange(this.words, i, 0, tid) === 0) {
        Atomics.add(this.words, 0, 1);
        return true;
      }
    }
    return false;
  }

  /** Remove `tid` (its thread stops waiting on the engine). */
  unregister(tid: number): void {
    for (let i = 1; i < this.words.length; i++) {
      if (Atomics.compareExchange(this.words, i, tid, 0) === tid) Atomics.add(this.words, 0, 1);
    }
  }

  /** Changes to the registry so far: a sum of run times is comparable only within one generation. */
  get generation(): number {
    return Atomics.load(this.words, 0);
  }

  /** The engine threads' run time so far in ns, read through `account`. */
  runNs(account: KernelAccount): number {
    let sum = 0;
    for (let i = 1; i < this.words.length; i++) {
      const tid = Atomics.load(this.words, i);
      if (tid !== 0) sum += account.threadRunNs(tid) ?? 0;
    }
    return sum;
  }
}

/** The kernel's account in `/proc` (Linux). */
export class ProcAccount implements KernelAccount {
  private readonly buf = new Uint8Array(256);
  private readonly fields = [0, 0, 0, 0, 0, 0, 0, 0, 0];

  thisThread(into: ThreadAccount): boolean {
    return this.schedstat("/proc/thread-self/schedstat", into);
  }

  thisThreadId(): number | null {
    try {
      // "<pid>/task/<tid>"
      const tid = Number(readlinkSync("/proc/thread-self").split("/").pop());
      return Number.isInteger(tid) && tid > 0 ? tid : null;
    } catch {
      return null;
    }
  }

  private readonly other: ThreadAccount = { runNs: 0, waitNs: 0, slices: 0 };

  threadRunNs(tid: number): number | null {
    return this.schedstat(`/proc/self/task/${tid}/schedstat`, this.other) ? this.other.runNs : null;
  }

  hostBusyMs(): number | null {
    // "cpu  user nice system idle iowait irq softirq steal guest guest_nice\n": the first line only, after "cpu".
    const n = this.readNumbers("/proc/stat", 3, this.fields.length);
    if (n < 8) return null;
    const f = this.fields;
    return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) * MS_PER_TICK;
  }

  private schedstat(path: string, into: ThreadAccount): boolean {
    if (this.readNumbers(path, 0, 3) !== 3) return false;
    into.runNs = this.fields[0]!;
    into.waitNs = this.fields[1]!;
    into.slices = this.fields[2]!;
    return true;
  }

  /**
   * Read `path` and parse up to `max` space-separated decimal numbers of its first line from byte `from`
   * into `fields`, in place (no string). Answers how many; -1 when the file cannot be read.
   */
  private readNumbers(path: string, from: number, max: number): number {
    let n: number;
    let fd = -1;
    try {
      fd = openSync(path, "r");
      n = readSync(fd, this.buf, 0, this.buf.length, 0);
    } catch {
      return -1;
    } finally {
      if (fd >= 0) closeSync(fd);
    }
    let count = 0;
    let v = 0;
    let inNumber = false;
    for (let i = from; i <= n && count < max; i++) {
      const c = i < n ? this.buf[i]! : 10;
      if (c >= 48 && c <= 57) {
        v = v * 10 + (c - 48);
        inNumber = true;
      } else {
        if (inNumber) this.fields[count++] = v;
        v = 0;
        inNumber = false;
        if (c === 10) break;
      }
    }
    return count;
  }
}

export class ContentionProbe {
  /** False where the kernel's account is not read (asked so, not Linux, /proc hidden, or closed). */
  private schedstat: boolean;
  private readonly account: KernelAccount;
  private readonly engine: EngineThreads | null;
  private readonly now: ThreadAccount = { runNs: 0, waitNs: 0, slices: 0 };
  private nextSampleAt = 0;
  private lastAt = 0;
  private lastWaitNs = 0;
  private lastSlices = 0;
  private contendedUntil = 0;
  /** This thread's id in the engine registry (registered on the first reading), or null. */
  private tid: number | null = null;
  private registered = false;
  /** Whether foreign work is measured (an engine registry and the host's busy time); else every sign counts. */
  private hostView: boolean;
  private nextHostSampleAt = 0;
  private lastHostAt = 0;
  private lastHostBusyMs = 0;
  private lastEngineRunNs = 0;
  private lastGeneration = -1;
  private foreignUntil = 0;
  /** Statistics: windows found contended, preemptions seen in spins, the last measured foreign work in cores. */
  contendedWindows = 0;
  preemptions = 0;
  foreignCores = 0;

  /**
   * `schedstat`: read the kernel's account where it exists (default). `engine`: the connection's engine
   * threads, to tell their CPU time from other work (without it every sign of competition counts).
   * `account`: where the account is read (default `/proc`).
   */
  constructor(
    schedstat = true,
    engine: EngineThreads | null = null,
    account: KernelAccount = new ProcAccount(),
  ) {
    this.schedstat = schedstat;
    this.engine = engine;
    this.account = account;
    this.hostView = schedstat && engine !== null;
  }

  /**
   * True while the host looks oversubscribed by work that is not the engine's. `now`: performance.now().
   * Cheap: reads /proc at most every 10 ms, on the calling thread (the account is that thread's).
   */
  contended(now: number): boolean {
    if (now >= this.nextSampleAt && this.schedstat) this.sample(now);
    return now < this.contendedUntil;
  }

  /** A spin saw its thread descheduled for `gapMicros`. */
  preempted(now: number, _gapMicros: number): void {
    this.preemptions++;
    if (this.counts(now)) this.contendedUntil = now + HOLD_MS;
  }

  /** Stop reading the kernel's account (preemptions in spins still count) and leave the engine registry. */
  close(): void {
    this.schedstat = false;
    if (this.registered && this.tid !== null) this.engine?.unregister(this.tid);
    this.registered = false;
  }

  /** Whether the kernel's account is read. */
  get readsSchedstat(): boolean {
    return this.schedstat;
  }

  /** This thread's CPU time so far in ns, from the kernel's account (null where there is none). */
  cpuNs(): number | null {
    return this.schedstat && this.read() ? this.now.runNs : null;
  }

  /** A sign of competing for a CPU counts: foreign work is present, or it cannot be told apart. */
  private counts(now: number): boolean {
    return !this.hostView || now < this.foreignUntil;
  }

  private read(): boolean {
    if (this.account.thisThread(this.now)) return true;
    this.schedstat = false; // not Linux, or /proc hidden: preemptions in spins are the only signal
    this.hostView = false;
    return false;
  }

  private sample(now: number): void {
    this.nextSampleAt = now + SAMPLE_MS;
    if (!this.read()) return;
    if (this.hostView && now >= this.nextHostSampleAt) this.sampleHost(now);
    const { waitNs, slices } = this.now;
    if (this.lastAt !== 0) {
      const windowNs = (now - this.lastAt) * 1e6;
      const dWait = waitNs - this.lastWaitNs;
      const dSlices = slices - this.lastSlices;
      const waited =
        dWait >= WAIT_SHARE * windowNs && dSlices > 0 && dWait / dSlices >= WAIT_PER_SLICE_MICROS * 1000;
      if (waited && this.counts(now)) {
        this.contendedWindows++;
        this.contendedUntil = now + HOLD_MS;
      }
    }
    this.lastAt = now;
    this.lastWaitNs = waitNs;
    this.lastSlices = slices;
  }

  /** Measure the work that is not the engine's over the last host window. */
  private sampleHost(now: number): void {
    this.nextHostSampleAt = now + HOST_SAMPLE_MS;
    const engine = this.engine!;
    if (!this.registered) {
      this.tid = this.account.thisThreadId();
      this.registered = this.tid !== null && engine.register(this.tid);
    }
    const busyMs = this.account.hostBusyMs();
    if (busyMs === null) {
      this.hostView = false; // no host account: every sign counts, as without a registry
      return;
    }
    const generation = engine.generation;
    const engineNs = engine.runNs(this.account);
    const windowMs = now - this.lastHostAt;
    if (this.lastHostAt !== 0 && windowMs <= HOST_WINDOW_MAX_MS && generation === this.lastGeneration) {
      const foreignMs = busyMs - this.lastHostBusyMs - (engineNs - this.lastEngineRunNs) / 1e6;
      this.foreignCores = Math.max(0, foreignMs / windowMs);
      if (this.foreignCores >= FOREIGN_CORES) this.foreignUntil = now + FOREIGN_HOLD_MS;
    }
    this.lastHostAt = now;
    this.lastHostBusyMs = busyMs;
    this.lastEngineRunNs = engineNs;
    this.lastGeneration = generation;
  }
}
