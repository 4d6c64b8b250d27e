/**
 * Losing the backend, by the control plane's word or by a protocol fault the
 * controller finds itself (a bogus response id, a grant never unmapped, an
 * impossible response producer index, a fault the backend latched, an
 * impossible conn event): every outstanding URB completes with -ESHUTDOWN
 * exactly once, every grant comes back, ports disconnect; then
 * backendReady() brings the same controller back to work with a new backend.
 */
import { describe, expect, it } from "vitest";
import { ControllerStateError, UNLINK_RESERVED_SLOTS } from "../../src/frontend/controller.js";
import type { BackendLossReason, UrbCompletion } from "../../src/frontend/types.js";
import { RingFault } from "../../src/rings/faults.js";
import { HEADER_BYTES } from "../../src/rings/layout.js";
import { ESHUTDOWN, OK } from "../../src/urb/status.js";
import { FakeBackend, type FakeMode } from "./fake-backend.js";
import { bulk, enumerate, guest, pump, type Rig, rig, seg } from "./support.js";

/** Replace the rig's backend with a fresh one on the same handles (the restarted worker). */
function newBackend(r: Rig, mode: FakeMode = "normal"): Rig {
  return { ...r, fake: new FakeBackend(r.handles, mode) };
}

async function worksAgain(r: Rig): Promise<void> {
  await enumerate(r, 1, 6);
  guest(r, 0, 4).set([9, 8, 7, 6]);
  const sent = r.hc.submit(bulk(1, 6, 1, false, [seg(0, 4)]));
  const got = r.hc.submit(bulk(1, 6, 1, true, [seg(8192, 4)]));
  await pump(r);
  expect((await sent).status).toBe(OK);
  expect(await got).toMatchObject({ status: OK, actualLength: 4 });
  expect([...guest(r, 8192, 4)]).toEqual([9, 8, 7, 6]);
}

describe("backend lost", () => {
  it("completes in-flight, pending and unlinking URBs with -ESHUTDOWN once, revokes all grants, disconnects ports", async () => {
    const r = rig();
    await enumerate(r, 1, 2);
    await enumerate(r, 2, 3);
    r.fake.mode = "silent"; // from now on the backend never answers
    const calls: UrbCompletion[][] = [];
    const urbs = Array.from({ length: 300 }, (_, i) =>
      bulk(1 + (i % 2), 2 + (i % 2), 1, i % 3 === 0, [seg(i * 100, 100)]),
    );
    urbs.forEach((urb, i) => {
      calls.push([]);
      r.hc.submitWithCallback(urb, (c) => calls[i]!.push(c));
    });
    await pump(r);
    expect(r.hc.stats()).toMatchObject({
      inFlight: 256 - UNLINK_RESERVED_SLOTS,
      pending: 44 + UNLINK_RESERVED_SLOTS,
    });
    // An unlink of a URB on the ring takes a slot kept for unlinks (the backend is silent: it stays in flight).
    const unlinked = r.hc.unlink(urbs[0]!);
    expect(r.hc.grants.freeCount).toBeLessThan(r.hc.grants.entries);
    const lost: BackendLossReason[] = [];
    const ports: number[] = [];
    r.hc.on("backendLost", (reason) => lost.push(reason));
    r.hc.on("portChange", (s) => ports.push(s.port));

    r.hc.backendLost("backend worker exited (code 1)");
    r.hc.backendLost("again"); // idempotent
    await pump(r);
    expect(calls.every((c) => c.length === 1 && c[0]!.status === ESHUTDOWN)).toBe(true);
    expect(await unlinked).toBe(ESHUTDOWN);
    expect(lost).toEqual([{ cause: "control-plane", message: "backend worker exited (code 1)" }]);
    expect(ports.sort()).toEqual([1, 2]);
    expect(r.hc.portStatus(1)).toMatchObject({ connected: false, enabled: false, address: 0 });
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);
    expect(r.hc.stats()).toMatchObject({ inFlight: 0, pending: 0, backendLosses: 1 });
    expect(r.hc.stats().errors.ESHUTDOWN).toBe(300);

    // While there is no backend, new URBs fail at once.
    expect((await r.hc.submit(bulk(1, 2, 1, false, [seg(0, 8)]))).status).toBe(ESHUTDOWN);
    expect(() => {
      r.hc.backendLost();
      r.hc.backendReady();
      r.hc.backendReady();
    }).toThrow(ControllerStateError);
  });

  it("works again with the same controller once a new backend is ready", async () => {
    let r = rig();
    await enumerate(r, 1, 2);
    r.hc.backendLost("restart");
    r = newBackend(r); // attaches to the rings backendLost re-initialised
    let ready = 0;
    r.hc.on("backendReady", () => ready++);
    r.hc.backendReady();
    expect(ready).toBe(1);
    await worksAgain(r);
  });

  it.each<[string, FakeMode, number]>([
    ["a response id it never sent", "bogus-id", RingFault.RESPONSE_ID_NOT_IN_FLIGHT],
    ["a grant the backend never unmapped", "keep-grants", RingFault.PEER_PROTOCOL_VIOLATION],
    ["an impossible response producer index", "impossible-rsp-prod", RingFault.RESPONSE_PROD_OVERFLOW],
  ])("treats %s as a lost backend and recovers", async (_what, mode, fault) => {
    let r = rig();
    await enumerate(r, 1, 2);
    r.fake.mode = mode;
    const faults: BackendLossReason[] = [];
    r.hc.on("fault", (reason) => faults.push(reason));
    const calls: UrbCompletion[] = [];
    r.hc.submitWithCallback(bulk(1, 2, 1, false, [seg(0, 64)]), (c) => calls.push(c));
    r.hc.submitWithCallback(bulk(1, 2, 1, true, [seg(4096, 64)]), (c) => calls.push(c));
    await pump(r);
    expect(faults).toHaveLength(1);
    expect(faults[0]).toMatchObject({ cause: "ring-fault", ring: "urb", fault });
    expect(calls.map((c) => c.status)).toEqual([ESHUTDOWN, ESHUTDOWN]);
    expect(r.hc.isConnected).toBe(false);
    expect(r.hc.grants.freeCount).toBe(r.hc.grants.entries);

    // The control plane replaces the backend; the controller re-initialises the rings in backendReady.
    r.hc.backendReady();
    r = newBackend(r);
    await worksAgain(r);
  });

  it("treats a fault the backend latched in the shared ring as a lost backend", async () => {
    const r = rig();
    await enumerate(r, 1, 2);
    const faults: BackendLossReason[] = [];
    r.hc.on("fault", (reason) => faults.push(reason));
    r.fake.ring.latch(RingFault.REQUEST_PROD_OVERFLOW);
    r.hc.poll();
    expect(faults).toEqual([
      expect.objectContaining({ ring: "urb", fault: RingFault.REQUEST_PROD_OVERFLOW }),
    ]);
    expect(r.hc.isConnected).toBe(false);
  });

  it("treats an impossible conn event as a lost backend", async () => {
    const r = rig();
    const faults: BackendLossReason[] = [];
    r.hc.on("fault", (reason) => faults.push(reason));
    r.fake.conn.postEvent({ port: 1, speed: 3 });
    // A hostile backend rewrites the port to one the hub does not have.
    new Uint8Array(r.handles.connRing, HEADER_BYTES, 8)[4] = 30;
    r.fake.conn.push();
    r.hc.poll();
    expect(faults).toEqual([
      expect.objectContaining({ ring: "conn", fault: RingFault.PEER_PROTOCOL_VIOLATION }),
    ]);
    expect(r.hc.isConnected).toBe(false);
  });

  it("keeps going when a completion callback throws, reporting it", async () => {
    const r = rig();
    await enumerate(r, 1, 2);
    const errors: unknown[] = [];
    r.hc.on("callbackError", (e) => errors.push(e));
    r.hc.submitWithCallback(bulk(1, 2, 1, false, [seg(0, 8)]), () => {
      throw new Error("guest driver bug");
    });
    const next = r.hc.submit(bulk(1, 2, 1, false, [seg(0, 8)]));
    await pump(r);
    expect((await next).status).toBe(OK);
    expect(errors).toEqual([new Error("guest driver bug")]);
    expect(r.hc.isConnected).toBe(true);
  });
});
