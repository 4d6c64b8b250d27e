/**
 * The iso bench's engine process. bench/iso.ts runs it under bench/python/iso-testbed.py --stream (the
 * umockdev testbed that answers every iso URB of bench/iso-device.ts's device at once) and drives it with
 * JSON lines on stdin, answered on stdout (stream-bench.ts's protocol, plus `connect`):
 *   {"cmd": "connect"}                        -> {"ev": "connected", "pid": P}
 *   {"cmd": "start", "workload": IsoWorkload} -> {"ev": "started"}, then wait / stop as every stream.
 * `connect` builds the whole path: a Connection whose port 1 holds the testbed's device as a host device
 * (frontend → backend worker → port worker → HostUsbDevice → usbfs through koffi); a guest driver
 * addresses and configures it and selects the iso alternate setting. A stream keeps `depth` iso URBs in flight on one
 * endpoint, each resubmitted as it completes; every completion is checked (status 0, every packet whole),
 * anything else throws and the process exits non-zero. It exits when its stdin closes.
 */
import { Connection } from "../src/engine/connection.js";
import type { IsochronousTransfer, UrbCompletion } from "../src/frontend/types.js";
import { GuestUsbDriver } from "../src/guest/guest-driver.js";
import { devAddr, endpointNum, portNum } from "../src/urb/types.js";
import { setAddressSetup, setConfigurationSetup, setInterfaceSetup } from "../src/usb/index.js";
import { ISO_BENCH_PID, ISO_BENCH_VID, type IsoWorkload } from "./iso-device.js";
import type { StreamReply, StreamRequest } from "./stream-bench.js";
import { StreamState, serveParent } from "./stream-client.js";

export type IsoClientRequest = { readonly cmd: "connect" } | StreamRequest<IsoWorkload>;
export type IsoClientReply = StreamReply | { readonly ev: "connected"; readonly pid: number };

const PORT = portNum(1);
const ADDRESS = devAddr(5);

function fail(message: string): never {
  throw new Error(`iso bench client: ${message}`);
}

function send(reply: IsoClientReply): void {
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

let guest: GuestUsbDriver | null = null;
const state = new StreamState<"iso">(fail, send);

async function connect(): Promise<void> {
  if (guest !== null) fail("connect twice");
  const conn = await Connection.create({ ports: 1 });
  await conn.attach(PORT, { kind: "host", vendorId: ISO_BENCH_VID, productId: ISO_BENCH_PID });
  const g = new GuestUsbDriver(conn.frontend!, conn.handles);
  // What a guest's driver sends to start streaming; the port service performs these itself (the testbed
  // answers no control transfer).
  await g.hcd.resetPort(PORT);
  await g.control(PORT, devAddr(0), setAddressSetup(ADDRESS));
  await g.control(PORT, ADDRESS, setConfigurationSetup(1));
  await g.control(PORT, ADDRESS, setInterfaceSetup(0, 1));
  guest = g;
}

function start(w: IsoWorkload): void {
  const g = guest ?? fail("start before connect");
  state.begin("iso");
  const packets = Array.from({ length: w.packets }, (_, i) => ({
    offset: i * w.packetLength,
    length: w.packetLength,
  }));
  const urbs: IsochronousTransfer[] = [];
  const ranges: ReturnType<typeof g.buffers.allocatePages>[] = [];
  for (let i = 0; i < w.depth; i++) {
    const range = g.buffers.allocatePages(w.packets * w.packetLength);
    ranges.push(range);
    if (!w.directionIn) g.bytes(range).fill(i + 1);
    urbs.push({
      type: "isochronous",
      port: PORT,
      device: ADDRESS,
      endpoint: endpointNum(w.endpoint & 0x0f),
      directionIn: w.directionIn,
      buffer: [range],
      interval: 1,
      iso: { asap: true, packets },
    });
  }
  const bytes = w.packets * w.packetLength;
  const submit = (urb: IsochronousTransfer) => {
    state.inflight++;
    g.hcd.submitWithCallback(urb, (c) => completed(urb, c));
  };
  const completed = (urb: IsochronousTransfer, c: UrbCompletion) => {
    state.inflight--;
    if (c.status !== 0 || c.errorCount !== 0 || c.actualLength !== bytes)
      fail(
        `iso URB on 0x${w.endpoint.toString(16)}: status ${c.status}, ${c.errorCount} packet errors, ${c.actualLength} of ${bytes} bytes`,
      );
    state.itemDone();
    if (state.streaming) submit(urb);
    else if (state.inflight === 0) for (const r of ranges) g.buffers.release(r);
    state.maybeStopped();
  };
  for (const urb of urbs) submit(urb);
}

serveParent<IsoClientRequest>(
  "bench/iso.ts",
  state,
  send,
  async (m) => {
    if (m.cmd === "connect") {
      await connect();
      send({ ev: "connected", pid: process.pid });
    } else if (m.cmd === "start") {
      start(m.workload);
      send({ ev: "started" });
    }
  },
  "lines",
);
