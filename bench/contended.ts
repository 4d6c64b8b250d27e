/**
 * The end-to-end figures on a busy host (issue #16). A VMM's host is rarely
 * idle: its vCPU threads run flat out, often more of them than cores. This
 * suite starts busy threads (bench/burner-worker.ts: a fixed hash workload,
 * counted in work units) — one per core (`e2e.contended1.*`), then two per
 * core (`e2e.contended.*`) — and, beside them, runs the e2e null URBs at 1
 * and 64 in flight, the single-URB round trip (p50, p99) and the 64 KiB bulk
 * stream for usbvirt in both placements and for the postMessage peer. Beside
 * each it reports the busy threads' work per second (`burner_work`), because
 * an engine that spins steals it; `burner_work.alone` is their rate with
 * nothing else running, the ceiling. The ratios against postMessage come
 * from the same run (bench/main.ts).
 */
import os from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import type { Worker } from "node:worker_threads";
import { Bench, type Task } from "tinybench";
import type { Connection } from "../src/engine/connection.js";
import type { WaitStats } from "../src/rings/spin.js";
import { siblingModule, startWorker } from "../src/util/start-worker.js";
import {
  BATCH,
  BATCH1,
  BYTES_64K,
  DEPTH,
  engineBulkStream,
  engineVariants,
  KIB64,
  nullUrb,
  PAIRS_64K,
  peerBulkStream,
  peerPipeline,
  pipeline,
  privateBuffers,
  ROUNDS_64K,
  startEngine,
} from "./e2e.js";
import { benchTiming, formatRate, latencyOf, type Result, type SuiteOptions } from "./harness.js";
import { startPeer } from "./peers/peers.js";

/** Int32 words per burner counter (a 64-byte line each); word 0 of line 0 is the stop flag. */
const STRIDE = 16;
/** Hash rounds per work unit (about 10–20 µs of one core). */
const ITERATIONS = 8192;

/** Busy threads per core: one (`contended1`) and two (`contended`). */
export const CONTENTION_LEVELS = [
  { key: "contended1", perCore: 1 },
  { key: "contended", perCore: 2 },
] as const;

/** The variants run beside the busy threads: the engine's two placements and postMessage. */
const variants = () => [
  ...engineVariants().map((v) => ({ label: v.label, tag: v.tag, engine: v })),
  { label: "postmessage", tag: ".postmessage", engine: null },
];

/** Busy threads, counting work units in shared memory. */
class Burners {
  private readonly words: Int32Array;
  private readonly workers: Worker[] = [];

  constructor(readonly count: number) {
    // Line 0 holds the stop flag; burner i counts on line i + 1.
    this.words = new Int32Array(new SharedArrayBuffer((count + 1) * STRIDE * 4));
    for (let i = 0; i < count; i++) {
      this.workers.push(
        startWorker(siblingModule(import.meta.url, "./burner-worker"), {
          workerData: { words: this.words.buffer, index: i + 1, stride: STRIDE, iterations: ITERATIONS },
        }),
      );
    }
  }

  /** Work units done so far, all burners together. */
  total(): number {
    let n = 0;
    for (let i = 1; i <= this.count; i++) n += Atomics.load(this.words, i * STRIDE);
    return n;
  }

  /** Resolves once every burner has done some work (its thread has started). */
  async started(): Promise<void> {
    for (let tries = 0; tries < 500; tries++) {
      let all = true;
      for (let i = 1; i <= this.count; i++) if (Atomics.load(this.words, i * STRIDE) === 0) all = false;
      if (all) return;
      await sleep(10);
    }
    throw new Error("contended bench: busy threads did not start");
  }

  async stop(): Promise<void> {
    Atomics.store(this.words, 0, 1);
    await Promise.all(this.workers.map((w) => new Promise((resolve) => w.once("exit", resolve))));
  }
}

/** Work and time accumulated over the measured phases of tasks. */
interface WorkMeter {
  units: number;
  ms: number;
}

export const contendedSuite = {
  name: "contended",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const cores = os.availableParallelism();
    const results: Result[] = [];
    const rows: Record<string, string | number>[] = [];
    const b64 = privateBuffers(KIB64, PAIRS_64K);
    // --quick (CI): fewer URBs per measured call, so that five calls through postMessage on a busy host
    // still take a moment; the full run moves the e2e suite's amounts.
    const batch = opts.quick ? 256 : BATCH;
    const batch1 = opts.quick ? 32 : BATCH1;
    const rounds = opts.quick ? 1 : ROUNDS_64K;
    const bytes64k = (BYTES_64K / ROUNDS_64K) * rounds;
    for (const level of CONTENTION_LEVELS) {
      const burners = new Burners(cores * level.perCore);
      await burners.started();
      const prefix = `e2e.${level.key}`;
      // The ceiling: the busy threads' rate with nothing else of ours running, measured before each
      // variant (the host's other load moves it) and averaged.
      const aloneMs = opts.quick ? 50 : 300;
      const aloneRates: number[] = [];
      const measureAlone = async (): Promise<number> => {
        const a0 = burners.total();
        const t0 = performance.now();
        await sleep(aloneMs);
        const rate = (burners.total() - a0) / ((performance.now() - t0) / 1000);
        aloneRates.push(rate);
        return rate;
      };
      await sleep(aloneMs); // the busy threads' own warm-up
      for (const v of variants()) {
        const alone = await measureAlone();
        rows.push({
          variant: v.label,
          task: "(busy threads alone)",
          "items/s": "",
          "burner work/s": formatRate(alone),
        });
        const meter: WorkMeter = { units: 0, ms: 0 };
        const perTask = new Map<string, WorkMeter>();
        let start = { units: 0, at: 0 };
        /** The engine's backend account (its wait strategy and thread CPU time) at a task's start, and per task. */
        let conn: Connection | null = null;
        let wait0: { wait: WaitStats; requests: number } | null = null;
        const account = new Map<string, { cpuNsPerUrb: number | null; hitRate: number | null }>();
        // Count the busy threads' work over each task's measured phase (not its warm-up).
        const hooks = {
          async beforeAll(this: Task, mode?: string) {
            if (mode !== "run") return;
            if (conn !== null) {
              const s = await conn.stats();
              wait0 = { wait: s.wait, requests: s.requests };
            }
            start = { units: burners.total(), at: performance.now() };
          },
          async afterAll(this: Task, mode?: string) {
            if (mode !== "run") return;
            const m = { units: burners.total() - start.units, ms: performance.now() - start.at };
            meter.units += m.units;
            meter.ms += m.ms;
            perTask.set(this.name, m);
            if (conn !== null && wait0 !== null) {
              const s = await conn.stats();
              const urbs = s.requests - wait0.requests;
              const spins = s.wait.hits + s.wait.misses - wait0.wait.hits - wait0.wait.misses;
              account.set(this.name, {
                cpuNsPerUrb:
                  s.wait.cpuNs !== null && wait0.wait.cpuNs !== null && urbs > 0
                    ? (s.wait.cpuNs - wait0.wait.cpuNs) / urbs
                    : null,
                hitRate: spins > 0 ? (s.wait.hits - wait0.wait.hits) / spins : null,
              });
            }
          },
        };
        const bench = new Bench(benchTiming(opts));
        const add = (name: string, fn: () => Promise<void>) => bench.add(name, fn, { async: true, ...hooks });
        let close: () => Promise<void>;
        if (v.engine !== null) {
          const e = await startEngine(v.engine);
          conn = e.conn;
          add("null URB, 1 in flight", () => pipeline(e.conn, nullUrb, batch1, 1));
          add("null URB, 64 in flight", () => pipeline(e.conn, nullUrb, batch, DEPTH));
          add("round trip, one URB", () => pipeline(e.conn, nullUrb, 1, 1));
          add("bulk 64 KiB, 8 OUT + 8 IN", () => engineBulkStream(e.conn, e.r64, KIB64, rounds));
          close = () => e.conn.close();
        } else {
          const peer = await startPeer("postmessage", DEPTH);
          add("null URB, 1 in flight", () => peerPipeline(peer, batch1, 1));
          add("null URB, 64 in flight", () => peerPipeline(peer, batch, DEPTH));
          add("round trip, one URB", () => peerPipeline(peer, 1, 1));
          add("bulk 64 KiB, 8 OUT + 8 IN", () => peerBulkStream(peer, b64, rounds));
          close = () => peer.close();
        }
        await bench.run();
        await close();
        const n1 = latencyOf(bench, "null URB, 1 in flight");
        const n64 = latencyOf(bench, "null URB, 64 in flight");
        const rtt = latencyOf(bench, "round trip, one URB");
        const k64 = latencyOf(bench, "bulk 64 KiB, 8 OUT + 8 IN");
        const work = meter.ms > 0 ? meter.units / (meter.ms / 1000) : 0;
        const t = v.tag;
        results.push(
          { name: `${prefix}.null.inflight1${t}.urbs_per_s`, value: n1.opsPerSec * batch1, unit: "URB/s" },
          { name: `${prefix}.null.inflight64${t}.urbs_per_s`, value: n64.opsPerSec * batch, unit: "URB/s" },
          { name: `${prefix}.rtt${t}.p50_us`, value: rtt.p50Micros, unit: "µs" },
          { name: `${prefix}.rtt${t}.p99_us`, value: rtt.p99Micros, unit: "µs" },
          { name: `${prefix}.bulk64k${t}.gbps`, value: (k64.opsPerSec * bytes64k) / 1e9, unit: "GB/s" },
          { name: `${prefix}.burner_work${t}`, value: work, unit: "work/s" },
        );
        for (const [depth, task] of [
          ["inflight1", "null URB, 1 in flight"],
          ["inflight64", "null URB, 64 in flight"],
        ] as const) {
          const ns = account.get(task)?.cpuNsPerUrb;
          if (ns != null)
            results.push({
              name: `${prefix}.backend_cpu.null.${depth}${t}.ns_per_urb`,
              value: ns,
              unit: "ns",
            });
        }
        const items: Record<string, number> = {
          "null URB, 1 in flight": n1.opsPerSec * batch1,
          "null URB, 64 in flight": n64.opsPerSec * batch,
          "round trip, one URB": rtt.opsPerSec,
          "bulk 64 KiB, 8 OUT + 8 IN": k64.opsPerSec * bytes64k,
        };
        for (const [task, rate] of Object.entries(items)) {
          const m = perTask.get(task);
          const row: Record<string, string | number> = {
            variant: v.label,
            task,
            "items/s": formatRate(rate),
            "burner work/s": m === undefined || m.ms === 0 ? "" : formatRate(m.units / (m.ms / 1000)),
          };
          const a = account.get(task);
          if (a?.cpuNsPerUrb != null) row["backend CPU/URB µs"] = (a.cpuNsPerUrb / 1000).toFixed(2);
          if (a?.hitRate != null) row["spins that paid"] = `${Math.round(a.hitRate * 100)} %`;
          if (task === "round trip, one URB") {
            row["µs p50"] = rtt.p50Micros.toFixed(1);
            row["µs p99"] = rtt.p99Micros.toFixed(1);
          }
          rows.push(row);
        }
      }
      await burners.stop();
      const alone = aloneRates.reduce((a, b) => a + b, 0) / aloneRates.length;
      results.push({ name: `${prefix}.burner_work.alone`, value: alone, unit: "work/s" });
      console.log(
        `\n## contended (${level.key}): ${burners.count} busy threads on ${cores} cores beside each variant`,
      );
      console.table(rows.splice(0));
    }
    return results;
  },
};
