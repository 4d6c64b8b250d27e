/**
 * Child process under bench/python/iso-testbed.py (interactive umockdev):
 * the whole engine (frontend → backend worker → port worker → HostUsbDevice →
 * usbfs through koffi) against the fake iso device of ../iso-fixture.ts.
 *   node --import tsx test/host/children/iso.ts <stream | unlink | unplug>
 * Prints `VERDICT <json>`; the testbed adds `TESTBED <json>` with what the device saw.
 * `unplug` waits for `INFLIGHT n` lines on stdin (the testbed holding n iso URBs)
 * before it prints `STAGE unplug`, so the URBs are in flight for certain.
 */
import { createInterface } from "node:readline";
import { USBFS_MAX_PACKETS_PER_URB } from "../../../src/devices/host/usbfs-iso.js";
import { Connection } from "../../../src/engine/connection.js";
import type { IsoPacketSpec, UrbCompletion } from "../../../src/frontend/types.js";
import { GuestUsbDriver } from "../../../src/guest/guest-driver.js";
import type { DevAddr, EndpointNum, PortNum } from "../../../src/urb/types.js";
import { exitWithVerdict } from "../../support/verdict.js";
import { ISO_PACKET, ISO_PID, ISO_VID, isoOutByte } from "../iso-fixture.js";

const P = 1 as PortNum;
const A = 5 as DevAddr;
const events: string[] = [];

type Guest = GuestUsbDriver;

function isoUrb(guest: Guest, endpoint: number, directionIn: boolean, packets: IsoPacketSpec[]) {
  const size = packets.reduce((m, p) => Math.max(m, p.offset + p.length), 0);
  const range = guest.buffers.allocate(size);
  const urb = {
    type: "isochronous",
    port: P,
    device: A,
    endpoint: endpoint as EndpointNum,
    directionIn,
    buffer: [range],
    interval: 1,
    iso: { asap: true, packets },
  } as const;
  return { range, urb };
}

/** `n` packets of `length`, back to back, or `stride` apart (the gaps force the usbfs bounce buffer). */
function packets(n: number, length: number, stride = length): IsoPacketSpec[] {
  return Array.from({ length: n }, (_, i) => ({ offset: i * stride, length }));
}

function summary(
  guest: Guest,
  range: ReturnType<typeof isoUrb>["range"],
  c: UrbCompletion,
  specs: IsoPacketSpec[],
) {
  const bytes = guest.bytes(range);
  return {
    status: c.status,
    actualLength: c.actualLength,
    errorCount: c.errorCount,
    startFrame: c.startFrame,
    packets: (c.isoPackets ?? []).map((p, i) => ({
      status: p.status,
      actualLength: p.actualLength,
      hex: Buffer.from(bytes.subarray(specs[i]!.offset, specs[i]!.offset + p.actualLength)).toString("hex"),
      // The byte after the packet's data (inside the packet's slot, or in a gap): must stay untouched.
      after:
        specs[i]!.offset + p.actualLength < bytes.length ? bytes[specs[i]!.offset + p.actualLength] : null,
    })),
  };
}

async function selectAlternate(guest: Guest, alternate: number): Promise<void> {
  await guest.hcd.resetPort(P);
  await guest.control(P, 0 as DevAddr, { bmRequestType: 0, bRequest: 5, wValue: A, wIndex: 0, wLength: 0 });
  await guest.control(P, A, { bmRequestType: 0, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 });
  await guest.control(P, A, { bmRequestType: 1, bRequest: 11, wValue: alternate, wIndex: 1, wLength: 0 });
}

const SCENARIOS: Record<string, (conn: Connection, guest: Guest) => Promise<Record<string, unknown>>> = {
  /** SET_INTERFACE(1, 1), 8 iso INs (4 in flight at a time, the second 4 with gaps), 3 iso OUTs, one of 200 packets. */
  async stream(_conn, guest) {
    await selectAlternate(guest, 1);
    const ins: Record<string, unknown>[] = [];
    for (const stride of [ISO_PACKET, ISO_PACKET + 64]) {
      const specs = packets(8, ISO_PACKET, stride);
      const urbs = [0, 1, 2, 3].map(() => {
        const u = isoUrb(guest, 2, true, specs);
        guest.bytes(u.range).fill(0xee);
        return u;
      });
      const done = await Promise.all(urbs.map((u) => guest.hcd.submit(u.urb)));
      for (const [i, c] of done.entries()) ins.push(summary(guest, urbs[i]!.range, c, specs));
      for (const u of urbs) guest.buffers.release(u.range);
    }
    const outs: Record<string, unknown>[] = [];
    const lengths = [ISO_PACKET, 100, 1, ISO_PACKET, 0, 64];
    const outSpecs: IsoPacketSpec[] = [];
    let at = 0;
    for (const length of lengths) {
      outSpecs.push({ offset: at, length });
      at += length;
    }
    const outUrbs = [0, 1, 2].map((seq) => {
      const u = isoUrb(guest, 3, false, outSpecs);
      const bytes = guest.bytes(u.range);
      for (const [i, p] of outSpecs.entries()) {
        for (let j = 0; j < p.length; j++) bytes[p.offset + j] = isoOutByte(seq, i, j);
      }
      return u;
    });
    const outDone = await Promise.all(outUrbs.map((u) => guest.hcd.submit(u.urb)));
    for (const c of outDone) {
      outs.push({
        status: c.status,
        actualLength: c.actualLength,
        packets: (c.isoPackets ?? []).map((p) => [p.status, p.actualLength]),
      });
    }
    // One URB of 200 packets: usbfs takes at most 128 per URB, so the device sees two (sequence 3 and 4).
    const many = isoUrb(guest, 3, false, packets(200, 8));
    const manyBytes = guest.bytes(many.range);
    for (let k = 0; k < 200; k++) {
      const seq = 3 + Math.floor(k / USBFS_MAX_PACKETS_PER_URB);
      for (let j = 0; j < 8; j++) manyBytes[k * 8 + j] = isoOutByte(seq, k % USBFS_MAX_PACKETS_PER_URB, j);
    }
    const m = await guest.hcd.submit(many.urb);
    const split = {
      status: m.status,
      actualLength: m.actualLength,
      packets: (m.isoPackets ?? []).filter((p) => p.status === 0 && p.actualLength === 8).length,
    };
    return { ins, outs, split };
  },

  /** An iso IN the device never answers, unlinked: DISCARDURB, one completion with -ECONNRESET; then CLEAR_HALT. */
  async unlink(_conn, guest) {
    await selectAlternate(guest, 1);
    const u = isoUrb(guest, 4, true, packets(4, ISO_PACKET));
    const pending = guest.hcd.submit(u.urb);
    const unlinkStatus = await guest.hcd.unlink(u.urb);
    const c = await pending;
    // The stream goes on after the unlink: a full batch on 0x82 completes.
    const specs = packets(2, ISO_PACKET);
    const after = await Promise.all(
      [0, 1, 2, 3].map(() => guest.hcd.submit(isoUrb(guest, 2, true, specs).urb)),
    );
    // CLEAR_FEATURE(ENDPOINT_HALT) on an endpoint of the usbfs-owned interface goes out on the usbfs fd.
    await guest.control(P, A, { bmRequestType: 2, bRequest: 1, wValue: 0, wIndex: 0x82, wLength: 0 });
    return {
      unlinkStatus,
      status: c.status,
      packets: c.isoPackets?.length ?? null,
      after: after.map((a) => a.status),
    };
  },

  /** Iso INs in flight on 0x82 and 0x84 when the device is unplugged: -ENODEV, the port disconnects. */
  async unplug(conn, guest) {
    const failed = new Promise<string>((resolve) =>
      conn.once("port-failed", (_port: number, reason: string, gone: boolean) =>
        resolve(gone ? reason : `not marked gone: ${reason}`),
      ),
    );
    await selectAlternate(guest, 1);
    const lines = createInterface({ input: process.stdin });
    const held = new Promise<void>((resolve) =>
      lines.on("line", (l) => {
        if (l === "INFLIGHT 4") resolve();
      }),
    );
    const specs = packets(3, ISO_PACKET);
    const pending = [2, 2, 4, 4].map((ep) => guest.hcd.submit(isoUrb(guest, ep, true, specs).urb));
    await held;
    lines.close();
    process.stdout.write("STAGE unplug\n");
    const statuses = (await Promise.all(pending)).map((c) => c.status);
    const reason = await failed;
    const started = Date.now();
    while (guest.hcd.portStatus(P).connected && Date.now() - started < 10_000)
      await new Promise((r) => setTimeout(r, 5));
    return { statuses, reason, connected: guest.hcd.portStatus(P).connected };
  },
};

async function main(name: string): Promise<Record<string, unknown>> {
  const scenario = SCENARIOS[name];
  if (scenario === undefined) throw new Error(`no scenario ${name}`);
  const conn = await Connection.create({ ports: 2, memory: 2048 });
  conn.on("port-failed", (port: number, why: string) => events.push(`port-failed ${port} ${why}`));
  try {
    const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
    await conn.attach(1, { kind: "host", vendorId: ISO_VID, productId: ISO_PID });
    return await scenario(conn, guest);
  } finally {
    await conn.close();
  }
}

const watchdog = setTimeout(() => {
  exitWithVerdict({ ok: false, error: "timed out in the child", events }, 2);
}, 30_000);
main(process.argv[2] ?? "").then(
  (v) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: true, ...v, events }, 0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: false, error: String(err), events }, 1);
  },
);
