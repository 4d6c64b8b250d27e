/**
 * The whole engine end to end (frontend on this thread → URB ring → backend
 * worker → port ring → port worker → emulated loopback device, and back):
 * - null URB rate: a control URB with no data stage that the device answers
 *   at once (loopback vendor request RESET_STATS), with 1 and 64 in flight;
 * - single-URB round trip (p50 / p99 latency of the same URB, one at a time);
 * - 64 KiB bulk loopback: 8 OUT + 8 IN of 64 KiB in flight, payload GB/s.
 * Buffers live in guest memory and are granted per URB, as a VMM's would.
 */
import { Bench } from "tinybench";
import { Connection } from "../src/engine/connection.js";
import type { Urb, UrbCompletion } from "../src/frontend/types.js";
import { GuestUsbDriver } from "../src/guest/guest-driver.js";
import { OK } from "../src/urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../src/urb/types.js";
import { benchTiming, printBench, type Result, type SuiteOptions } from "./harness.js";

const PORT = 1 as PortNum;
const ADDRESS = 2 as DevAddr;
const BATCH = 4096;
const BULK = 64 * 1024;
const BULK_PAIRS = 8;

const nullUrb: Urb = {
  type: "control",
  port: PORT,
  device: ADDRESS,
  endpoint: 0 as EndpointNum,
  directionIn: false,
  setup: { bmRequestType: 0x40, bRequest: 0x05, wValue: 0, wIndex: 0, wLength: 0 },
};

/** Complete `total` copies of `urb` keeping `depth` in flight. */
function pipeline(conn: Connection, urb: Urb, total: number, depth: number): Promise<void> {
  const hcd = conn.frontend!;
  return new Promise((resolve, reject) => {
    let submitted = 0;
    let completed = 0;
    // Distinct URB objects: the controller refuses an object that is already outstanding.
    const onDone = (c: UrbCompletion) => {
      if (c.status !== OK) {
        reject(new Error(`URB failed with status ${c.status}`));
        return;
      }
      if (++completed === total) resolve();
      else if (submitted < total) send();
    };
    const send = () => {
      submitted++;
      hcd.submitWithCallback({ ...urb }, onDone);
    };
    for (let i = 0; i < depth && i < total; i++) send();
  });
}

export const e2eSuite = {
  name: "e2e",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const conn = await Connection.create({ ports: 2 });
    const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(PORT, ADDRESS);
    const outs = Array.from({ length: BULK_PAIRS }, () => guest.buffers.allocatePages(BULK));
    const ins = Array.from({ length: BULK_PAIRS }, () => guest.buffers.allocatePages(BULK));
    for (const [i, r] of outs.entries()) guest.bytes(r).fill(i + 1);
    let bulkBytes = 0;
    const bulkRound = async () => {
      const all: Promise<UrbCompletion>[] = [];
      for (let i = 0; i < BULK_PAIRS; i++) {
        const common = { type: "bulk", port: PORT, device: ADDRESS, endpoint: 1 as EndpointNum } as const;
        all.push(conn.frontend!.submit({ ...common, directionIn: false, buffer: [outs[i]!] }));
        all.push(conn.frontend!.submit({ ...common, directionIn: true, buffer: [ins[i]!] }));
      }
      for (const c of await Promise.all(all)) {
        if (c.status !== OK || c.actualLength !== BULK)
          throw new Error(`bulk URB ended ${c.status}/${c.actualLength}`);
      }
      bulkBytes += BULK_PAIRS * BULK;
    };

    const bench = new Bench(benchTiming(opts));
    bench
      .add("e2e null URB, 1 in flight", () => pipeline(conn, nullUrb, BATCH / 8, 1))
      .add("e2e null URB, 64 in flight", () => pipeline(conn, nullUrb, BATCH, 64))
      .add("e2e round trip, one URB", () => pipeline(conn, nullUrb, 1, 1))
      .add("e2e bulk 64 KiB loopback, 8 OUT + 8 IN in flight", bulkRound);
    await bench.run();
    const results = printBench(
      "end to end: frontend → backend worker → port worker → emulated loopback",
      bench,
      {
        "e2e null URB, 1 in flight": BATCH / 8,
        "e2e null URB, 64 in flight": BATCH,
      },
    );
    const rtt = bench.getTask("e2e round trip, one URB")?.result;
    const bulk = bench.getTask("e2e bulk 64 KiB loopback, 8 OUT + 8 IN in flight")?.result;
    if (rtt?.state === "completed" && bulk?.state === "completed") {
      const gbps = (BULK_PAIRS * BULK) / (bulk.period / 1000) / 1e9;
      console.log(
        `round trip p50 ${(rtt.latency.p50 * 1000).toFixed(1)} µs, p99 ${(rtt.latency.p99 * 1000).toFixed(1)} µs; ` +
          `64 KiB bulk loopback ${gbps.toFixed(2)} GB/s of payload (each byte written and read back)`,
      );
      results.push(
        { name: "e2e.rtt.p50_us", value: rtt.latency.p50 * 1000, unit: "µs" },
        { name: "e2e.rtt.p99_us", value: rtt.latency.p99 * 1000, unit: "µs" },
        { name: "e2e.bulk64k.gbps", value: gbps, unit: "GB/s" },
      );
    }
    const stats = await conn.stats();
    await conn.close();
    if (bulkBytes === 0 || stats.rejected !== 0)
      throw new Error("e2e bench: no bulk data moved, or URBs were rejected");
    return results;
  },
};
