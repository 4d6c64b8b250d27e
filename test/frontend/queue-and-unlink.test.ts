/**
 * The pending FIFO (more URBs than ring slots, scratch frames running out)
 * and unlink: of a URB in flight (exactly one completion, -ECONNRESET, then
 * the unlink answered 0), of one still pending (never reaches the ring), of
 * one the controller does not know (-ENOENT).
 */
import { describe, expect, it } from "vitest";
import { UNLINK_RESERVED_SLOTS } from "../../src/frontend/controller.js";
import type { Urb, UrbCompletion } from "../../src/frontend/types.js";
import { RingFault } from "../../src/rings/faults.js";
import { ECONNRESET, ENOENT, OK } from "../../src/urb/status.js";
import type { UrbId } from "../../src/urb/types.js";
import { addr, port } from "../support/brands.js";
import { bulk, enumerate, ep, FRAME, pump, rig, seg } from "./support.js";

describe("pending queue", () => {
  it("queues URBs beyond the 256 ring slots and completes all 600 in order without over-filling the ring", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    const order: number[] = [];
    const completions: UrbCompletion[] = [];
    for (let i = 0; i < 600; i++) {
      r.hc.submitWithCallback(bulk(1, 1, 1, false, [seg((i % 1000) * 64, 64)]), (c) => {
        order.push(i);
        completions.push(c);
      });
    }
    const dataSlots = 256 - UNLINK_RESERVED_SLOTS; // the rest is kept for unlinks
    expect(r.hc.stats()).toMatchObject({ pending: 600 - dataSlots, inFlight: dataSlots });
    await pump(r);
    expect(completions).toHaveLength(600);
    expect(completions.every((c) => c.status === OK && c.actualLength === 64)).toBe(true);
    expect(order).toEqual(Array.from({ length: 600 }, (_, i) => i));
    expect(r.fake.maxUnconsumed).toBeLessThanOrEqual(256);
    expect(r.fake.ring.fault).toBe(RingFault.NONE);
    expect(r.hc.stats()).toMatchObject({ pending: 0, inFlight: 0 });
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
  });

  it("waits for scratch frames when iso descriptor arrays use them all up", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    // 16 scratch frames; 1024 packets need 4 frames each: only 4 such URBs fit at once.
    const iso = (i: number): Urb => ({
      type: "isochronous",
      port: port(1),
      device: addr(1),
      endpoint: ep(2),
      directionIn: false,
      interval: 1,
      iso: { asap: true, packets: Array.from({ length: 1024 }, (_, k) => ({ offset: k, length: 1 })) },
      buffer: [seg((100 + i) * FRAME, 1024)],
    });
    const done = Array.from({ length: 6 }, (_, i) => r.hc.submit(iso(i)));
    expect(r.hc.stats()).toMatchObject({ inFlight: 4, pending: 2 });
    await pump(r);
    const results = await Promise.all(done);
    expect(results.map((c) => c.status)).toEqual([OK, OK, OK, OK, OK, OK]);
    expect(results.every((c) => c.isoPackets?.length === 1024)).toBe(true);
  });
});

describe("unlink", () => {
  it("cancels a URB in flight: it completes once with -ECONNRESET, then the unlink is answered 0", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    const events: string[] = [];
    const urb = bulk(1, 1, 1, true, [seg(0, 64)]); // nothing queued: the fake holds it
    r.hc.submitWithCallback(urb, (c) => events.push(`urb ${c.status}`));
    await pump(r);
    expect(r.fake.heldCount).toBe(1);
    const targetId = r.hc.idOf(urb);
    const unlinked = r.hc.unlink(urb).then((s) => events.push(`unlink ${s}`));
    await pump(r);
    await unlinked;
    expect(events).toEqual([`urb ${ECONNRESET}`, `unlink ${OK}`]);
    const sent = r.fake.requests.at(-1);
    expect(sent).toMatchObject({ kind: "unlink", port: 1, device: 1, endpoint: 1, unlinkId: targetId });
    expect(r.hc.stats().unlinksSent).toBe(1);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
  });

  it("takes a URB out of the pending queue without touching the ring", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    // Fill the ring with held INs so the next URB waits.
    for (let i = 0; i < 256 - UNLINK_RESERVED_SLOTS; i++)
      r.hc.submitWithCallback(bulk(1, 1, 1, true, [seg(i * 64, 64)]), () => {});
    const waiting = bulk(1, 1, 2, false, [seg(0, 8)]);
    const calls: UrbCompletion[] = [];
    r.hc.submitWithCallback(waiting, (c) => calls.push(c));
    expect(r.hc.stats().pending).toBe(1);
    const before = r.fake.requests.length;
    expect(await r.hc.unlink(waiting)).toBe(OK);
    expect(calls).toHaveLength(1);
    expect(calls[0]?.status).toBe(ECONNRESET);
    await pump(r);
    expect(calls).toHaveLength(1);
    expect(r.fake.requests.slice(before).some((q) => q.kind === "unlink" || q.endpoint === 2)).toBe(false);
    expect(r.hc.stats().pending).toBe(0);
  });

  it("answers -ENOENT for a URB that is not outstanding, without sending anything", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    const urb = bulk(1, 1, 1, false, [seg(0, 8)]);
    await Promise.all([r.hc.submit(urb), pump(r)]);
    const before = r.fake.requests.length;
    expect(await r.hc.unlink(urb)).toBe(ENOENT);
    expect(await r.hc.unlink(200 as UrbId)).toBe(ENOENT);
    await pump(r);
    expect(r.fake.requests.length).toBe(before);
  });

  it("passes on the backend's -ENOENT when the target finished before the unlink reached it", async () => {
    const r = rig();
    await enumerate(r, 1, 1);
    const urb = bulk(1, 1, 1, true, [seg(0, 64)]);
    const done = r.hc.submit(urb);
    await pump(r);
    const id = r.hc.idOf(urb)!;
    // The unlink is on the ring; before the backend reads it, the target finishes with real data.
    const unlinked = r.hc.unlink(urb);
    r.fake.answerHeld(id, OK, 10);
    await pump(r);
    expect(await done).toMatchObject({ status: OK, actualLength: 10 });
    expect(await unlinked).toBe(ENOENT);
  });
});
