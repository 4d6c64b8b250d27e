/**
 * Crashes for real, mid-traffic: a port that dies from an exception nothing catches (or process.exit on its
 * worker), and a backend whose service loop throws (or whose worker calls process.exit) — no polite
 * restartBackend(), no close(). In each placement (the backend on a worker of its own or on the frontend's
 * thread; the devices on the backend's thread or on port workers): every URB in flight completes exactly
 * once with an error, nothing leaks, the engine recovers on its own and the next URBs succeed.
 */
import { afterEach, describe, expect, it } from "vitest";
import { URB_RING_GEOMETRY } from "../../src/connection/handles.js";
import type { Urb } from "../../src/frontend/types.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import { kReqProd } from "../../src/rings/layout.js";
import { ENODEV, ESHUTDOWN, OK } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { type Rig, rig } from "../engine/helpers.js";
import { addr, port } from "../support/brands.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { expectNoLeaks, Tracked } from "./support.js";

let r: Rig | null = null;
afterEach(async () => {
  await r?.close();
  r = null;
});

const ep = (n: number) => n as EndpointNum;

async function echo(p: number, a: number, length: number, seed: number): Promise<void> {
  const data = pattern(length, seed);
  await r!.guest.transferOut(port(p), addr(a), 1, data);
  expect(Buffer.compare(await r!.guest.transferIn(port(p), addr(a), 1, length), data)).toBe(0);
}

function urb(p: number, a: number, kind: "bulk-in" | "bulk-out" | "interrupt-in", length: number): Urb {
  const range = r!.guest.buffers.allocate(length);
  const at = { port: port(p), device: addr(a), buffer: [range] };
  if (kind === "interrupt-in")
    return { ...at, type: "interrupt", endpoint: ep(2), directionIn: true, interval: 4 };
  return { ...at, type: "bulk", endpoint: ep(1), directionIn: kind === "bulk-in" };
}

function release(urbs: readonly Tracked[]): void {
  for (const t of urbs) for (const b of t.urb.buffer ?? []) r!.guest.buffers.release(b);
}

/**
 * Traffic on port `p` until it fails: four interrupt IN pollers (each keeps one URB in flight, re-submitted
 * as it completes) and a loop of verified echoes (bulk OUT, then bulk IN of the same bytes). Every URB it
 * submitted is in `all`; `ended` resolves once each loop has seen its first failure.
 */
function traffic(p: number, a: number): { all: Tracked[]; echoes: () => number; ended: Promise<unknown> } {
  const all: Tracked[] = [];
  let echoes = 0;
  const track = (u: Urb): Tracked => {
    const t = new Tracked(r!.hcd, u);
    all.push(t);
    return t;
  };
  const pollers = Array.from({ length: 4 }, async () => {
    while ((await track(urb(p, a, "interrupt-in", 8)).done).status === OK);
  });
  const echoLoop = (async () => {
    for (let i = 1; ; i++) {
      const data = pattern(1024, i);
      const outUrb = urb(p, a, "bulk-out", 1024);
      r!.guest.bytes(outUrb.buffer![0]!).set(data); // before it is submitted
      if ((await track(outUrb).done).status !== OK) return;
      const back = track(urb(p, a, "bulk-in", 1024));
      const c = await back.done;
      if (c.status !== OK) return;
      expect(Buffer.compare(r!.guest.bytes(back.urb.buffer![0]!), data)).toBe(0);
      echoes++;
    }
  })();
  return { all, echoes: () => echoes, ended: Promise.all([...pollers, echoLoop]) };
}

describe.each(["worker", "shared"] as const)("crashes for real, backend thread %s", (backendThread) => {
  describe.each(["backend", "worker"] as const)("devices on the %s thread", (placement) => {
    const loopback = { kind: "emulated", name: "loopback", placement } as const;
    const workers = (n: number) => (placement === "worker" ? n : 0);
    const crashes = placement === "worker" ? (["throw", "exit"] as const) : (["throw"] as const);

    it.each(crashes)(
      "a port that crashes (%s) mid-traffic fails its URBs once, the other port never notices, the port takes a device again",
      async (how) => {
        r = await rig({ backendThread });
        const { conn, hcd, guest } = r;
        await conn.attach(1, loopback);
        await conn.attach(2, loopback);
        await guest.enumerate(port(1), addr(2));
        await guest.enumerate(port(2), addr(2));
        const t = traffic(1, 2);
        await eventually(() => t.echoes() >= 3 && hcd.stats().inFlight >= 4, 10_000, "traffic on port 1");
        const failed = new Promise<string>((res) => conn.once("port-failed", (_p, reason) => res(reason)));
        await conn.crashPort(1, how);
        expect(await failed).toMatch(placement === "worker" ? /port worker/ : /port service threw/);
        await t.ended;
        for (const v of t.all) {
          const c = await v.done;
          expect(v.completions).toHaveLength(1);
          if (c.status !== OK) expect([ESHUTDOWN, ENODEV]).toContain(c.status);
        }
        release(t.all);
        await eventually(() => !hcd.portStatus(port(1)).connected, 5000, "port 1 disconnect");
        await echo(2, 2, 2048, 7);
        await expectNoLeaks(conn, hcd, workers(1));
        await conn.attach(1, loopback);
        await guest.enumerate(port(1), addr(3));
        await echo(1, 3, 4096, 8);
        await expectNoLeaks(conn, hcd, workers(2));
      },
    );

    const backendCrashes = backendThread === "worker" ? (["throw", "exit"] as const) : (["throw"] as const);
    it.each(backendCrashes)(
      "a backend that crashes (%s) mid-traffic ends every URB once (-ESHUTDOWN); the control plane starts a new one and re-attaches",
      async (how) => {
        r = await rig({ backendThread });
        const { conn, hcd, guest } = r;
        await conn.attach(1, loopback);
        await conn.attach(2, loopback);
        await guest.enumerate(port(1), addr(2));
        await guest.enumerate(port(2), addr(2));
        const t1 = traffic(1, 2);
        const t2 = traffic(2, 2);
        await eventually(
          () => t1.echoes() >= 3 && t2.echoes() >= 3 && hcd.stats().inFlight >= 8,
          10_000,
          "traffic on both ports",
        );
        const lost = new Promise<string>((res) => conn.once("backend-lost", res));
        const ready = new Promise<void>((res) => conn.once("backend-ready", res));
        await conn.crashBackend(how);
        expect(await lost).toMatch(how === "exit" ? /exited \(code 70\)/ : /backend crashed/);
        await ready;
        await Promise.all([t1.ended, t2.ended]);
        for (const v of [...t1.all, ...t2.all]) {
          const c = await v.done;
          expect(v.completions).toHaveLength(1);
          // A backend on the frontend's thread closes its ports before it goes: their URBs may end -ENODEV.
          if (c.status !== OK)
            expect(backendThread === "worker" ? [ESHUTDOWN] : [ESHUTDOWN, ENODEV]).toContain(c.status);
        }
        release([...t1.all, ...t2.all]);
        expect(hcd.grants.entries - hcd.grants.freeCount).toBe(0);
        // Re-attached by the control plane itself: the guest sees both ports connect again.
        await eventually(
          () => hcd.portStatus(port(1)).connected && hcd.portStatus(port(2)).connected,
          10_000,
          "both devices back",
        );
        await guest.enumerate(port(1), addr(4));
        await guest.enumerate(port(2), addr(5));
        await echo(1, 4, 4096, 9);
        await echo(2, 5, 3000, 10);
        await expectNoLeaks(conn, hcd, workers(2));
      },
    );
  });

  it("refuses a crash the placement cannot have, saying why", async () => {
    r = await rig({ backendThread });
    await r.conn.attach(1, { kind: "emulated", name: "loopback" });
    await expect(r.conn.crashPort(1, "exit")).rejects.toThrow(/runs on the backend thread/);
    if (backendThread === "shared") {
      await expect(r.conn.crashBackend("exit")).rejects.toThrow(/would end the process/);
    }
  });
});

describe.each(["worker", "shared"] as const)(
  "an impossible ring index, backend thread %s",
  (backendThread) => {
    it("latches the fault, and the control plane recovers on its own: new backend, devices back, data moves", async () => {
      r = await rig({ backendThread });
      const { conn, hcd, guest } = r;
      await conn.attach(1, { kind: "emulated", name: "loopback" });
      await guest.enumerate(port(1), addr(2));
      await echo(1, 2, 1024, 1);
      const held = new Tracked(hcd, {
        type: "bulk",
        port: port(1),
        device: addr(2),
        endpoint: ep(1),
        directionIn: true,
        buffer: [guest.buffers.allocate(512)],
      });
      await eventually(() => hcd.stats().inFlight === 1, 5000, "one URB in flight");
      const lost = new Promise<string>((res) => conn.once("backend-lost", res));
      const ready = new Promise<void>((res) => conn.once("backend-ready", res));
      // A frontend gone wrong: a producer index a whole ring ahead of what it ever pushed.
      const words = new Int32Array(conn.handles.urbRing);
      Atomics.add(words, kReqProd, URB_RING_GEOMETRY.slots + 7);
      new Doorbell(conn.handles.backendBell).ring();
      expect(await lost).toMatch(/ring fault/);
      await ready;
      expect((await held.done).status).toBe(ESHUTDOWN);
      expect(held.completions).toHaveLength(1);
      release([held]);
      await eventually(() => hcd.portStatus(port(1)).connected, 10_000, "the device back");
      await guest.enumerate(port(1), addr(3));
      await echo(1, 3, 4096, 2);
      await expectNoLeaks(conn, hcd, 0);
    });
  },
);
