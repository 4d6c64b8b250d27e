/**
 * Submit and complete each transfer type through the fake backend: data lands
 * in guest memory for IN and is read from it for OUT, OUT buffers are granted
 * read-only, more than 8 segments go through an indirect page, iso packets
 * report per-packet results, and every grant is revoked at completion.
 */
import { describe, expect, it } from "vitest";
import { GrantFault } from "../../src/dma-map/grant-fault.js";
import type { Urb, UrbCompletion } from "../../src/frontend/types.js";
import { EINVAL, EMSGSIZE, ENODEV, EPIPE, EPROTO, OK } from "../../src/urb/status.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { addr, port } from "../support/brands.js";
import { DEVICE_DESCRIPTOR } from "./fake-backend.js";
import { bulk, enumerate, ep, FRAME, guest, pump, rig, seg } from "./support.js";

describe("VirtualHostController transfers", () => {
  it("runs a control IN GET_DESCRIPTOR and lands the descriptor in guest memory", async () => {
    const r = rig();
    await enumerate(r, 1, 5);
    const done = r.hc.submit({
      type: "control",
      port: port(1),
      device: addr(5),
      endpoint: ep(0),
      directionIn: true,
      setup: { bmRequestType: 0x80, bRequest: 6, wValue: 0x100, wIndex: 0, wLength: 64 },
      buffer: [seg(3 * FRAME + 100, 64)],
    });
    await pump(r);
    const c = await done;
    expect(c.status).toBe(OK);
    expect(c.actualLength).toBe(18);
    expect([...guest(r, 3 * FRAME + 100, 18)]).toEqual([...DEVICE_DESCRIPTOR]);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
  });

  it("publishes the URBs submitted inside batch() once, when the batch ends", async () => {
    const r = rig();
    await enumerate(r, 1, 4);
    const results: Promise<UrbCompletion>[] = [];
    let seenInside = -1;
    r.hc.batch(() => {
      for (let i = 0; i < 3; i++)
        results.push(r.hc.submit(bulk(1, 4, 1, false, [seg((30 + i) * FRAME, 64)])));
      seenInside = r.fake.ring.unconsumedRequests();
    });
    expect(seenInside).toBe(0); // committed to slots, not yet published to the backend
    expect(r.fake.ring.unconsumedRequests()).toBe(3);
    await pump(r);
    for (const c of await Promise.all(results)) expect(c).toMatchObject({ status: OK, actualLength: 64 });
  });

  it("sends bulk OUT data from guest memory with read-only grants and loops it back on bulk IN", async () => {
    const r = rig();
    await enumerate(r, 2, 9);
    const out = guest(r, 10 * FRAME + 4000, 300); // crosses a frame boundary: one grant of two frames
    out.forEach((_, i) => {
      out[i] = (i * 7) & 0xff;
    });
    const sent = r.hc.submit(bulk(2, 9, 1, false, [seg(10 * FRAME + 4000, 300)]));
    await pump(r);
    expect((await sent).actualLength).toBe(300);
    expect(r.fake.outWriteProbes).toEqual([GrantFault.READ_ONLY]);

    const got = r.hc.submit(bulk(2, 9, 1, true, [seg(20 * FRAME, 512)]));
    await pump(r);
    const c = await got;
    expect(c).toMatchObject({ status: OK, actualLength: 300 });
    expect([...guest(r, 20 * FRAME, 300)]).toEqual([...out]);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
  });

  it("describes a 20-segment buffer in an indirect page and moves every segment", async () => {
    const r = rig();
    await enumerate(r, 1, 3);
    // 20 scattered 100-byte pieces, every other frame.
    const pieces = Array.from({ length: 20 }, (_, i) => seg((40 + 2 * i) * FRAME + 17 * i, 100));
    pieces.forEach((s, i) => {
      guest(r, s.offset, s.length).fill(i + 1);
    });
    const sent = r.hc.submit(bulk(1, 3, 2, false, pieces));
    await pump(r);
    expect(await sent).toMatchObject({ status: OK, actualLength: 2000 });
    expect(r.fake.requests.at(-1)).toMatchObject({ kind: "bulk", buffer: { kind: "indirect", count: 20 } });
    expect(r.fake.outWriteProbes.at(-1)).toBe(GrantFault.READ_ONLY);

    const back = Array.from({ length: 20 }, (_, i) => seg((100 + 3 * i) * FRAME + 5, 100));
    const got = r.hc.submit(bulk(1, 3, 2, true, back));
    await pump(r);
    expect(await got).toMatchObject({ status: OK, actualLength: 2000 });
    back.forEach((s, i) => {
      expect(guest(r, s.offset, s.length).every((b) => b === i + 1)).toBe(true);
    });
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
  });

  it("runs interrupt OUT then IN with the interval on the wire", async () => {
    const r = rig();
    await enumerate(r, 3, 4);
    guest(r, 200 * FRAME, 8).set([1, 2, 3, 4, 5, 6, 7, 8]);
    const urb = (directionIn: boolean, at: number): Urb => ({
      type: "interrupt",
      port: port(3),
      device: addr(4),
      endpoint: ep(1),
      directionIn,
      interval: 8,
      buffer: [seg(at, 8)],
    });
    const sent = r.hc.submit(urb(false, 200 * FRAME));
    const got = r.hc.submit(urb(true, 201 * FRAME));
    await pump(r);
    expect((await sent).status).toBe(OK);
    expect(await got).toMatchObject({ status: OK, actualLength: 8 });
    expect([...guest(r, 201 * FRAME, 8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(
      r.fake.requests
        .filter((q) => q.kind === "interrupt")
        .map((q) => (q.kind === "interrupt" ? q.interval : 0)),
    ).toEqual([8, 8]);
  });

  it("reads iso per-packet results back from the writable descriptor grant", async () => {
    const r = rig();
    await enumerate(r, 1, 2);
    const packets = Array.from({ length: 8 }, (_, i) => ({ offset: i * 192, length: 192 }));
    const done = r.hc.submit({
      type: "isochronous",
      port: port(1),
      device: addr(2),
      endpoint: ep(3),
      directionIn: true,
      interval: 1,
      iso: { asap: true, packets },
      buffer: [seg(300 * FRAME, 8 * 192)],
    });
    await pump(r);
    const c = await done;
    expect(c.status).toBe(OK);
    expect(c.startFrame).toBe(77);
    expect(c.errorCount).toBe(2);
    expect(c.isoPackets).toEqual(
      packets.map((_, i) => ({ status: i % 4 === 3 ? EPROTO : OK, actualLength: 192 - (i % 3) })),
    );
    expect(c.actualLength).toBe(packets.reduce((sum, _, i) => sum + 192 - (i % 3), 0));
    expect(guest(r, 300 * FRAME + 192 * 5, 190).every((b) => b === 6)).toBe(true);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
  });

  it("tracks SET_ADDRESS so the next URB carries the new address", async () => {
    const r = rig();
    await enumerate(r, 4, 42);
    expect(r.hc.portStatus(4).address).toBe(42);
    expect(r.fake.devices.get(4)?.address).toBe(42);
  });

  it("gets -ENODEV from the backend for a port with no device and -EPIPE for an unknown request", async () => {
    const r = rig();
    const empty = r.hc.submit(bulk(2, 0, 1, false, [seg(0, 16)]));
    await enumerate(r, 1, 1);
    const stall = r.hc.submit({
      type: "control",
      port: port(1),
      device: addr(1),
      endpoint: ep(0),
      directionIn: false,
      setup: { bmRequestType: 0x21, bRequest: 0x99, wValue: 0, wIndex: 0, wLength: 0 },
    });
    await pump(r);
    expect((await empty).status).toBe(ENODEV);
    expect((await stall).status).toBe(EPIPE);
    expect(r.hc.stats().errors).toMatchObject({ ENODEV: 1, EPIPE: 1 });
  });

  it("clamps an actual length the backend overstates to the buffer length", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    const done = r.hc.submit(bulk(1, 1, 1, true, [seg(0, 16)]));
    await pump(r);
    // The IN is held (nothing queued); answer it by hand with a lie.
    const held = r.fake.requests.at(-1)!;
    r.fake.answerHeld(held.id, OK, 1_000_000);
    r.hc.poll();
    expect((await done).actualLength).toBe(16);
  });

  it.each<[string, Urb, number]>([
    ["a port outside the hub", bulk(9, 0, 1, false, [seg(0, 8)]), EINVAL],
    ["bulk on endpoint 0", bulk(1, 0, 0, false, [seg(0, 8)]), EINVAL],
    ["a zero-length segment", bulk(1, 0, 1, false, [seg(0, 0)]), EINVAL],
    ["a buffer outside guest memory", bulk(1, 0, 1, false, [seg(5000 * FRAME, 8)]), EINVAL],
    ["a buffer in the scratch frames", bulk(1, 0, 1, false, [seg(2040 * FRAME, 8)]), EINVAL],
    [
      "257 segments",
      bulk(
        1,
        0,
        1,
        false,
        Array.from({ length: 257 }, (_, i) => seg(i * 16, 16)),
      ),
      EMSGSIZE,
    ],
    ["more than 4 MiB", bulk(1, 0, 1, false, [seg(0, 4 * 1024 * 1024), seg(5 * 1024 * 1024, 1)]), EMSGSIZE],
    [
      "a control IN buffer longer than 0xffff bytes (no data stage is)",
      {
        type: "control",
        port: port(1),
        device: addr(0),
        endpoint: ep(0),
        directionIn: true,
        buffer: [seg(0, 0x10000)],
        setup: { bmRequestType: 0x80, bRequest: 6, wValue: 0x0100, wIndex: 0, wLength: 18 },
      },
      EINVAL,
    ],
  ])("refuses %s before it reaches the ring", async (_what, urb, status) => {
    const r = rig();
    let completions: UrbCompletion[] = [];
    r.hc.submitWithCallback(urb, (c) => completions.push(c));
    expect(completions).toEqual([]); // never called back synchronously
    await pump(r);
    expect(completions).toHaveLength(1);
    expect(completions[0]).toMatchObject({ status });
    expect(completions[0]?.detail).toEqual(expect.any(String));
    expect(r.fake.requests).toHaveLength(0);
    completions = [];
  });

  it("refuses a second submit of a URB object that is still outstanding", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    const urb = bulk(1, 1, 1, true, [seg(0, 16)]); // held by the fake: stays outstanding
    const first = r.hc.submit(urb);
    const second = await r.hc.submit(urb);
    expect(second.status).toBe(EINVAL);
    r.fake.unplug(1);
    await pump(r);
    expect((await first).status).toBe(ENODEV);
  });

  it("counts submissions, completions and bytes", async () => {
    const r = rig();
    await enumerate(r, 1, 1, UsbSpeed.FULL);
    await Promise.all([r.hc.submit(bulk(1, 1, 1, false, [seg(0, 100)])), pump(r)]);
    const s = r.hc.stats();
    // reset + SET_ADDRESS + the bulk OUT
    expect(s).toMatchObject({ submitted: 3, completed: 3, pending: 0, inFlight: 0, bytes: 100 });
  });
});
