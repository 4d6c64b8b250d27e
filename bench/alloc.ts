/**
 * Garbage per URB: bytes the engine's data path allocates for one null
 * control URB and for one 64 KiB bulk URB, end to end (frontend, backend,
 * port service, emulated loopback). Garbage is what the data path pays for
 * twice: on 2 cores every young-generation scavenge stalls a spinning
 * thread, so bytes per URB bound URBs per second (README, Benchmarks).
 *
 * The three stages run on this one thread here, the same code the engine
 * runs on two (the backend worker's loop is the only part not in the
 * count), so V8's sampling heap profiler, told to keep objects the
 * scavenger already freed, sees all of it. A sample every 256 bytes makes
 * the figure an estimate good to a few percent.
 */
import { Session } from "node:inspector";
import { UsbBackend } from "../src/backend/backend.js";
import { openInlinePort } from "../src/backend/inline-port.js";
import { createControllerHandles } from "../src/connection/handles.js";
import { VirtualHostController } from "../src/frontend/index.js";
import type { Urb } from "../src/frontend/types.js";
import { GuestUsbDriver } from "../src/guest/guest-driver.js";
import type { DevAddr, EndpointNum, PortNum } from "../src/urb/types.js";
import type { Result, SuiteOptions } from "./harness.js";
import { urbPipeline } from "./urb-pipeline.js";

const PORT = 1 as PortNum;
const ADDRESS = 2 as DevAddr;
const DEPTH = 64;
const SAMPLING_BYTES = 256;

interface SampleNode {
  readonly selfSize: number;
  readonly callFrame: { readonly functionName: string; readonly url: string };
  readonly children: readonly SampleNode[];
}

function post<T>(session: Session, method: string, params: object = {}): Promise<T> {
  return new Promise((resolve, reject) =>
    session.post(method, params, (err, result) => (err ? reject(err) : resolve(result as T))),
  );
}

export const allocSuite = {
  name: "alloc",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const handles = createControllerHandles({ ports: 1, memory: 8192 });
    const backend = new UsbBackend(handles);
    const link = await openInlinePort({
      port: 1,
      spec: { kind: "emulated", name: "loopback" },
      memory: handles.memory,
      backendBell: handles.backendBell,
    });
    backend.attachLink(link);
    const hcd = new VirtualHostController(handles);
    hcd.start();
    let running = true;
    const backendLoop = (async () => {
      while (running) {
        backend.poll();
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    const guest = new GuestUsbDriver(hcd, handles);
    await guest.enumerate(PORT, ADDRESS);

    const nullUrb = (): Urb => ({
      type: "control",
      port: PORT,
      device: ADDRESS,
      endpoint: 0 as EndpointNum,
      directionIn: false,
      setup: { bmRequestType: 0x40, bRequest: 0x05, wValue: 0, wIndex: 0, wLength: 0 },
    });
    // Half OUT, half IN: each OUT fills the device's FIFO, an IN drains it.
    let nextIsIn = false;
    const out = guest.buffers.allocatePages(64 * 1024);
    const ins = Array.from({ length: DEPTH }, () => guest.buffers.allocatePages(64 * 1024));
    let nextIn = 0;
    const bulkUrb = (): Urb => {
      const directionIn = nextIsIn;
      nextIsIn = !nextIsIn;
      return {
        type: "bulk",
        port: PORT,
        device: ADDRESS,
        endpoint: 1 as EndpointNum,
        directionIn,
        buffer: [directionIn ? ins[nextIn++]! : out],
      };
    };

    const session = new Session();
    session.connect();
    const perUrb = async (make: () => Urb, urbs: number): Promise<{ bytes: number; top: string[] }> => {
      await urbPipeline(hcd, make, Math.max(1000, urbs / 4), DEPTH); // warm: optimised code allocates less
      await post(session, "HeapProfiler.startSampling", {
        samplingInterval: SAMPLING_BYTES,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
      await urbPipeline(hcd, make, urbs, DEPTH);
      const { profile } = await post<{ profile: { head: SampleNode } }>(session, "HeapProfiler.stopSampling");
      const byFunction = new Map<string, number>();
      let total = 0;
      const walk = (n: SampleNode): void => {
        total += n.selfSize;
        const name = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").slice(-2).join("/")}`;
        byFunction.set(name, (byFunction.get(name) ?? 0) + n.selfSize);
        for (const c of n.children) walk(c);
      };
      walk(profile.head);
      const top = [...byFunction]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 6)
        .map(([name, bytes]) => `${(bytes / urbs).toFixed(0).padStart(6)} B  ${name}`);
      return { bytes: total / urbs, top };
    };
    const urbs = opts.quick ? 2000 : 40_000;
    const nul = await perUrb(nullUrb, urbs);
    const bulk = await perUrb(bulkUrb, urbs / 4);
    session.disconnect();
    running = false;
    await backendLoop;
    await hcd.stop();
    await link.host.close();

    console.log("\n## garbage per URB (frontend + backend + loopback on one thread, sampled)");
    console.log(`null control URB: ${nul.bytes.toFixed(0)} B/URB; largest:\n${nul.top.join("\n")}`);
    console.log(`64 KiB bulk URB: ${bulk.bytes.toFixed(0)} B/URB; largest:\n${bulk.top.join("\n")}`);
    return [
      { name: "alloc.null.bytes_per_urb", value: nul.bytes, unit: "B/URB" },
      { name: "alloc.bulk64k.bytes_per_urb", value: bulk.bytes, unit: "B/URB" },
    ];
  },
};
