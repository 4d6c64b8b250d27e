/** The loopback / source-sink device driven through the UsbDevice interface. */
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import {
  LoopbackEndpoint as EP,
  fillPattern,
  findPatternError,
  ISO_PACKET_SIZE,
  LoopbackConfiguration,
  LoopbackDevice,
  LoopbackRequest,
} from "../../src/devices/emulated/loopback.js";
import {
  ECONNRESET,
  EINVAL,
  EMSGSIZE,
  EOVERFLOW,
  EPIPE,
  EPROTO,
  EREMOTEIO,
  ESHUTDOWN,
  OK,
} from "../../src/urb/status.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { tick } from "../support/eventually.js";
import { bulk, control, expectPending, interrupt, iso, setupPacket } from "./support.js";

const VENDOR_OUT = 0x40;
const VENDOR_IN = 0xc0;
let device: LoopbackDevice;

async function configured(config: number = LoopbackConfiguration.LOOPBACK, options = {}) {
  device = new LoopbackDevice(options);
  await device.open();
  expect(await device.setConfiguration(config)).toBe(OK);
  return device;
}

afterEach(async () => {
  await device?.close();
});

describe("loopback bulk", () => {
  it("reads back what was written, for random sizes (FIFO order kept)", async () => {
    await configured();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 3000 }), { minLength: 1, maxLength: 5 }),
        async (messages) => {
          for (const m of messages)
            expect((await bulk(device, EP.BULK_OUT, m.slice()).result).status).toBe(OK);
          for (const m of messages) {
            const buf = new Uint8Array(4096);
            const r = await bulk(device, EP.BULK_IN, buf).result;
            expect(r).toEqual({ status: OK, actualLength: m.length });
            expect(buf.subarray(0, m.length)).toEqual(m);
          }
          expect(device.queuedBytes).toBe(0);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("reads back a 300 000-byte OUT written before any IN (the default FIFO holds a maximal URB)", async () => {
    await configured();
    const big = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 31) & 0xff);
    expect(await bulk(device, EP.BULK_OUT, big).result).toEqual({ status: OK, actualLength: big.length });
    const back = new Uint8Array(big.length);
    expect(await bulk(device, EP.BULK_IN, back).result).toEqual({ status: OK, actualLength: big.length });
    expect(back).toEqual(big);
  });

  it("hands an OUT straight to waiting INs, keeps what they leave, and never reads the OUT after it completed", async () => {
    await configured();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 5000 }),
        fc.integer({ min: 1, max: 255 }),
        async (packets, length, seed) => {
          // Sizes spread over the whole range (uint8Array arbitraries stay short), bytes that differ.
          const message = Uint8Array.from({ length }, (_, i) => (i * seed + (i >> 8)) & 0xff);
          // Packet-aligned INs waiting on an empty FIFO: each takes the next piece of the message.
          const ins = packets.map((n) => bulk(device, EP.BULK_IN, new Uint8Array(n * 512)));
          const out = message.slice();
          expect(await bulk(device, EP.BULK_OUT, out).result).toEqual({
            status: OK,
            actualLength: out.length,
          });
          out.fill(0xee); // the guest reuses its buffer: the device must hold its own copy of what is left
          await tick();
          const got: number[] = [];
          for (const i of ins) {
            if (i.calls() === 0) {
              device.cancel(i.handle); // the message ran out before this IN
              expect((await i.result).status).toBe(ECONNRESET);
              continue;
            }
            const r = await i.result;
            expect(r.status).toBe(OK);
            got.push(...i.buffer.subarray(0, r.actualLength));
          }
          if (device.queuedBytes > 0) {
            const rest = bulk(device, EP.BULK_IN, new Uint8Array(8192));
            got.push(...rest.buffer.subarray(0, (await rest.result).actualLength));
          }
          expect(Uint8Array.from(got)).toEqual(message);
          expect(device.queuedBytes).toBe(0);
        },
      ),
      { numRuns: 60 },
    );
  });

  it("keeps an IN pending until data is written, never completing with 0 bytes", async () => {
    await configured();
    const pendingIn = bulk(device, EP.BULK_IN, new Uint8Array(512));
    await expectPending(pendingIn);
    await bulk(device, EP.BULK_OUT, Uint8Array.of(1, 2, 3)).result;
    expect(await pendingIn.result).toEqual({ status: OK, actualLength: 3 });
    expect(pendingIn.buffer.subarray(0, 3)).toEqual(Uint8Array.of(1, 2, 3));
  });

  it("a zero-length OUT completes without waking a pending IN", async () => {
    await configured();
    const pendingIn = bulk(device, EP.BULK_IN, new Uint8Array(512));
    expect(await bulk(device, EP.BULK_OUT, new Uint8Array(0)).result).toEqual({
      status: OK,
      actualLength: 0,
    });
    await expectPending(pendingIn);
    device.cancel(pendingIn.handle);
  });

  it("cancelling a pending IN completes it exactly once with -ECONNRESET; a second cancel does nothing", async () => {
    await configured();
    const pendingIn = bulk(device, EP.BULK_IN, new Uint8Array(64));
    device.cancel(pendingIn.handle);
    device.cancel(pendingIn.handle);
    expect(pendingIn.calls()).toBe(0);
    expect(await pendingIn.result).toEqual({ status: ECONNRESET, actualLength: 0 });
    await tick();
    expect(pendingIn.calls()).toBe(1);
    // The data goes to the next IN, not the cancelled one.
    await bulk(device, EP.BULK_OUT, Uint8Array.of(9)).result;
    expect((await bulk(device, EP.BULK_IN, new Uint8Array(64)).result).actualLength).toBe(1);
  });

  it("applies back-pressure: an OUT that does not fit waits until an IN drains the FIFO", async () => {
    await configured(LoopbackConfiguration.LOOPBACK, { fifoCapacity: 1024 });
    expect((await bulk(device, EP.BULK_OUT, new Uint8Array(1024).fill(1)).result).status).toBe(OK);
    const blocked = bulk(device, EP.BULK_OUT, new Uint8Array(100).fill(2));
    await expectPending(blocked);
    expect((await bulk(device, EP.BULK_IN, new Uint8Array(1024)).result).actualLength).toBe(1024);
    expect(await blocked.result).toEqual({ status: OK, actualLength: 100 });
  });

  it("moves an OUT larger than the FIFO through in FIFO-sized pieces", async () => {
    await configured(LoopbackConfiguration.LOOPBACK, { fifoCapacity: 1024 });
    const big = new Uint8Array(3000).map((_, i) => i & 0xff);
    const out = bulk(device, EP.BULK_OUT, big);
    const got: number[] = [];
    for (let i = 0; i < 3; i++) {
      const buf = new Uint8Array(1024);
      const r = await bulk(device, EP.BULK_IN, buf).result;
      got.push(...buf.subarray(0, r.actualLength));
    }
    expect((await out.result).status).toBe(OK);
    expect(Uint8Array.from(got)).toEqual(big);
  });

  it("short IN with SHORT_NOT_OK completes -EREMOTEIO with the bytes it got", async () => {
    await configured();
    await bulk(device, EP.BULK_OUT, Uint8Array.of(1, 2)).result;
    const r = await bulk(device, EP.BULK_IN, new Uint8Array(512), { shortNotOk: true }).result;
    expect(r).toEqual({ status: EREMOTEIO, actualLength: 2 });
  });

  it("babbles (-EOVERFLOW) when the last packet overflows an IN buffer that is not packet-aligned", async () => {
    await configured();
    await bulk(device, EP.BULK_OUT, new Uint8Array(600)).result;
    expect(await bulk(device, EP.BULK_IN, new Uint8Array(100)).result).toEqual({
      status: EOVERFLOW,
      actualLength: 100,
    });
    // The babbling 512-byte packet is gone; the message's last 88 bytes come next.
    expect((await bulk(device, EP.BULK_IN, new Uint8Array(512)).result).actualLength).toBe(88);
    // Packet-aligned IN smaller than the message: no babble, the rest stays queued.
    await bulk(device, EP.BULK_OUT, new Uint8Array(1000)).result;
    expect((await bulk(device, EP.BULK_IN, new Uint8Array(512)).result).status).toBe(OK);
    expect(device.queuedBytes).toBe(488);
  });

  it("refuses transfers before SET_CONFIGURATION and with the wrong transfer type", async () => {
    device = new LoopbackDevice();
    expect((await bulk(device, EP.BULK_OUT, Uint8Array.of(1)).result).status).toBe(EPROTO);
    await device.setConfiguration(1);
    expect((await interrupt(device, EP.BULK_IN, 8).result).status).toBe(EINVAL);
  });

  it("close completes a pending IN with -ESHUTDOWN before it resolves", async () => {
    await configured();
    const pendingIn = bulk(device, EP.BULK_IN, new Uint8Array(64));
    await device.close();
    expect(pendingIn.calls()).toBe(1);
    expect((await pendingIn.result).status).toBe(ESHUTDOWN);
  });

  it("SET_CONFIGURATION flushes pending transfers with -ESHUTDOWN", async () => {
    await configured();
    const pendingIn = bulk(device, EP.BULK_IN, new Uint8Array(64));
    expect(await device.setConfiguration(LoopbackConfiguration.SOURCE_SINK)).toBe(OK);
    expect((await pendingIn.result).status).toBe(ESHUTDOWN);
  });
});

describe("loopback vendor requests", () => {
  it("writes and reads back the control buffer", async () => {
    await configured();
    const data = Uint8Array.from({ length: 40 }, (_, i) => i * 3);
    expect(
      (await control(device, setupPacket(VENDOR_OUT, LoopbackRequest.CONTROL_WRITE, 0, 0, 40), data)).result
        .status,
    ).toBe(OK);
    const back = await control(device, setupPacket(VENDOR_IN, LoopbackRequest.CONTROL_READ, 0, 0, 64));
    expect(back.data).toEqual(data);
    const tooBig = await control(
      device,
      setupPacket(VENDOR_OUT, LoopbackRequest.CONTROL_WRITE, 0, 0, 300),
      new Uint8Array(300),
    );
    expect(tooBig.result.status).toBe(EPIPE);
  });

  it("stalls an endpoint on request: -EPIPE until clearHalt, then OK; GET_STATUS shows the halt", async () => {
    await configured();
    const stall = await control(
      device,
      setupPacket(VENDOR_OUT, LoopbackRequest.STALL_ENDPOINT, 0, EP.BULK_OUT, 0),
    );
    expect(stall.result.status).toBe(OK);
    expect((await bulk(device, EP.BULK_OUT, Uint8Array.of(1)).result).status).toBe(EPIPE);
    const status = await control(device, setupPacket(0x82, 0x00, 0, EP.BULK_OUT, 2));
    expect(status.data).toEqual(Uint8Array.of(1, 0));
    expect(await device.clearHalt(EP.BULK_OUT)).toBe(OK);
    expect((await bulk(device, EP.BULK_OUT, Uint8Array.of(1)).result).status).toBe(OK);
  });

  it("stalling an endpoint fails its pending transfer with -EPIPE", async () => {
    await configured();
    const pendingIn = bulk(device, EP.BULK_IN, new Uint8Array(64));
    await control(device, setupPacket(VENDOR_OUT, LoopbackRequest.STALL_ENDPOINT, 0, EP.BULK_IN, 0));
    expect((await pendingIn.result).status).toBe(EPIPE);
  });

  it("reports and resets statistics", async () => {
    await configured();
    await bulk(device, EP.BULK_OUT, new Uint8Array(10)).result;
    await bulk(device, EP.BULK_IN, new Uint8Array(64)).result;
    const stats = await control(device, setupPacket(VENDOR_IN, LoopbackRequest.GET_STATS, 0, 0, 32));
    const view = new DataView(stats.data.buffer, stats.data.byteOffset);
    expect([
      view.getUint32(0, true),
      view.getUint32(4, true),
      view.getUint32(8, true),
      view.getUint32(12, true),
    ]).toEqual([10, 10, 1, 1]);
    await control(device, setupPacket(VENDOR_OUT, LoopbackRequest.RESET_STATS, 0, 0, 0));
    expect(device.stats().bytesOut).toBe(0);
  });

  it("stalls unknown vendor requests and class requests", async () => {
    await configured();
    expect((await control(device, setupPacket(VENDOR_IN, 0x77, 0, 0, 4))).result.status).toBe(EPIPE);
    expect((await control(device, setupPacket(0xa1, 0x01, 0, 0, 4))).result.status).toBe(EPIPE);
  });
});

describe("source/sink (configuration 2)", () => {
  it("bulk IN returns pattern 1 for every transfer size", async () => {
    await configured(LoopbackConfiguration.SOURCE_SINK);
    for (const size of [1, 63, 64, 512, 4096, 5000]) {
      const buf = new Uint8Array(size);
      expect(await bulk(device, EP.BULK_IN, buf).result).toEqual({ status: OK, actualLength: size });
      expect(findPatternError(buf)).toBe(-1);
    }
  });

  it("bulk OUT accepts the pattern and rejects a corrupted byte with -EPROTO, counting it", async () => {
    await configured(LoopbackConfiguration.SOURCE_SINK);
    const good = new Uint8Array(1000);
    fillPattern(good);
    expect((await bulk(device, EP.BULK_OUT, good).result).status).toBe(OK);
    good[700] = 0xff;
    expect((await bulk(device, EP.BULK_OUT, good).result).status).toBe(EPROTO);
    expect(device.stats().patternErrors).toBe(1);
  });
});

describe("interrupt IN", () => {
  it("stays pending until its interval, then returns increasing sequence numbers", async () => {
    await configured();
    const reports = [
      interrupt(device, EP.INTERRUPT_IN, 8),
      interrupt(device, EP.INTERRUPT_IN, 8),
      interrupt(device, EP.INTERRUPT_IN, 8),
    ];
    const sequences: number[] = [];
    for (const r of reports) {
      expect(await r.result).toEqual({ status: OK, actualLength: 8 });
      sequences.push(new DataView(r.buffer.buffer).getUint32(0, true));
    }
    expect(sequences).toEqual([0, 1, 2]);
    const later = interrupt(device, EP.INTERRUPT_IN, 8);
    expect(later.calls()).toBe(0);
    device.cancel(later.handle);
    expect((await later.result).status).toBe(ECONNRESET);
  });

  it("a too-small interrupt buffer babbles", async () => {
    await configured();
    expect(await interrupt(device, EP.INTERRUPT_IN, 4).result).toEqual({
      status: EOVERFLOW,
      actualLength: 4,
    });
  });
});

describe("isochronous on interface 0 alternate setting 1", () => {
  const packets = (n: number, size: number) =>
    Array.from({ length: n }, (_, i) => ({ offset: i * size, length: size }));

  it("is refused on alternate setting 0 (no iso bandwidth)", async () => {
    await configured();
    const r = await iso(device, EP.ISO_IN, packets(2, ISO_PACKET_SIZE), new Uint8Array(2 * ISO_PACKET_SIZE))
      .result;
    expect(r.status).toBe(EPROTO);
  });

  it("iso IN fills every packet with the pattern and reports per-packet results", async () => {
    await configured();
    expect(await device.setInterface(0, 1)).toBe(OK);
    const buffer = new Uint8Array(4 * ISO_PACKET_SIZE);
    const list = [...packets(3, ISO_PACKET_SIZE), { offset: 3 * ISO_PACKET_SIZE, length: 100 }];
    const r = await iso(device, EP.ISO_IN, list, buffer).result;
    expect(r.status).toBe(OK);
    expect(r.isoPackets).toEqual([
      { status: OK, actualLength: ISO_PACKET_SIZE },
      { status: OK, actualLength: ISO_PACKET_SIZE },
      { status: OK, actualLength: ISO_PACKET_SIZE },
      { status: EOVERFLOW, actualLength: 100 },
    ]);
    expect(r.errorCount).toBe(1);
    expect(r.actualLength).toBe(3 * ISO_PACKET_SIZE + 100);
    expect(findPatternError(buffer.subarray(ISO_PACKET_SIZE, 2 * ISO_PACKET_SIZE))).toBe(-1);
  });

  it("iso OUT accepts packets up to wMaxPacketSize and rejects a longer one", async () => {
    await configured();
    await device.setInterface(0, 1);
    const list = [
      { offset: 0, length: ISO_PACKET_SIZE },
      { offset: ISO_PACKET_SIZE, length: 0 },
      { offset: ISO_PACKET_SIZE, length: ISO_PACKET_SIZE + 1 },
    ];
    const r = await iso(device, EP.ISO_OUT, list, new Uint8Array(3 * ISO_PACKET_SIZE)).result;
    expect(r.isoPackets).toEqual([
      { status: OK, actualLength: ISO_PACKET_SIZE },
      { status: OK, actualLength: 0 },
      { status: EMSGSIZE, actualLength: 0 },
    ]);
    expect(device.stats().isoPacketsOut).toBe(2);
  });

  it("switching back to alternate 0 flushes a pending iso transfer with -ESHUTDOWN", async () => {
    await configured();
    await device.setInterface(0, 1);
    const pending = iso(
      device,
      EP.ISO_IN,
      packets(50, ISO_PACKET_SIZE),
      new Uint8Array(50 * ISO_PACKET_SIZE),
    );
    expect(await device.setInterface(0, 0)).toBe(OK);
    expect((await pending.result).status).toBe(ESHUTDOWN);
  });

  it("rejects an alternate setting that does not exist", async () => {
    await configured();
    expect(await device.setInterface(0, 2)).toBe(EPIPE);
    expect(await device.setInterface(1, 0)).toBe(EPIPE);
  });
});

describe("loopback speeds", () => {
  it("defaults to high speed with 512-byte bulk packets; full speed uses 64", () => {
    expect(new LoopbackDevice().info.speed).toBe(UsbSpeed.HIGH);
    const fs = new LoopbackDevice({ speed: UsbSpeed.FULL });
    expect(fs.info.speed).toBe(UsbSpeed.FULL);
    const set = fs.info.configurations[0]!;
    // First endpoint descriptor of alt 0 follows config (9) + interface (9).
    expect(set[18 + 4]! | (set[18 + 5]! << 8)).toBe(64);
  });
});
