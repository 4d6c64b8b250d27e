/**
 * The production grant path (what the engine runs per URB), variants side by
 * side: one grant map+unmap (the indirect-page and iso-array path), and a
 * 4-segment bulk OUT URB through the backend's gate (src/backend/resolve.ts:
 * parse, route, pin each segment) and the port service's buffer
 * (src/port/transfer-buffer.ts: one view when the segments are back to back,
 * a 16 KiB bounce copy when they are scattered), then unpinned as the
 * backend does at completion. Setup is outside the measured functions; after
 * the run we check the work happened (guest bytes seen, every pin released,
 * bounces counted).
 */
import { Bench } from "tinybench";
import { type PortHost, PortLink } from "../src/backend/port-link.js";
import { type GateState, RequestGate, type Resolution } from "../src/backend/resolve.js";
import {
  createGrantTableStorage,
  type DomId,
  FRAME_SIZE,
  GrantMapper,
  type GrantSegment,
  GrantTableOwner,
  type GuestFrame,
  GuestMemory,
  grantFaultMessage,
  isGrantFault,
} from "../src/dma-map/index.js";
import { PORT_RING_GEOMETRY } from "../src/port/port-wire.js";
import { TransferBuffers } from "../src/port/transfer-buffer.js";
import { createRingBuffer } from "../src/rings/layout.js";
import { encodeRequest } from "../src/urb/codec.js";
import { URB_SLOT_SIZE } from "../src/urb/layout.js";
import { DEFAULT_DEV_ADDR, Direction, type EndpointNum, type PortNum, type UrbId } from "../src/urb/types.js";
import { UsbSpeed } from "../src/usb/index.js";
import { benchTiming, printBench, type Result, type SuiteOptions } from "./harness.js";

const BACKEND = 1 as DomId;

/** Task name → its stable result name. */
export const GRANT_RESULT_KEYS: Record<string, string> = {
  "map+unmap 1 segment": "grant.map_unmap_per_s",
  "gate + port buffer, 4 contiguous segments (one view)": "grant.urb4_contiguous_per_s",
  "gate + port buffer, 4 scattered segments (bounce 16 KiB)": "grant.urb4_bounce_per_s",
};

/** A port host that is never run: the gate only needs the port to be attached. */
const idleHost = { placement: "backend", kick() {}, collect() {}, watch() {} } as unknown as PortHost;

export const grantSuite = {
  name: "grant",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const memory = GuestMemory.create({ regionFrames: [64] });
    const table = createGrantTableStorage({ entries: 64 });
    const owner = new GrantTableOwner({ storage: table, memory });
    const mapper = new GrantMapper({ table, memory });
    // Guest data the OUT buffers should show: byte i of frame f is (f + i) & 0xff.
    for (let f = 0; f < 64; f++) {
      const view = memory.frameView(f as GuestFrame);
      for (let i = 0; i < view.length; i++) view[i] = (f + i) & 0xff;
    }

    const bounceStats = { bounceCopies: 0, bounceBytes: 0 };
    const gateCounters = { grantFaults: 0, setAddress: 0 };
    const gate = new RequestGate(mapper, BACKEND, gateCounters);
    const buffers = new TransferBuffers(memory.regions, bounceStats);
    const summary = {
      name: "bench",
      speed: UsbSpeed.HIGH,
      deviceDescriptor: new Uint8Array(18),
      placement: "backend" as const,
    };
    const link = new PortLink(1, summary, createRingBuffer(PORT_RING_GEOMETRY), idleHost);
    const state: GateState = {
      ports: [
        { link: null, address: DEFAULT_DEV_ADDR },
        { link, address: DEFAULT_DEV_ADDR },
      ],
      inFlight: new Map(),
    };

    const single = owner.grant(BACKEND, 1 as GuestFrame, 1, false);
    /** A bulk OUT URB slot over four one-frame grants, `stride` frames apart. */
    const urbOver = (first: number, stride: number): Uint8Array => {
      const segments: GrantSegment[] = [0, 1, 2, 3].map((k) => ({
        ref: owner.grant(BACKEND, (first + k * stride) as GuestFrame, 1, true),
        offset: 0,
        length: FRAME_SIZE,
      }));
      const slot = new Uint8Array(URB_SLOT_SIZE);
      encodeRequest(
        {
          kind: "bulk",
          streamId: 0,
          id: 7 as UrbId,
          port: 1 as PortNum,
          device: DEFAULT_DEV_ADDR,
          endpoint: 1 as EndpointNum,
          direction: Direction.Out,
          bufferLength: 4 * FRAME_SIZE,
          buffer: { kind: "inline", segments },
          shortNotOk: false,
          zeroPacket: false,
        },
        slot,
      );
      return slot;
    };
    const contiguous = urbOver(10, 1);
    const scattered = urbOver(20, 2);

    /** What the backend and the port service do with one URB: resolve, build the buffer, unpin at completion. */
    const runUrb = (slot: Uint8Array): Uint8Array => {
      const r: Resolution = gate.resolveRequest(slot, state);
      if (!r.ok || r.kind !== "transfer") throw new Error(`gate refused the bench URB: ${JSON.stringify(r)}`);
      const buffer = buffers.build(r.segments, r.segmentCount, r.bufferLength, r.directionIn);
      for (const ref of r.pins) mapper.unmap(ref);
      return buffer;
    };

    let stamp = 0;
    let bytesSeen = 0;
    let urbs = 0;
    const bench = new Bench(benchTiming(opts));
    bench
      .add("map+unmap 1 segment", () => {
        const view = mapper.map(single, BACKEND, "write", 0, 512);
        if (isGrantFault(view)) throw new Error(grantFaultMessage(view));
        view[0] = ++stamp & 0xff;
        mapper.unmap(single);
      })
      .add("gate + port buffer, 4 contiguous segments (one view)", () => {
        urbs++;
        bytesSeen += runUrb(contiguous)[FRAME_SIZE + 1]! === 12 ? 1 : 0; // frame 11, byte 1
      })
      .add("gate + port buffer, 4 scattered segments (bounce 16 KiB)", () => {
        urbs++;
        bytesSeen += runUrb(scattered)[FRAME_SIZE + 1]! === 23 ? 1 : 0; // frame 22, byte 1
      });
    await bench.run();
    const results = printBench(
      "grant: map/unmap and a 4-segment URB through the gate and port buffer",
      bench,
    );

    // The work was done: bytes written and read, every pin released, bounces counted.
    const { stats } = mapper;
    if (memory.frameView(1 as GuestFrame)[0] !== (stamp & 0xff))
      throw new Error("map+unmap did not write guest memory");
    if (bytesSeen !== urbs) throw new Error(`saw the guest bytes in ${bytesSeen} of ${urbs} URBs`);
    if (stats.maps !== stats.unmaps || stats.faults !== 0 || gateCounters.grantFaults !== 0)
      throw new Error(`pins leaked: ${JSON.stringify(stats)}`);
    if (bounceStats.bounceBytes !== bounceStats.bounceCopies * 4 * FRAME_SIZE)
      throw new Error("bounce bytes miscounted");
    console.log(
      `grant: ${stats.maps} pins, ${urbs} URBs (${bounceStats.bounceCopies} bounced), ${(bounceStats.bounceBytes / 2 ** 20).toFixed(0)} MiB bounced`,
    );
    return results.map((r) => ({
      ...r,
      name: GRANT_RESULT_KEYS[r.name] ?? r.name,
      unit: r.name.startsWith("map") ? "maps/s" : "URB/s",
    }));
  },
};
