/**
 * USB/IP over TCP on 127.0.0.1 (src/usbip): a UsbipServer exporting the
 * emulated loopback (the engine behind it) and a UsbipClient in this same
 * process that imports it and configures it as vhci's USB core would; then
 * null control URBs (64 in flight) and 64 KiB bulk loopback (8 OUT + 8 IN
 * in flight, MB/s of payload: each byte crosses the socket twice).
 */
import { Bench } from "tinybench";
import { UsbipClient } from "../src/usbip/client.js";
import { silentLogger } from "../src/usbip/log.js";
import { encodeSetup } from "../src/usbip/protocol.js";
import { UsbipServer } from "../src/usbip/server.js";
import { benchTiming, latencyOf, printBench, type Result, type SuiteOptions } from "./harness.js";

const BATCH = 2048;
const DEPTH = 64;
const KIB64 = 64 * 1024;
const PAIRS = 8;

export const usbipSuite = {
  name: "usbip",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const server = await UsbipServer.start({
      devices: [{ kind: "emulated", name: "loopback" }],
      port: 0,
      logger: silentLogger,
      guestMemoryMiB: 32,
    });
    const client = await UsbipClient.connect({ host: "127.0.0.1", port: server.address.port });
    await client.import(server.devices[0]!.busid);
    const setConfiguration = encodeSetup({ bmRequestType: 0, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 });
    const configured = await client.submit({ ep: 0, directionIn: false, setup: setConfiguration }).done;
    if (configured.status !== 0)
      throw new Error(`SET_CONFIGURATION over USB/IP failed: ${configured.status}`);

    const resetStats = encodeSetup({ bmRequestType: 0x40, bRequest: 0x05, wValue: 0, wIndex: 0, wLength: 0 });
    const nulls = (total: number, depth: number): Promise<void> =>
      new Promise((resolve, reject) => {
        let submitted = 0;
        let completed = 0;
        const send = (): void => {
          submitted++;
          client.submit({ ep: 0, directionIn: false, setup: resetStats }).done.then((r) => {
            if (r.status !== 0) return reject(new Error(`USB/IP null URB failed: ${r.status}`));
            if (++completed === total) resolve();
            else if (submitted < total) send();
          }, reject);
        };
        for (let i = 0; i < depth; i++) send();
      });
    const outs = Array.from({ length: PAIRS }, (_, i) => new Uint8Array(KIB64).fill(i + 1));
    let bytes = 0;
    const bulkRound = async (): Promise<void> => {
      const all: Promise<void>[] = [];
      for (const out of outs) {
        all.push(
          client.submit({ ep: 1, directionIn: false, data: out }).done.then((r) => {
            if (r.status !== 0 || r.actualLength !== KIB64) throw new Error("USB/IP bulk OUT failed");
          }),
        );
        all.push(
          client.submit({ ep: 1, directionIn: true, length: KIB64 }).done.then((r) => {
            if (r.status !== 0 || r.data.length !== KIB64) throw new Error("USB/IP bulk IN failed");
            bytes += r.data.length;
          }),
        );
      }
      await Promise.all(all);
    };

    const bench = new Bench(benchTiming(opts));
    bench
      .add("usbip null URB, 64 in flight", () => nulls(BATCH, DEPTH), { async: true })
      .add("usbip bulk 64 KiB, 8 OUT + 8 IN", bulkRound, { async: true });
    await bench.run();
    printBench("USB/IP over TCP on 127.0.0.1 (server + client in this process)", bench, {
      "usbip null URB, 64 in flight": BATCH,
      "usbip bulk 64 KiB, 8 OUT + 8 IN": PAIRS * KIB64,
    });
    const n = latencyOf(bench, "usbip null URB, 64 in flight");
    const b = latencyOf(bench, "usbip bulk 64 KiB, 8 OUT + 8 IN");
    client.close();
    await server.close();
    if (bytes === 0) throw new Error("usbip bench moved no data");
    return [
      { name: "usbip.null.inflight64.urbs_per_s", value: n.opsPerSec * BATCH, unit: "URB/s" },
      { name: "usbip.bulk64k.mbps", value: (b.opsPerSec * PAIRS * KIB64) / 1e6, unit: "MB/s" },
    ];
  },
};
