/**
 * The shared ring between two threads (src/rings): descriptors per second
 * one way (requests streamed through a full pipeline, batch 1 / 8 / 32
 * published per push) and the round trip of one descriptor, with the
 * backend spinning adaptively or parking every time, beside a postMessage
 * round trip for scale.
 */
import { once } from "node:events";
import type { Worker } from "node:worker_threads";
import { Bench } from "tinybench";
import { Doorbell } from "../src/rings/doorbell.js";
import { FrontRing } from "../src/rings/front-ring.js";
import { IdPool } from "../src/rings/id-pool.js";
import { createRingBuffer, type RingGeometry } from "../src/rings/layout.js";
import { AdaptiveSpin } from "../src/rings/spin.js";
import { siblingModule, startWorker } from "../src/util/start-worker.js";
import { benchTiming, latencyOf, printBench, type Result, type SuiteOptions } from "./harness.js";

/** The URB ring's geometry: 256 slots of 128 bytes. */
const GEOMETRY: RingGeometry = { slots: 256, slotSize: 128 };
const STREAM = 4096;

interface EchoRing {
  readonly front: FrontRing;
  readonly ids: IdPool;
  readonly peerBell: Doorbell;
  readonly myBell: Doorbell;
  readonly spin: AdaptiveSpin;
  readonly copy: Uint8Array;
  readonly worker: Worker;
  readonly stop: Int32Array;
  received: number;
}

function startEcho(spin: boolean): EchoRing {
  const ring = createRingBuffer(GEOMETRY);
  const backBell = Doorbell.create();
  const frontBell = Doorbell.create();
  const stop = new SharedArrayBuffer(4);
  const worker = startWorker(siblingModule(import.meta.url, "./ring-echo-worker"), {
    workerData: { ring, geometry: GEOMETRY, backBell, frontBell, stop, spin },
  });
  const ids = new IdPool(GEOMETRY.slots);
  return {
    front: new FrontRing(ring, GEOMETRY, { ids }),
    ids,
    peerBell: new Doorbell(backBell),
    myBell: new Doorbell(frontBell),
    spin: new AdaptiveSpin(),
    copy: new Uint8Array(GEOMETRY.slotSize),
    worker,
    stop: new Int32Array(stop),
    received: 0,
  };
}

async function stopEcho(e: EchoRing): Promise<void> {
  Atomics.store(e.stop, 0, 1);
  e.peerBell.ring();
  await once(e.worker, "exit");
}

function writeRequest(e: EchoRing, slot: Uint8Array): void {
  const id = e.ids.allocate();
  slot[0] = id & 0xff;
  slot[1] = id >>> 8;
  slot[2] = 0;
  slot[3] = 0;
  e.front.commitRequest();
}

/** Stream `count` requests, publishing `batch` per push, and collect every answer. */
function stream(e: EchoRing, count: number, batch: number): void {
  let sent = 0;
  let got = 0;
  while (got < count) {
    while (e.front.takeResponse(e.copy)) got++;
    let inBatch = 0;
    for (let slot = e.front.requestSlot(); slot !== null && sent < count; slot = e.front.requestSlot()) {
      writeRequest(e, slot);
      sent++;
      if (++inBatch === batch) {
        if (e.front.pushRequests()) e.peerBell.ring();
        inBatch = 0;
      }
    }
    if (e.front.pushRequests()) e.peerBell.ring();
    if (got < count && !e.front.hasPending()) e.myBell.wait(e.front, e.spin);
    if (e.front.fault !== 0) throw new Error(`ring fault ${e.front.fault}`);
  }
  e.received += got;
}

/** Publish `batch` requests at once and wait for every answer. */
function roundTrip(e: EchoRing, batch = 1): void {
  for (let i = 0; i < batch; i++) {
    const slot = e.front.requestSlot();
    if (slot === null) throw new Error("ring unexpectedly full");
    writeRequest(e, slot);
  }
  if (e.front.pushRequests()) e.peerBell.ring();
  let got = 0;
  while (got < batch) {
    if (e.front.takeResponse(e.copy)) {
      got++;
      continue;
    }
    if (e.front.fault !== 0) throw new Error(`ring fault ${e.front.fault}`);
    e.myBell.wait(e.front, e.spin);
  }
  e.received += batch;
}

/** Task name → stable result name and how it is reported. */
const RING_RESULTS: Record<string, { name: string; kind: "rate" | "latency"; items?: number }> = {
  "oneway b1": { name: "ring.oneway.b1.desc_per_s", kind: "rate", items: STREAM },
  "oneway b8": { name: "ring.oneway.b8.desc_per_s", kind: "rate", items: STREAM },
  "oneway b32": { name: "ring.oneway.b32.desc_per_s", kind: "rate", items: STREAM },
  "roundtrip b1 spin": { name: "ring.roundtrip.b1", kind: "latency" },
  "roundtrip b8 spin": { name: "ring.roundtrip.b8", kind: "latency" },
  "roundtrip b32 spin": { name: "ring.roundtrip.b32", kind: "latency" },
  "roundtrip b1 park (no spin)": { name: "ring.roundtrip.park", kind: "latency" },
  "roundtrip postMessage (for scale)": { name: "ring.roundtrip.postmessage", kind: "latency" },
};

export const ringSuite = {
  name: "ring",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const hot = startEcho(true);
    const parked = startEcho(false);
    // For scale: the same round trip by postMessage to a worker that echoes.
    const echo = startWorker(siblingModule(import.meta.url, "./postmessage-echo-worker"));
    let pmReceived = 0;
    const pmRoundTrip = () =>
      new Promise<void>((resolve) => {
        echo.once("message", () => {
          pmReceived++;
          resolve();
        });
        echo.postMessage(1);
      });

    const bench = new Bench(benchTiming(opts));
    bench
      .add("oneway b1", () => stream(hot, STREAM, 1))
      .add("oneway b8", () => stream(hot, STREAM, 8))
      .add("oneway b32", () => stream(hot, STREAM, 32))
      .add("roundtrip b1 spin", () => roundTrip(hot, 1))
      .add("roundtrip b8 spin", () => roundTrip(hot, 8))
      .add("roundtrip b32 spin", () => roundTrip(hot, 32))
      .add("roundtrip b1 park (no spin)", () => roundTrip(parked, 1))
      .add("roundtrip postMessage (for scale)", pmRoundTrip, { async: true });
    await bench.run();
    printBench("ring: descriptors between two threads (256 × 128-byte slots)", bench, {
      "oneway b1": STREAM,
      "oneway b8": STREAM,
      "oneway b32": STREAM,
      "roundtrip b8 spin": 8,
      "roundtrip b32 spin": 32,
    });
    const results: Result[] = [];
    for (const [task, r] of Object.entries(RING_RESULTS)) {
      const l = latencyOf(bench, task);
      if (r.kind === "rate") results.push({ name: r.name, value: l.opsPerSec * r.items!, unit: "desc/s" });
      else
        results.push(
          { name: `${r.name}.p50_us`, value: l.p50Micros, unit: "µs" },
          { name: `${r.name}.p99_us`, value: l.p99Micros, unit: "µs" },
        );
    }

    await Promise.all([stopEcho(hot), stopEcho(parked), echo.terminate()]);
    if (hot.received === 0 || parked.received === 0 || pmReceived === 0)
      throw new Error("ring bench moved nothing");
    if (hot.ids.inFlightCount !== 0 || parked.ids.inFlightCount !== 0)
      throw new Error("ring bench left ids in flight");
    return results;
  },
};
