/**
 * `npm run bench [-- --quick] [-- --json FILE] [-- --report FILE.html] [-- --only ring,e2e]`: every
 * suite in one process, one machine header, tables side by side, then the
 * record: every figure under its stable name and the usbvirt / peer ratios.
 * `--json FILE` writes {node, cpu, cores, results, ratios}; `--report FILE.html` the same record as
 * charts (report.ts): FILE.html and FILE-<chart>.svg.
 */
import { writeFileSync } from "node:fs";
import os from "node:os";
import { allocSuite } from "./alloc.js";
import { CONTENTION_LEVELS, contendedSuite } from "./contended.js";
import { e2eSuite } from "./e2e.js";
import { grantSuite } from "./grant.js";
import { machineHeader, type Ratio, type Result, type SuiteOptions } from "./harness.js";
import { idleSuite } from "./idle.js";
import { isoSuite } from "./iso.js";
import { PEER_DESIGNS } from "./peers/peers.js";
import { type BenchRecord, writeReport } from "./report.js";
import { ringSuite } from "./ring.js";
import { usbipSuite } from "./usbip.js";
import { usbredirSuite } from "./usbredir.js";
import { vmmSuite } from "./vmm.js";

interface Suite {
  readonly name: string;
  run(opts: SuiteOptions): Promise<Result[]>;
}

const suites: Suite[] = [
  ringSuite,
  grantSuite,
  e2eSuite,
  contendedSuite,
  allocSuite,
  usbipSuite,
  usbredirSuite,
  idleSuite,
  isoSuite,
  vmmSuite,
];

function argValue(flag: string): string | undefined {
  const i = process.argv.indexOf(flag);
  if (i < 0) return undefined;
  const v = process.argv[i + 1];
  if (v === undefined || v.startsWith("--")) throw new Error(`${flag} needs a value`);
  return v;
}

/** usbvirt / peer for every peer design, oriented so that > 1 favours usbvirt. */
function ratios(results: readonly Result[]): Ratio[] {
  const value = (name: string) => results.find((r) => r.name === name)?.value;
  const out: Ratio[] = [];
  const add = (name: string, ours: string, theirs: string, higherIsBetter: boolean) => {
    const a = value(ours);
    const b = value(theirs);
    if (a === undefined || b === undefined || a === 0 || b === 0) return;
    out.push({ name, value: higherIsBetter ? a / b : b / a });
  };
  for (const d of PEER_DESIGNS) {
    add(`ratio.e2e.vs_${d}`, "e2e.null.inflight64.urbs_per_s", `e2e.null.inflight64.${d}.urbs_per_s`, true);
    add(
      `ratio.e2e.inflight1.vs_${d}`,
      "e2e.null.inflight1.urbs_per_s",
      `e2e.null.inflight1.${d}.urbs_per_s`,
      true,
    );
    add(`ratio.rtt.vs_${d}`, "e2e.rtt.p50_us", `e2e.rtt.${d}.p50_us`, false);
    add(`ratio.rtt.p99.vs_${d}`, "e2e.rtt.p99_us", `e2e.rtt.${d}.p99_us`, false);
    add(`ratio.bulk64k.vs_${d}`, "e2e.bulk64k.gbps", `e2e.bulk64k.${d}.gbps`, true);
    add(`ratio.bulk1m.vs_${d}`, "e2e.bulk1m.gbps", `e2e.bulk1m.${d}.gbps`, true);
  }
  // On a busy host (bench/contended.ts), against postMessage in the same run, per level of contention.
  for (const { key } of CONTENTION_LEVELS) {
    const pm = "postmessage";
    add(
      `ratio.e2e.${key}.vs_${pm}`,
      `e2e.${key}.null.inflight64.urbs_per_s`,
      `e2e.${key}.null.inflight64.${pm}.urbs_per_s`,
      true,
    );
    add(
      `ratio.e2e.inflight1.${key}.vs_${pm}`,
      `e2e.${key}.null.inflight1.urbs_per_s`,
      `e2e.${key}.null.inflight1.${pm}.urbs_per_s`,
      true,
    );
    add(`ratio.rtt.${key}.vs_${pm}`, `e2e.${key}.rtt.p50_us`, `e2e.${key}.rtt.${pm}.p50_us`, false);
    add(`ratio.rtt.p99.${key}.vs_${pm}`, `e2e.${key}.rtt.p99_us`, `e2e.${key}.rtt.${pm}.p99_us`, false);
    add(`ratio.bulk64k.${key}.vs_${pm}`, `e2e.${key}.bulk64k.gbps`, `e2e.${key}.bulk64k.${pm}.gbps`, true);
    add(`ratio.burner_work.${key}.vs_${pm}`, `e2e.${key}.burner_work`, `e2e.${key}.burner_work.${pm}`, true);
  }
  // The peer here is the socket itself: a naive TCP echo, same client, same run.
  add("ratio.usbip.bulk64k.vs_tcp_echo", "usbip.bulk64k.mbps", "tcp.echo64k.mbps", true);
  add("ratio.usbip.bulk64k.vs_backendworker", "usbip.bulk64k.mbps", "usbip.bulk64k.backendworker.mbps", true);
  // Mutual TLS against plain TCP: same server, client and workloads, same run (TLS / plain: < 1 is its cost).
  for (const face of ["usbip", "usbredir"]) {
    add(`ratio.${face}.tls.bulk64k.vs_plain`, `${face}.tls.bulk64k.mbps`, `${face}.bulk64k.mbps`, true);
    add(
      `ratio.${face}.tls.null.inflight1.vs_plain`,
      `${face}.tls.null.inflight1.urbs_per_s`,
      `${face}.null.inflight1.urbs_per_s`,
      true,
    );
  }
  // usbredir against USB/IP (the other face on the same engine) and the socket, same workloads, same run.
  add(
    "ratio.usbredir.null.vs_usbip",
    "usbredir.null.inflight64.urbs_per_s",
    "usbip.null.inflight64.urbs_per_s",
    true,
  );
  add(
    "ratio.usbredir.null.inflight1.vs_usbip",
    "usbredir.null.inflight1.urbs_per_s",
    "usbip.null.inflight1.urbs_per_s",
    true,
  );
  add("ratio.usbredir.bulk64k.vs_usbip", "usbredir.bulk64k.mbps", "usbip.bulk64k.mbps", true);
  add(
    "ratio.usbredir.bulk64k.pairs1.vs_usbip",
    "usbredir.bulk64k.pairs1.mbps",
    "usbip.bulk64k.pairs1.mbps",
    true,
  );
  add("ratio.usbredir.bulk64k.vs_tcp_echo", "usbredir.bulk64k.mbps", "tcp.echo64k.mbps", true);
  // The QEMU guest's storage read (bench/vmm.ts): medians of the same boot, and our slowest read against
  // the naive Python usbredir server's median.
  add(
    "ratio.vmm.usbredir.storage.read.vs_pypeer",
    "vmm.usbredir.storage.read.mbps",
    "vmm.usbredir.storage.read.pypeer.mbps",
    true,
  );
  add(
    "ratio.vmm.usbredir.storage.read.min.vs_pypeer",
    "vmm.usbredir.storage.read.min.mbps",
    "vmm.usbredir.storage.read.pypeer.mbps",
    true,
  );
  // A client written in Python against usbvirt and against a naive pure-Python USB/IP server (the same
  // client, same run); usbvirt's Node client against both at 1 pair in flight (and at 8).
  for (const w of PY_WORKLOAD_NAMES) {
    const figure = w.replace(/\.(urbs_per_s|mbps)$/, "");
    add(`ratio.usbip.pyclient.${figure}.vs_pypeer`, `usbip.pyclient.${w}`, `usbip.pypeer.${w}`, true);
    add(`ratio.usbredir.pyclient.${figure}.vs_usbip`, `usbredir.pyclient.${w}`, `usbip.pyclient.${w}`, true);
  }
  add(
    "ratio.usbip.bulk64k.pairs1.vs_pypeer",
    "usbip.bulk64k.pairs1.mbps",
    "usbip.pypeer.nodeclient.bulk64k.pairs1.mbps",
    true,
  );
  add("ratio.usbip.bulk64k.vs_pypeer", "usbip.bulk64k.mbps", "usbip.pypeer.nodeclient.bulk64k.mbps", true);
  // The usbfs reaper's finite poll against the indefinite one it replaced (bench/iso.ts), same run.
  for (const stream of ["in", "out", "in.hb", "out.hb"]) {
    add(
      `ratio.iso.usbfs.${stream}.vs_indefinite_poll`,
      `iso.usbfs.${stream}.urbs_per_s`,
      `iso.usbfs.${stream}.indefinite_poll.urbs_per_s`,
      true,
    );
    add(
      `ratio.iso.usbfs.${stream}.engine_cpu.vs_indefinite_poll`,
      `iso.usbfs.${stream}.engine_cpu_us`,
      `iso.usbfs.${stream}.indefinite_poll.engine_cpu_us`,
      false,
    );
  }
  return out;
}

/** The Python client's figures (after `usbip.pyclient.` / `usbip.pypeer.` / `usbredir.pyclient.`). */
const PY_WORKLOAD_NAMES = [
  "bulk64k.mbps",
  "bulk64k.pairs1.mbps",
  "null.inflight1.urbs_per_s",
  "null.inflight64.urbs_per_s",
] as const;

function fmt(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
  if (v >= 100) return v.toFixed(0);
  return v.toFixed(2);
}

async function main(): Promise<void> {
  const quick = process.argv.includes("--quick");
  const jsonFile = argValue("--json");
  const reportFile = argValue("--report");
  const only = argValue("--only")?.split(",");
  const unknown = only?.filter((n) => !suites.some((s) => s.name === n)) ?? [];
  if (unknown.length > 0)
    throw new Error(`unknown suite(s) ${unknown.join(", ")}; known: ${suites.map((s) => s.name).join(", ")}`);
  console.log(`# usbvirt benchmarks${quick ? " (--quick: a moment per task, figures not meaningful)" : ""}`);
  console.log(machineHeader());
  console.log(
    `load average ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  const results: Result[] = [];
  for (const suite of suites) {
    if (only !== undefined && !only.includes(suite.name)) continue;
    results.push(...(await suite.run({ quick })));
  }
  const r = ratios(results);
  console.log("\n## the record (stable names)");
  console.table(results.map((x) => ({ name: x.name, value: fmt(x.value), unit: x.unit })));
  if (r.length > 0)
    console.table(
      r.map((x) => ({ name: x.name, "usbvirt / peer": `${x.value.toFixed(x.value < 10 ? 2 : 1)}×` })),
    );
  const cpus = os.cpus();
  const record: BenchRecord = {
    node: process.version,
    cpu: cpus[0]?.model ?? "unknown",
    cores: os.availableParallelism(),
    quick,
    loadavg: os.loadavg(),
    results,
    ratios: r,
  };
  if (jsonFile !== undefined) {
    writeFileSync(jsonFile, `${JSON.stringify(record, null, 2)}\n`);
    console.log(`wrote ${jsonFile}`);
  }
  if (reportFile !== undefined) console.log(`wrote ${writeReport(reportFile, record).join(", ")}`);
}

main().then(
  // Worker threads the suites closed may still be winding down: do not wait for them.
  () => process.exit(process.exitCode ?? 0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
