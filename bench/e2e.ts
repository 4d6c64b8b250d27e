/**
 * The whole engine end to end (frontend on this thread → URB ring → backend
 * worker → port ring → emulated loopback device, and back), in both of its
 * placements (the device on the backend's thread, the default, and on a port
 * worker of its own, as host devices always are) and with the backend on the
 * frontend's own thread (backendThread "shared": one thread, no hand-off),
 * beside the designs people would otherwise build for the same job
 * (bench/peers: the same frontend / backend / port split and the same device,
 * carried by postMessage, comlink calls or piscina tasks), moving the same
 * URBs at the same depths:
 * - null URB rate: a control URB with no data stage that the device answers
 *   at once (loopback vendor request RESET_STATS), 1 and 64 in flight;
 * - single-URB round trip (p50 / p99 latency, one at a time);
 * - bulk loopback streams, 64 KiB (8 OUT + 8 IN kept in flight) and 1 MiB (2 + 2): payload
 *   GB/s, each byte written out and read back into guest memory.
 * For the engine it also reports the backend thread's CPU time per null URB
 * (the kernel's account, spinning included; for one thread, that thread's).
 * `--ab-wait` adds each placement with spins never cut short on a busy host
 * (`.spinalways`), for before/after in one run (src/rings/contention.ts).
 * The engine's buffers live in guest memory and are granted per URB, as a
 * VMM's would; the peers copy OUT data into their messages and IN data back
 * into the same guest buffers.
 */
import { Bench, type Task } from "tinybench";
import { Connection } from "../src/engine/connection.js";
import type { Urb, UrbCompletion } from "../src/frontend/types.js";
import { GuestUsbDriver } from "../src/guest/guest-driver.js";
import { OK } from "../src/urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../src/urb/types.js";
import { benchTiming, latencyOf, printBench, type Result, type SuiteOptions } from "./harness.js";
import { PEER_DESIGNS, type PeerTransport, startPeer } from "./peers/peers.js";
import type { PeerUrb } from "./peers/wire.js";
import { urbPipeline } from "./urb-pipeline.js";

const PORT = 1 as PortNum;
const ADDRESS = 2 as DevAddr;
export const BATCH = 4096;
export const BATCH1 = 512;
export const DEPTH = 64;
export const KIB64 = 64 * 1024;
const MIB1 = 1024 * 1024;
export const PAIRS_64K = 8;
const PAIRS_1M = 2;
/** Transfers per URB slot in one measured op: 4 MiB (64 KiB) and 8 MiB (1 MiB) each way per op. */
export const ROUNDS_64K = 8;
const ROUNDS_1M = 4;
export const BYTES_64K = PAIRS_64K * ROUNDS_64K * KIB64;
const BYTES_1M = PAIRS_1M * ROUNDS_1M * MIB1;

const RESET_STATS = { bmRequestType: 0x40, bRequest: 0x05, wValue: 0, wIndex: 0, wLength: 0 } as const;

export const nullUrb: Urb = {
  type: "control",
  port: PORT,
  device: ADDRESS,
  endpoint: 0 as EndpointNum,
  directionIn: false,
  setup: RESET_STATS,
};

/** Complete `total` copies of `urb` keeping `depth` in flight. */
export function pipeline(conn: Connection, urb: Urb, total: number, depth: number): Promise<void> {
  return urbPipeline(conn.frontend!, () => ({ ...urb }), total, depth);
}

/** The same pipeline through a peer design. */
export function peerPipeline(peer: PeerTransport, total: number, depth: number): Promise<void> {
  let nextId = 0;
  const urb = (): PeerUrb => ({
    id: nextId++,
    port: 1,
    kind: "control",
    endpoint: 0,
    directionIn: false,
    setup: RESET_STATS,
    length: 0,
    data: null,
  });
  return new Promise((resolve, reject) => {
    let submitted = 0;
    let completed = 0;
    const send = (): void => {
      submitted++;
      peer.submit(urb()).then((r) => {
        if (r.status !== OK) return reject(new Error(`${peer.design} URB failed with status ${r.status}`));
        if (++completed === total) resolve();
        else if (submitted < total) send();
      }, reject);
    };
    for (let i = 0; i < depth && i < total; i++) send();
  });
}

export interface BulkBuffers {
  readonly outs: Uint8Array[];
  readonly ins: Uint8Array[];
  readonly size: number;
}

/** An engine under test: one connection with a loopback on port 1, its device placed as the variant says. */
export interface Engine {
  readonly label: string;
  readonly conn: Connection;
  readonly r64: { outs: GuestRange[]; ins: GuestRange[] };
  readonly r1m: { outs: GuestRange[]; ins: GuestRange[] };
}

export type GuestRange = ReturnType<GuestUsbDriver["buffers"]["allocatePages"]>;

/**
 * The engine's variants, side by side: the emulated device on the backend's
 * own thread (the default: two threads on the data path) and on a port
 * worker of its own (three threads, the isolation host devices always have).
 */
export const ENGINE_VARIANTS: readonly EngineVariant[] = [
  { label: "usbvirt", tag: "", placement: "backend" },
  { label: "usbvirt/port-worker", tag: ".portworker", placement: "worker" },
  // The backend on this thread (backendThread "shared", as the USB/IP server runs it): no hand-off at all.
  { label: "usbvirt/one-thread", tag: ".onethread", placement: "backend", backendThread: "shared" },
];

/**
 * `--ab-wait`: each placement also with the wait strategy that ignores contention (every spin as long as
 * on a quiet host: contendedSpinMicros Infinity), interleaved with the default, for before/after in one run.
 */
export function engineVariants(): readonly EngineVariant[] {
  if (!process.argv.includes("--ab-wait")) return ENGINE_VARIANTS;
  return ENGINE_VARIANTS.flatMap((v) => [
    v,
    ...(v.backendThread === "shared"
      ? []
      : [
          {
            label: `${v.label}/spin-always`,
            tag: `${v.tag}.spinalways`,
            placement: v.placement,
            contendedSpinMicros: Infinity,
          },
        ]),
  ]);
}

export interface EngineVariant {
  readonly label: string;
  readonly tag: string;
  readonly placement: "backend" | "worker";
  readonly contendedSpinMicros?: number;
  readonly backendThread?: "shared";
}

export async function startEngine(variant: EngineVariant): Promise<Engine> {
  const conn = await Connection.create({
    ports: 2,
    memory: 8192,
    ...(variant.contendedSpinMicros === undefined
      ? {}
      : { contendedSpinMicros: variant.contendedSpinMicros }),
    ...(variant.backendThread === undefined ? {} : { backendThread: variant.backendThread }),
  });
  const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
  await conn.attach(1, { kind: "emulated", name: "loopback", placement: variant.placement });
  await guest.enumerate(PORT, ADDRESS);
  const regions = (size: number, pairs: number) => ({
    outs: Array.from({ length: pairs }, () => guest.buffers.allocatePages(size)),
    ins: Array.from({ length: pairs }, () => guest.buffers.allocatePages(size)),
  });
  const r64 = regions(KIB64, PAIRS_64K);
  const r1m = regions(MIB1, PAIRS_1M);
  for (const r of [r64, r1m]) for (const [i, out] of r.outs.entries()) guest.bytes(out).fill(i + 1);
  return { label: variant.label, conn, r64, r1m };
}

/** The peers' guest memory is ordinary memory: a design built on messages has no shared buffers. */
export function privateBuffers(size: number, pairs: number): BulkBuffers {
  return {
    outs: Array.from({ length: pairs }, (_, i) => new Uint8Array(size).fill(i + 1)),
    ins: Array.from({ length: pairs }, () => new Uint8Array(size)),
    size,
  };
}

const bulk = { type: "bulk", port: PORT, device: ADDRESS, endpoint: 1 as EndpointNum } as const;

/**
 * Bulk streaming: `pairs` OUT and `pairs` IN URBs stay in flight, each
 * resubmitted as it completes, until every one has moved `rounds`
 * transfers. Each IN gets what the OUTs before it put in the device's FIFO.
 */
export function engineBulkStream(
  conn: Connection,
  r: { outs: GuestRange[]; ins: GuestRange[] },
  size: number,
  rounds: number,
): Promise<void> {
  const hcd = conn.frontend!;
  return new Promise<void>((resolve, reject) => {
    let live = 0;
    const slot = (urb: Urb): void => {
      let left = rounds;
      live++;
      const onDone = (c: UrbCompletion): void => {
        if (c.status !== OK || c.actualLength !== size) {
          reject(new Error(`bulk URB ended ${c.status}/${c.actualLength}`));
          return;
        }
        if (--left > 0) hcd.submitWithCallback(urb, onDone);
        else if (--live === 0) resolve();
      };
      hcd.submitWithCallback(urb, onDone);
    };
    for (let i = 0; i < r.outs.length; i++) {
      slot({ ...bulk, directionIn: false, buffer: [r.outs[i]!] });
      slot({ ...bulk, directionIn: true, buffer: [r.ins[i]!] });
    }
  });
}

/** The same stream through a peer: OUT data travels in the message, IN data is copied into guest memory. */
export function peerBulkStream(peer: PeerTransport, b: BulkBuffers, rounds: number): Promise<void> {
  let nextId = 0;
  const common = { port: 1, kind: "bulk", endpoint: 1, setup: null, length: b.size } as const;
  const slot = async (i: number, directionIn: boolean): Promise<void> => {
    for (let n = 0; n < rounds; n++) {
      const r = await peer.submit({
        ...common,
        id: nextId++,
        directionIn,
        data: directionIn ? null : b.outs[i]!,
      });
      if (r.status !== OK || r.actualLength !== b.size || (directionIn && r.data === null))
        throw new Error(`${peer.design} bulk ${directionIn ? "IN" : "OUT"} failed: ${r.status}`);
      if (r.data !== null) b.ins[i]!.set(r.data); // into guest memory, where the engine's device wrote directly
    }
  };
  const all: Promise<void>[] = [];
  for (let i = 0; i < b.outs.length; i++) all.push(slot(i, false), slot(i, true));
  return Promise.all(all).then(() => undefined);
}

export const e2eSuite = {
  name: "e2e",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const b64 = privateBuffers(KIB64, PAIRS_64K);
    const b1m = privateBuffers(MIB1, PAIRS_1M);
    let bulkBytes = 0;
    const bulkStream = (
      conn: Connection,
      r: { outs: GuestRange[]; ins: GuestRange[] },
      size: number,
      rounds: number,
    ): Promise<void> =>
      engineBulkStream(conn, r, size, rounds).then(() => {
        bulkBytes += r.outs.length * rounds * size;
      });

    // One variant at a time: each runs its tasks with nothing else of this suite alive (idle threads of the
    // others still cost it scheduler time and cache), then is closed before the next starts.
    const benches: Bench[] = [];
    const items: Record<string, number> = {};
    /** The backend thread's CPU time per URB over a task's measured phase (the kernel's account). */
    const backendCpu = new Map<string, number>();
    const cpuHooks = (conn: Connection) => {
      let start: { cpuNs: number | null; requests: number } | null = null;
      return {
        async beforeAll(this: Task, mode?: string) {
          if (mode !== "run") return;
          const s = await conn.stats();
          start = { cpuNs: s.wait.cpuNs, requests: s.requests };
        },
        async afterAll(this: Task, mode?: string) {
          if (mode !== "run" || start?.cpuNs == null) return;
          const s = await conn.stats();
          const urbs = s.requests - start.requests;
          if (s.wait.cpuNs !== null && urbs > 0)
            backendCpu.set(this.name, (s.wait.cpuNs - start.cpuNs) / urbs);
        },
      };
    };
    const runVariant = async (
      tasks: readonly [string, () => Promise<void>, number][],
      conn?: Connection,
    ): Promise<void> => {
      const bench = new Bench(benchTiming(opts));
      // async: true, or tinybench calls fn once at add() to see whether it returns a promise, unawaited.
      for (const [name, fn, perOp] of tasks) {
        bench.add(name, fn, { async: true, ...(conn === undefined ? {} : cpuHooks(conn)) });
        items[name] = perOp;
      }
      await bench.run();
      benches.push(bench);
    };
    const variants = engineVariants();
    for (const v of variants) {
      const e = await startEngine(v);
      const l = e.label;
      await runVariant(
        [
          [`${l} null URB, 1 in flight`, () => pipeline(e.conn, nullUrb, BATCH1, 1), BATCH1],
          [`${l} null URB, 64 in flight`, () => pipeline(e.conn, nullUrb, BATCH, DEPTH), BATCH],
          [`${l} round trip, one URB`, () => pipeline(e.conn, nullUrb, 1, 1), 1],
          [`${l} bulk 64 KiB, 8 OUT + 8 IN`, () => bulkStream(e.conn, e.r64, KIB64, ROUNDS_64K), BYTES_64K],
          [`${l} bulk 1 MiB, 2 OUT + 2 IN`, () => bulkStream(e.conn, e.r1m, MIB1, ROUNDS_1M), BYTES_1M],
        ],
        e.conn,
      );
      const stats = await e.conn.stats();
      await e.conn.close();
      if (stats.rejected !== 0) throw new Error(`e2e bench: ${l} rejected URBs`);
      const copies = Object.values(stats.portWorkers).reduce((n, p) => n + (p?.bounceCopies ?? 0), 0);
      if (copies !== 0) throw new Error(`e2e bench: ${l} bounced ${copies} buffers (expected zero copy)`);
    }
    for (const design of PEER_DESIGNS) {
      const peer = await startPeer(design, DEPTH);
      await runVariant([
        [`${design} null URB, 1 in flight`, () => peerPipeline(peer, BATCH1, 1), BATCH1],
        [`${design} null URB, 64 in flight`, () => peerPipeline(peer, BATCH, DEPTH), BATCH],
        [`${design} round trip, one URB`, () => peerPipeline(peer, 1, 1), 1],
        [`${design} bulk 64 KiB, 8 OUT + 8 IN`, () => peerBulkStream(peer, b64, ROUNDS_64K), BYTES_64K],
        [`${design} bulk 1 MiB, 2 OUT + 2 IN`, () => peerBulkStream(peer, b1m, ROUNDS_1M), BYTES_1M],
      ]);
      await peer.close();
    }
    printBench("end to end: frontend → backend worker (→ port worker) → emulated loopback", benches, items);

    const results: Result[] = [];
    const designs = [
      ...variants.map((e) => ({ label: e.label, tag: e.tag })),
      ...PEER_DESIGNS.map((d) => ({ label: d, tag: `.${d}` })),
    ];
    for (const { label: d, tag } of designs) {
      const rate = (task: string) => latencyOf(benches, `${d} ${task}`);
      const n1 = rate("null URB, 1 in flight");
      const n64 = rate("null URB, 64 in flight");
      const rtt = rate("round trip, one URB");
      const k64 = rate("bulk 64 KiB, 8 OUT + 8 IN");
      const m1 = rate("bulk 1 MiB, 2 OUT + 2 IN");
      results.push(
        { name: `e2e.null.inflight1${tag}.urbs_per_s`, value: n1.opsPerSec * BATCH1, unit: "URB/s" },
        { name: `e2e.null.inflight64${tag}.urbs_per_s`, value: n64.opsPerSec * BATCH, unit: "URB/s" },
        { name: `e2e.rtt${tag}.p50_us`, value: rtt.p50Micros, unit: "µs" },
        { name: `e2e.rtt${tag}.p99_us`, value: rtt.p99Micros, unit: "µs" },
        { name: `e2e.bulk64k${tag}.gbps`, value: (k64.opsPerSec * BYTES_64K) / 1e9, unit: "GB/s" },
        { name: `e2e.bulk1m${tag}.gbps`, value: (m1.opsPerSec * BYTES_1M) / 1e9, unit: "GB/s" },
      );
      // Engines only: the backend thread's CPU per null URB (spinning included), where the kernel accounts it.
      for (const [depth, task] of [
        ["inflight1", "null URB, 1 in flight"],
        ["inflight64", "null URB, 64 in flight"],
      ] as const) {
        const ns = backendCpu.get(`${d} ${task}`);
        if (ns !== undefined)
          results.push({ name: `e2e.backend_cpu.null.${depth}${tag}.ns_per_urb`, value: ns, unit: "ns" });
      }
    }

    if (bulkBytes === 0) throw new Error("e2e bench: no bulk data moved");
    return results;
  },
};
