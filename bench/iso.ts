/**
 * The `iso` suite: isochronous streams to a host device through the usbfs path
 * (src/devices/host/usbfs-iso.ts), and what its reaper costs while a stream waits: the finite poll
 * (POLL_SLICE_MS, re-armed while URBs are in flight) against the indefinite poll(-1) it replaced, in
 * the same run.
 *
 * 1. The whole path, under the interactive umockdev testbed (no USB hardware is needed):
 *    bench/python/iso-testbed.py --stream serves bench/iso-device.ts's device and answers every iso URB
 *    at once, in full; bench/iso-client.ts runs the engine under it (frontend → backend worker → port
 *    worker → HostUsbDevice → usbfs through koffi) and keeps 8 URBs of 32 packets in flight on one
 *    endpoint: 192-byte packets (audio) and 3072-byte ones (a high-bandwidth camera), IN and OUT.
 *    Figures: URBs/s, and the CPU time per URB of the engine's process and of the testbed's (every
 *    thread), with the slice, then in a second engine process with USBVIRT_USBFS_POLL_SLICE_MS=indefinite
 *    (one at a time: an engine with a device open under umockdev costs CPU even when idle, libusb polling
 *    the emulated node; recorded as `testbed_idle`), then the two side by side. Under the testbed the
 *    reaper's poll never waits (the emulated node is a socket, always writable), so the two variants run
 *    the same reaping path here; the figures bound the rest of the path, under umockdev (see README).
 * 2. The reaper waiting, on the real libuv pool of this process: as many usbfs channels as the pool has
 *    threads, each with a URB in flight on a device that never completes one (bench/usbfs-never-ready.ts:
 *    a real pipe poll() never reports ready). Figures: this process's CPU per second and the polls per
 *    second of one stream, and the small file reads per second that still get a pool thread meanwhile —
 *    with no stream open, with the slice, with the indefinite poll.
 *
 * Needs the optional koffi (both parts) and umockdev's testbed with python3-gi (part 1). Where one is
 * missing the part says so in one line and is skipped, unless USBVIRT_REQUIRE_TOOLS=1 (CI installs them):
 * then the suite fails naming it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import type { TransferRequest } from "../src/devices/device.js";
import {
  POLL_SLICE_ENV,
  POLL_SLICE_MS,
  probeUsbfs,
  UsbfsChannel,
  type UsbfsLoad,
} from "../src/devices/host/usbfs-iso.js";
import type { Result, SuiteOptions } from "./harness.js";
import type { IsoClientReply, IsoClientRequest } from "./iso-client.js";
import { AUDIO_PACKET, HIGH_BANDWIDTH_PACKET, type IsoWorkload, isoBenchDevice } from "./iso-device.js";
import { pythonScript } from "./python-peer.js";
import { ClientProcess, processCpuNs, runStreams, type StreamTask } from "./stream-bench.js";
import { testbedPython, umockdevDescription } from "./umockdev-testbed.js";
import { NeverReadyUsbfs } from "./usbfs-never-ready.js";

type IsoClient = ClientProcess<IsoClientRequest, IsoClientReply>;

/** The reaper variants: the finite slice (this build's default) and the indefinite poll it replaced. */
const VARIANTS = [
  { tag: "", label: `${POLL_SLICE_MS} ms poll slice`, env: undefined },
  { tag: ".indefinite_poll", label: "indefinite poll", env: "indefinite" },
] as const;

const DEPTH = 8;
const PACKETS = 32;

/** The streams, as `iso.usbfs.<name>[.indefinite_poll].urbs_per_s`. */
const SHAPES: readonly {
  readonly name: string;
  readonly what: string;
  readonly workload: IsoWorkload;
  readonly items: number;
}[] = [
  {
    name: "in",
    what: `IN ${DEPTH} × ${PACKETS} × ${AUDIO_PACKET} B`,
    workload: {
      endpoint: 0x81,
      directionIn: true,
      depth: DEPTH,
      packets: PACKETS,
      packetLength: AUDIO_PACKET,
    },
    items: 64,
  },
  {
    name: "out",
    what: `OUT ${DEPTH} × ${PACKETS} × ${AUDIO_PACKET} B`,
    workload: {
      endpoint: 0x02,
      directionIn: false,
      depth: DEPTH,
      packets: PACKETS,
      packetLength: AUDIO_PACKET,
    },
    items: 64,
  },
  {
    name: "in.hb",
    what: `IN ${DEPTH} × ${PACKETS} × ${HIGH_BANDWIDTH_PACKET} B`,
    workload: {
      endpoint: 0x83,
      directionIn: true,
      depth: DEPTH,
      packets: PACKETS,
      packetLength: HIGH_BANDWIDTH_PACKET,
    },
    items: 32,
  },
  {
    name: "out.hb",
    what: `OUT ${DEPTH} × ${PACKETS} × ${HIGH_BANDWIDTH_PACKET} B`,
    workload: {
      endpoint: 0x04,
      directionIn: false,
      depth: DEPTH,
      packets: PACKETS,
      packetLength: HIGH_BANDWIDTH_PACKET,
    },
    items: 32,
  },
];

/** A part that cannot run here: one line, or a failure when tools are required. */
function skipped(part: string, reason: string): Result[] {
  if (process.env.USBVIRT_REQUIRE_TOOLS === "1")
    throw new Error(`${part}: ${reason} (USBVIRT_REQUIRE_TOOLS=1: not skipped)`);
  console.log(`\n## ${part}\nskipped: ${reason}`);
  return [];
}

// ---------------------------------------------------------------- 1. the whole path under the testbed

interface Engine {
  readonly client: IsoClient;
  readonly enginePid: number;
  readonly report: string;
}

/** The testbed with an engine under it, the device open and in its iso alternate setting. */
async function startEngine(python: string, dir: string, variant: (typeof VARIANTS)[number]): Promise<Engine> {
  const report = join(dir, `testbed${variant.tag}.json`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PYTHONDONTWRITEBYTECODE: "1",
    // The testbed's fake bus is its own: its device's host lock must not meet another run's.
    USBVIRT_HOST_LOCK_DIR: mkdtempSync(join(dir, "locks-")),
    USBVIRT_TESTBED_SECONDS: "3600",
  };
  if (variant.env === undefined) delete env[POLL_SLICE_ENV];
  else env[POLL_SLICE_ENV] = variant.env;
  const client = await ClientProcess.spawnLines<IsoClientRequest, IsoClientReply>(
    python,
    [
      "-B",
      pythonScript("iso-testbed.py"),
      "--stream",
      report,
      join(dir, "device.umockdev"),
      "--",
      process.execPath,
      fileURLToPath(new URL("./iso-client.js", import.meta.url)),
    ],
    `iso bench engine (${variant.label})`,
    env,
  );
  const opened = await client.request({ cmd: "connect" }, "connected");
  return { client, enginePid: opened.pid, report };
}

/** CPU ms per second of `pids` over `ms` of doing nothing. */
async function cpuPerSecond(pids: readonly number[], ms: number): Promise<number[]> {
  const before = pids.map((p) => processCpuNs(p) ?? Number.NaN);
  const start = performance.now();
  await sleep(ms);
  const seconds = (performance.now() - start) / 1000;
  return pids.map((p, i) => ((processCpuNs(p) ?? Number.NaN) - before[i]!) / 1e6 / seconds);
}

async function wholePath(opts: SuiteOptions, usbfs: UsbfsLoad): Promise<Result[]> {
  const part = "iso: isochronous streams through usbfs, under the umockdev testbed";
  if (!usbfs.ok) return skipped(part, usbfs.reason);
  const testbed = testbedPython();
  if ("reason" in testbed) return skipped(part, testbed.reason);
  const dir = mkdtempSync(join(tmpdir(), "usbvirt-bench-iso-"));
  const results: Result[] = [];
  try {
    writeFileSync(join(dir, "device.umockdev"), umockdevDescription(isoBenchDevice));
    // One engine at a time: an engine with a device open under umockdev costs CPU even when idle (libusb
    // polls the emulated node, and the testbed answers), which would weigh on the other variant's run.
    for (const variant of VARIANTS) {
      const engine = await startEngine(testbed.python, dir, variant);
      const pids = { engine: engine.enginePid, testbed: engine.client.pid };
      try {
        const [engineIdle, testbedIdle] = await cpuPerSecond(
          [pids.engine, pids.testbed],
          opts.quick ? 200 : 1000,
        );
        results.push(
          {
            name: `iso.usbfs.testbed_idle${variant.tag}.engine_cpu_ms_per_s`,
            value: engineIdle!,
            unit: "ms/s",
          },
          {
            name: `iso.usbfs.testbed_idle${variant.tag}.testbed_cpu_ms_per_s`,
            value: testbedIdle!,
            unit: "ms/s",
          },
        );
        const tasks: StreamTask<IsoWorkload>[] = SHAPES.map((s) => ({
          name: `${s.what}, ${variant.label}`,
          workload: s.workload,
          items: opts.quick ? 8 : s.items,
          units: 1,
          result: `iso.usbfs.${s.name}${variant.tag}.urbs_per_s`,
          unit: "URB/s",
          cpu: pids,
        }));
        results.push(...(await runStreams(opts, `${part}: ${variant.label}`, tasks, engine.client)));
      } finally {
        await engine.client.close();
      }
      // The testbed saw the URBs on one fd, every claim granted, nothing but iso.
      const seen = JSON.parse(readFileSync(engine.report, "utf8")) as Record<string, unknown>;
      const ok =
        seen.busy === 0 &&
        (seen.other as unknown[]).length === 0 &&
        (seen.isoSubmitters as unknown[]).length === 1 &&
        Number(seen.isoIn) > 0 &&
        Number(seen.isoOut) > 0;
      if (!ok) throw new Error(`${part}: the testbed saw ${JSON.stringify(seen)}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  printSideBySide(results);
  return results;
}

function printSideBySide(results: readonly Result[]): void {
  const value = (name: string) => results.find((r) => r.name === name)?.value;
  const cell = (name: string, digits: number) => value(name)?.toFixed(digits) ?? "";
  console.log(`\n## iso under the testbed, side by side (${POLL_SLICE_MS} ms slice / indefinite poll)`);
  console.table(
    SHAPES.map((s) => ({
      stream: s.what,
      "URB/s": `${cell(`iso.usbfs.${s.name}.urbs_per_s`, 0)} / ${cell(`iso.usbfs.${s.name}.indefinite_poll.urbs_per_s`, 0)}`,
      "engine µs/URB": `${cell(`iso.usbfs.${s.name}.engine_cpu_us`, 0)} / ${cell(`iso.usbfs.${s.name}.indefinite_poll.engine_cpu_us`, 0)}`,
      "testbed µs/URB": `${cell(`iso.usbfs.${s.name}.testbed_cpu_us`, 0)} / ${cell(`iso.usbfs.${s.name}.indefinite_poll.testbed_cpu_us`, 0)}`,
    })),
  );
}

// ---------------------------------------------------------------- 2. the reaper waiting, on this process's pool

/** An iso IN of 2 packets: what each idle stream keeps in flight. */
function pendingIn(): TransferRequest {
  return {
    kind: "isochronous",
    endpoint: 1,
    directionIn: true,
    setup: null,
    buffer: new Uint8Array(2 * AUDIO_PACKET),
    shortNotOk: false,
    zeroPacket: false,
    interval: 1,
    isoPackets: [
      { offset: 0, length: AUDIO_PACKET },
      { offset: AUDIO_PACKET, length: AUDIO_PACKET },
    ],
    streamId: 0,
  };
}

/** Small file reads, one after another, for `ms`: how many completed (each needs pool threads: open, stat, read, close). */
async function readsDuring(ms: number): Promise<{ reads: number; pending: Promise<unknown> }> {
  const file = fileURLToPath(import.meta.url);
  let reads = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      await readFile(file);
      if (running) reads++;
    }
  })();
  await sleep(ms);
  running = false;
  // A read the pool never ran (the indefinite poll) finishes once the streams close: awaited then.
  return { reads, pending: loop };
}

interface WaitingFigures {
  readonly cpuMsPerSecond: number;
  readonly pollsPerStreamPerSecond: number;
  readonly readsPerSecond: number;
}

async function whileWaiting(
  real: Extract<UsbfsLoad, { ok: true }>["libc"],
  streams: number,
  pollSliceMs: number,
  windowMs: number,
): Promise<WaitingFigures> {
  const device = new NeverReadyUsbfs(real);
  const channels: UsbfsChannel[] = [];
  let pending: Promise<unknown> = Promise.resolve();
  let completed = 0;
  try {
    for (let i = 0; i < streams; i++) {
      const c = UsbfsChannel.open(device.libc, 1, 2 + i, { log: () => {}, onGone: () => {}, pollSliceMs });
      if (typeof c === "string") throw new Error(c);
      channels.push(c);
      c.submit(1, pendingIn(), () => {
        completed++;
      });
    }
    await sleep(50); // every poll armed
    const polls0 = device.polls;
    const cpu0 = process.cpuUsage();
    const start = performance.now();
    await sleep(windowMs);
    const cpu = process.cpuUsage(cpu0);
    const seconds = (performance.now() - start) / 1000;
    const polls = device.polls - polls0;
    const side = await readsDuring(windowMs);
    pending = side.pending;
    if (completed !== 0) throw new Error(`${completed} URB(s) on the never-ready device completed`);
    return {
      cpuMsPerSecond: (cpu.user + cpu.system) / 1000 / seconds,
      pollsPerStreamPerSecond: streams === 0 ? 0 : polls / streams / seconds,
      readsPerSecond: side.reads / (windowMs / 1000),
    };
  } finally {
    for (const c of channels) await c.close();
    device.close();
    await pending;
  }
}

async function reaperWaiting(opts: SuiteOptions, usbfs: UsbfsLoad): Promise<Result[]> {
  const part = "iso: the usbfs reaper waiting (nothing completes), on this process's libuv pool";
  if (!usbfs.ok) return skipped(part, usbfs.reason);
  const poolSize = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const windowMs = opts.quick ? 300 : 2000;
  const none = await whileWaiting(usbfs.libc, 0, POLL_SLICE_MS, windowMs);
  const finite = await whileWaiting(usbfs.libc, poolSize, POLL_SLICE_MS, windowMs);
  const indefinite = await whileWaiting(usbfs.libc, poolSize, Number.POSITIVE_INFINITY, windowMs);
  if (
    finite.pollsPerStreamPerSecond < 1 ||
    indefinite.pollsPerStreamPerSecond > finite.pollsPerStreamPerSecond
  )
    throw new Error(`${part}: the variants did not poll as set (${JSON.stringify({ finite, indefinite })})`);
  console.log(
    `\n## ${part}\n${poolSize} streams (the pool's threads; UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE ?? "unset"}), ` +
      `each a URB in flight on a device that never completes it; ${windowMs} ms windows`,
  );
  const rows = [
    ["no stream open", none],
    [`${POLL_SLICE_MS} ms poll slice`, finite],
    ["indefinite poll", indefinite],
  ] as const;
  console.table(
    rows.map(([what, f]) => ({
      reaper: what,
      "process CPU ms/s": f.cpuMsPerSecond.toFixed(2),
      "polls/s per stream": f.pollsPerStreamPerSecond.toFixed(1),
      "file reads/s beside": f.readsPerSecond.toFixed(0),
    })),
  );
  const figures = (tag: string, f: WaitingFigures, polls: boolean): Result[] => [
    { name: `iso.usbfs.idle${tag}.cpu_ms_per_s`, value: f.cpuMsPerSecond, unit: "ms/s" },
    ...(polls
      ? [{ name: `iso.usbfs.idle${tag}.polls_per_s`, value: f.pollsPerStreamPerSecond, unit: "/s" }]
      : []),
    { name: `iso.usbfs.pool${tag}.reads_per_s`, value: f.readsPerSecond, unit: "reads/s" },
  ];
  return [
    ...figures(".no_stream", none, false),
    ...figures("", finite, true),
    ...figures(".indefinite_poll", indefinite, true),
  ];
}

export const isoSuite = {
  name: "iso",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const usbfs = probeUsbfs();
    return [...(await wholePath(opts, usbfs)), ...(await reaperWaiting(opts, usbfs))];
  },
};
