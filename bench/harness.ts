/**
 * Shared bench plumbing: the machine header every run prints, and one table
 * format for every suite. Each suite lives in its own file and exports
 * `run(opts)`; bench/main.ts runs them in one process so variants compare
 * side by side on the same machine state.
 */
import os from "node:os";
import type { Bench } from "tinybench";

export interface SuiteOptions {
  /** Run every task for a moment only (CI keeps the benches from rotting). */
  readonly quick: boolean;
}

/** One figure of the performance record, under a stable name (`--json` writes these). */
export interface Result {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
}

/** usbvirt / peer, oriented so that > 1 means usbvirt is better. */
export interface Ratio {
  readonly name: string;
  readonly value: number;
}

export function machineHeader(): string {
  const cpus = os.cpus();
  return [
    `node ${process.version} (${process.platform}-${process.arch})`,
    `cpu ${cpus[0]?.model ?? "unknown"} × ${cpus.length} cores (os.availableParallelism ${os.availableParallelism()})`,
  ].join("\n");
}

/** Bench timing options: `quick` shrinks them so every task still runs. */
export function benchTiming(opts: SuiteOptions): { time: number; warmupTime: number; iterations: number } {
  return opts.quick
    ? { time: 20, warmupTime: 5, iterations: 5 }
    : { time: 1000, warmupTime: 200, iterations: 20 };
}

export function formatRate(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)} M/s`;
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)} k/s`;
  return `${perSecond.toFixed(1)} /s`;
}

/** A completed task's rate and latency, from one run or several (throws when it did not complete). */
export function latencyOf(
  benches: Bench | readonly Bench[],
  name: string,
): { opsPerSec: number; p50Micros: number; p99Micros: number } {
  const all = Array.isArray(benches) ? benches : [benches as Bench];
  const r = all.map((b) => b.getTask(name)?.result).find((x) => x !== undefined);
  if (r?.state !== "completed") throw new Error(`bench task "${name}" did not complete`);
  return { opsPerSec: 1000 / r.period, p50Micros: r.latency.p50 * 1000, p99Micros: r.latency.p99 * 1000 };
}

/**
 * Print tinybench runs as one table. `itemsPerOp` says how many units one measured call
 * moves (a batch of 32 descriptors is 32), so rates compare across variants.
 */
export function printBench(
  title: string,
  benches: Bench | readonly Bench[],
  itemsPerOp: Record<string, number> = {},
): Result[] {
  const results: Result[] = [];
  console.log(`\n## ${title}`);
  const tasks = (Array.isArray(benches) ? benches : [benches as Bench]).flatMap((b) => b.tasks);
  const rows = tasks.map((task) => {
    const r = task.result;
    if (r?.state !== "completed") {
      const why = r && "error" in r ? String(r.error) : (r?.state ?? "not run");
      throw new Error(`bench task "${task.name}" did not complete: ${why}`);
    }
    const items = itemsPerOp[task.name] ?? 1;
    // totalTime / runs: the reciprocal of the mean latency, not the mean of per-sample rates.
    const opsPerSec = 1000 / r.period;
    const rate = opsPerSec * items;
    results.push({ name: task.name, value: rate, unit: "items/s" });
    return {
      task: task.name,
      "items/s": formatRate(rate),
      "µs/op p50": (r.latency.p50 * 1000).toFixed(3),
      "µs/op p99": (r.latency.p99 * 1000).toFixed(3),
      samples: r.latency.samplesCount,
    };
  });
  console.table(rows);
  return results;
}
