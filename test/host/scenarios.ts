/**
 * The replay scenarios: each one is what the fake device "recorded" (the URBs
 * the host would see, in order) and what the guest does through the whole
 * engine (frontend → backend worker → port worker → libusb) to produce exactly
 * that traffic. The test writes the recording; a child process under
 * umockdev-run runs the guest side and prints a verdict.
 */
import { Connection } from "../../src/engine/connection.js";
import { GuestUsbDriver } from "../../src/guest/guest-driver.js";
import type { UrbStatus } from "../../src/urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../../src/urb/types.js";
import type { SetupPacket } from "../../src/usb/index.js";
import { eventually } from "../support/eventually.js";
import { CONFIGURATION, DEVICE_DESCRIPTOR, PID, PRODUCT, stringDescriptor, VID } from "./fixture.js";
import { type Recording, XFER_BULK, XFER_INTERRUPT } from "./umockdev.js";

export const ENODEV_RAW = -19;
export const ESHUTDOWN_RAW = -108;
export const EPIPE_RAW = -32;

const P = 1 as PortNum;
const A = 5 as DevAddr;

export const payload = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

/** What the guest's enumeration sends to the device (SET_ADDRESS and SET_CONFIGURATION never reach it). */
function recordEnumeration(r: Recording): void {
  const get = (wValue: number, wLength: number, wIndex = 0) => ({
    bmRequestType: 0x80,
    bRequest: 6,
    wValue,
    wIndex,
    wLength,
  });
  r.control(get(0x0100, 8), DEVICE_DESCRIPTOR.subarray(0, 8));
  r.control(get(0x0100, 18), DEVICE_DESCRIPTOR);
  r.control(get(0x0200, 9), CONFIGURATION.subarray(0, 9));
  r.control(get(0x0200, CONFIGURATION.length), CONFIGURATION);
  r.control(get(0x0302, 255, 0x0409), stringDescriptor(PRODUCT));
}

export interface Verdict {
  ok: boolean;
  error?: string;
  [key: string]: unknown;
}

interface Ctx {
  conn: Connection;
  guest: GuestUsbDriver;
}

export interface Scenario {
  record(r: Recording): void;
  run(ctx: Ctx): Promise<Record<string, unknown>>;
}

/** Wait until the port's worker holds `n` transfers (submitted to libusb): the URB reached the device. */
export async function inDevice(conn: Connection, n: number): Promise<void> {
  await eventually(
    async () => ((await conn.stats()).portWorkers[P]?.inFlight ?? 0) >= n,
    5000,
    `${n} transfer(s) in the port worker`,
  );
}

const bulkIn = (ctx: Ctx, endpoint: number, length: number, type: "bulk" | "interrupt" = "bulk") => {
  const range = ctx.guest.buffers.allocate(length);
  const urb =
    type === "bulk"
      ? ({
          type,
          port: P,
          device: A,
          endpoint: endpoint as EndpointNum,
          directionIn: true,
          buffer: [range],
        } as const)
      : ({
          type,
          port: P,
          device: A,
          endpoint: endpoint as EndpointNum,
          directionIn: true,
          buffer: [range],
          interval: 4,
        } as const);
  return { range, urb, done: ctx.guest.hcd.submit(urb) };
};

export const SCENARIOS: Record<string, Scenario> = {
  /** Enumeration, control IN and OUT with data, bulk IN and OUT, interrupt IN, four bulk INs in flight. */
  data: {
    record(r) {
      recordEnumeration(r);
      r.control(
        { bmRequestType: 0x40, bRequest: 0x01, wValue: 0x1234, wIndex: 0, wLength: 40 },
        payload(40, 1),
      );
      r.control({ bmRequestType: 0xc0, bRequest: 0x02, wValue: 0, wIndex: 0, wLength: 64 }, payload(40, 1));
      r.transferOut(XFER_BULK, 0x02, payload(1024, 2));
      r.transferIn(XFER_BULK, 0x01, 1024, payload(1024, 3));
      r.transferIn(XFER_INTERRUPT, 0x03, 8, payload(8, 4));
      const ids = [r.id(), r.id(), r.id(), r.id()];
      for (const id of ids) r.submit(id, XFER_BULK, 0x81, 512);
      for (const [i, id] of ids.entries()) {
        r.complete(id, XFER_BULK, 0x81, 512 - i, { data: payload(512 - i, 10 + i) });
      }
    },
    async run({ guest }) {
      const dev = await guest.enumerate(P, A);
      await guest.control(
        P,
        A,
        { bmRequestType: 0x40, bRequest: 0x01, wValue: 0x1234, wIndex: 0, wLength: 40 },
        payload(40, 1),
      );
      const controlIn = await guest.control(P, A, {
        bmRequestType: 0xc0,
        bRequest: 0x02,
        wValue: 0,
        wIndex: 0,
        wLength: 64,
      });
      const bulkOut = await guest.transferOut(P, A, 2, payload(1024, 2));
      const bulkInData = await guest.transferIn(P, A, 1, 1024);
      const interruptIn = await guest.transferIn(P, A, 3, 8, "interrupt");
      const many = await Promise.all(
        [0, 1, 2, 3].map(async () => {
          const t = bulkIn({ guest } as Ctx, 1, 512);
          const c = await t.done;
          const bytes = guest.bytes(t.range).slice(0, c.actualLength);
          guest.buffers.release(t.range);
          return { status: c.status, length: c.actualLength, hex: Buffer.from(bytes).toString("hex") };
        }),
      );
      return {
        vendorId: dev.vendorId,
        productId: dev.productId,
        product: dev.product,
        endpoints: dev.interfaces[0]?.endpoints.map((e) => e.address),
        controlIn: Buffer.from(controlIn).toString("hex"),
        bulkOut,
        bulkIn: Buffer.from(bulkInData).toString("hex"),
        interruptIn: Buffer.from(interruptIn).toString("hex"),
        many,
      };
    },
  },

  /**
   * The device sees the guest's wLength, never the buffer's length: GET_DESCRIPTOR(device, 18) with a
   * 4096-byte buffer reaches it as wLength 18, and a vendor IN with wLength 0 and a 64-byte buffer has no
   * data stage (a replayed submit whose length differs never completes).
   */
  "padded-control": {
    record(r) {
      recordEnumeration(r);
      r.control(
        { bmRequestType: 0x80, bRequest: 6, wValue: 0x0100, wIndex: 0, wLength: 18 },
        DEVICE_DESCRIPTOR,
      );
      r.control({ bmRequestType: 0xc0, bRequest: 0x07, wValue: 0x55, wIndex: 0, wLength: 0 });
    },
    async run({ guest }) {
      await guest.enumerate(P, A);
      const padded = async (setup: SetupPacket, length: number) => {
        const range = guest.buffers.allocate(length);
        guest.bytes(range).fill(0xee);
        const c = await guest.hcd.submit({
          type: "control",
          port: P,
          device: A,
          endpoint: 0 as EndpointNum,
          directionIn: true,
          setup,
          buffer: [range],
        });
        const bytes = guest.bytes(range);
        const out = {
          status: c.status,
          actualLength: c.actualLength,
          hex: Buffer.from(bytes.subarray(0, c.actualLength)).toString("hex"),
          untouchedAfter: bytes.subarray(c.actualLength).every((b) => b === 0xee),
        };
        guest.buffers.release(range);
        return out;
      };
      const descriptor = await padded(
        { bmRequestType: 0x80, bRequest: 6, wValue: 0x0100, wIndex: 0, wLength: 18 },
        4096,
      );
      const noData = await padded(
        { bmRequestType: 0xc0, bRequest: 0x07, wValue: 0x55, wIndex: 0, wLength: 0 },
        64,
      );
      return { descriptor, noData };
    },
  },

  /** A bulk OUT stalls; CLEAR_FEATURE(HALT) reaches libusb_clear_halt; the retry goes through. */
  stall: {
    record(r) {
      recordEnumeration(r);
      r.transferOut(XFER_BULK, 0x02, payload(64, 5), EPIPE_RAW);
      r.transferOut(XFER_BULK, 0x02, payload(64, 5));
    },
    async run({ guest }) {
      await guest.enumerate(P, A);
      const range = guest.buffers.allocate(64);
      guest.bytes(range).set(payload(64, 5));
      const stalled = await guest.hcd.submit({
        type: "bulk",
        port: P,
        device: A,
        endpoint: 2 as EndpointNum,
        directionIn: false,
        buffer: [range],
      });
      await guest.control(
        P,
        A,
        { bmRequestType: 0x02, bRequest: 1, wValue: 0, wIndex: 0x02, wLength: 0 },
        undefined,
        "CLEAR_FEATURE(HALT)",
      );
      const retried = await guest.transferOut(P, A, 2, payload(64, 5));
      return { stalledStatus: stalled.status, retried };
    },
  },

  /** Unlink of a bulk IN the device never answers: exactly one completion, -ECONNRESET. */
  unlink: {
    record(r) {
      recordEnumeration(r);
      r.submit(r.id(), XFER_BULK, 0x81, 256);
    },
    async run({ conn, guest }) {
      await guest.enumerate(P, A);
      const t = bulkIn({ guest } as Ctx, 1, 256);
      await inDevice(conn, 1);
      const unlinkStatus = await guest.hcd.unlink(t.urb);
      const c = await t.done;
      return { unlinkStatus, status: c.status };
    },
  },

  /** Unplug with a bulk IN and an interrupt IN in flight: both fail, the port disconnects, the worker ends. */
  unplug: {
    record(r) {
      recordEnumeration(r);
      const a = r.id();
      const b = r.id();
      r.submit(a, XFER_BULK, 0x81, 512);
      r.submit(b, XFER_INTERRUPT, 0x83, 8, { interval: 4 });
      r.complete(a, XFER_BULK, 0x81, 0, { status: ENODEV_RAW });
      r.complete(b, XFER_INTERRUPT, 0x83, 0, { status: ESHUTDOWN_RAW });
    },
    async run({ conn, guest }) {
      const failed = new Promise<string>((res) =>
        conn.once("port-failed", (_port: number, reason: string, gone: boolean) =>
          res(gone ? reason : `not marked gone: ${reason}`),
        ),
      );
      await guest.enumerate(P, A);
      const a = bulkIn({ conn, guest }, 1, 512);
      const b = bulkIn({ conn, guest }, 3, 8, "interrupt");
      const statuses: UrbStatus[] = [(await a.done).status, (await b.done).status];
      const reason = await Promise.race([
        failed,
        new Promise<string>((res) => setTimeout(() => res("no port-failed event"), 5000)),
      ]);
      const started = Date.now();
      while (guest.hcd.portStatus(P).connected && Date.now() - started < 5000)
        await new Promise((res) => setTimeout(res, 5));
      const after = await guest.hcd.submit({ ...a.urb });
      return { statuses, reason, connected: guest.hcd.portStatus(P).connected, afterStatus: after.status };
    },
  },
};

/** Run one scenario through the engine (in the child, under umockdev). */
export async function runScenario(name: string): Promise<Verdict> {
  const scenario = SCENARIOS[name];
  if (scenario === undefined) return { ok: false, error: `no scenario ${name}` };
  const conn = await Connection.create({ ports: 2, memory: 1024 });
  try {
    const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
    await conn.attach(1, { kind: "host", vendorId: VID, productId: PID });
    const result = await scenario.run({ conn, guest });
    return { ok: true, ...result };
  } finally {
    await conn.close();
  }
}
