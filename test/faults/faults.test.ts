/**
 * Fault injection, one test per fault: each fault is played out with URBs in flight, every URB must
 * complete exactly once with the statuses the fault allows, nothing may leak (grants the frontend holds,
 * URB ids in flight on either side, URBs in the pending queue, port worker threads), and the port must
 * work again afterwards. Then the races (unlink racing completion, hotplug under traffic) and the hung
 * port worker. This is the one fault suite: test/engine/faults-and-races.test.ts was merged into it
 * (its port-crash and backend-restart cases into the ones here, which now also check what they checked).
 * Nothing here sleeps to synchronise: each step waits for the state it needs (eventually, an event, a
 * round trip through the same rings); the one timed hold is the ring-full case's premise.
 */
import { afterEach, describe, expect, it } from "vitest";
import { UNLINK_RESERVED_SLOTS } from "../../src/frontend/controller.js";
import type { Urb, UrbCompletion } from "../../src/frontend/types.js";
import { ECONNRESET, ENODEV, ENOENT, ESHUTDOWN, OK } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { type Rig, rig } from "../engine/helpers.js";
import { addr, port } from "../support/brands.js";
import { pattern } from "../support/data.js";
import { eventually, holdFor } from "../support/eventually.js";
import { bulkIn, bulkOut, enumerate, startServer, type TestServer } from "../usbip/helpers.js";
import { expectNoLeaks, Tracked } from "./support.js";

let r: Rig | null = null;
let server: TestServer | null = null;
afterEach(async () => {
  await r?.close();
  r = null;
  await server?.close();
  server = null;
});

const ep = (n: number) => n as EndpointNum;

async function echo(p: number, a: number, length = 4096, seed = 1): Promise<void> {
  const data = pattern(length, seed);
  await r!.guest.transferOut(port(p), addr(a), 1, data);
  expect(Buffer.compare(await r!.guest.transferIn(port(p), addr(a), 1, length), data)).toBe(0);
}

function bulkInUrb(p: number, a: number, length: number): Urb {
  return {
    type: "bulk",
    port: port(p),
    device: addr(a),
    endpoint: ep(1),
    directionIn: true,
    buffer: [r!.guest.buffers.allocate(length)],
  };
}

function interruptInUrb(p: number, a: number, endpoint: number, length: number): Urb {
  return {
    type: "interrupt",
    port: port(p),
    device: addr(a),
    endpoint: ep(endpoint),
    directionIn: true,
    interval: 4,
    buffer: [r!.guest.buffers.allocate(length)],
  };
}

function release(urbs: readonly Tracked[]): void {
  for (const t of urbs) for (const b of t.urb.buffer ?? []) r!.guest.buffers.release(b);
}

// Every fault on both placements: devices on the backend's thread (the default) and on port workers.
describe.each(["backend", "worker"] as const)("fault injection, devices on the %s thread", (placement) => {
  const emu = (name: "loopback" | "keyboard") => ({ kind: "emulated", name, placement }) as const;
  /** Port worker threads expected alive with `ports` devices attached. */
  const workers = (ports: number) => (placement === "worker" ? ports : 0);

  it("port worker killed mid-transfer: its URBs fail once (-ESHUTDOWN/-ENODEV), nothing leaks, the port comes back", async () => {
    r = await rig();
    const { conn, hcd, guest } = r;
    await conn.attach(1, emu("loopback"));
    await conn.attach(2, emu("loopback"));
    await guest.enumerate(port(1), addr(2));
    await guest.enumerate(port(2), addr(2));
    const victims = Array.from({ length: 8 }, () => new Tracked(hcd, bulkInUrb(1, 2, 512)));
    victims.push(...Array.from({ length: 4 }, () => new Tracked(hcd, interruptInUrb(1, 2, 2, 8))));
    await eventually(() => hcd.stats().inFlight >= 8, 5000, "URBs on the ring");
    const failed = new Promise<number>((res) => conn.once("port-failed", (p: number) => res(p)));
    await conn.killPort(1);
    expect(await failed).toBe(1);
    for (const v of victims) {
      const c = await v.done;
      if (v.urb.type === "bulk") expect([ESHUTDOWN, ENODEV]).toContain(c.status);
      else expect([OK, ESHUTDOWN, ENODEV]).toContain(c.status); // an interrupt report may have beaten the kill
    }
    await eventually(() => !hcd.portStatus(port(1)).connected, 5000, "port 1 disconnect");
    for (const v of victims) expect(v.completions).toHaveLength(1);
    release(victims);
    await echo(2, 2, 2048, 5); // the other port never noticed
    const range = guest.buffers.allocate(64);
    const toEmptyPort = await hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: ep(1),
      directionIn: false,
      buffer: [range],
    });
    guest.buffers.release(range);
    expect(toEmptyPort.status).toBe(ENODEV);
    await expectNoLeaks(conn, hcd, workers(1));
    await conn.attach(1, emu("loopback"));
    await guest.enumerate(port(1), addr(3));
    await echo(1, 3, 4096, 6);
    await expectNoLeaks(conn, hcd, workers(2));
  });

  it("device unplugged (detached) mid-transfer: in-flight URBs end -ENODEV/-ESHUTDOWN exactly once, nothing leaks, re-plug works", async () => {
    r = await rig();
    const { conn, hcd, guest } = r;
    await conn.attach(1, emu("loopback"));
    await conn.attach(2, emu("loopback"));
    await guest.enumerate(port(1), addr(2));
    await guest.enumerate(port(2), addr(2));
    let running = true;
    let echoes = 0;
    const endings: number[] = [];
    const all: Tracked[] = [];
    // Four interrupt IN pollers keep URBs in flight; one loop echoes verified data.
    const pollers = Array.from({ length: 4 }, async () => {
      while (running) {
        const t = new Tracked(hcd, interruptInUrb(1, 2, 2, 8));
        all.push(t);
        const c = await t.done;
        release([t]);
        if (c.status !== OK) {
          endings.push(c.status);
          return;
        }
      }
    });
    const echoLoop = (async () => {
      for (let i = 1; running; i++) {
        const data = pattern(4096, i);
        const outRange = guest.buffers.allocate(4096);
        guest.bytes(outRange).set(data);
        const out = await hcd.submit({
          type: "bulk",
          port: port(1),
          device: addr(2),
          endpoint: ep(1),
          directionIn: false,
          buffer: [outRange],
        });
        guest.buffers.release(outRange);
        if (out.status !== OK) return endings.push(out.status);
        const inUrb = new Tracked(hcd, bulkInUrb(1, 2, 4096));
        all.push(inUrb);
        const c = await inUrb.done;
        if (c.status === OK) expect(Buffer.compare(guest.bytes(inUrb.urb.buffer![0]!), data)).toBe(0);
        release([inUrb]);
        if (c.status !== OK) return endings.push(c.status);
        echoes++;
      }
    })();
    // Unplug mid-traffic: once data has been echoed and the pollers have interrupt INs in flight.
    await eventually(() => echoes >= 3 && hcd.stats().inFlight >= 4, 10_000, "traffic on port 1");
    await conn.detach(1);
    running = false;
    await Promise.all([...pollers, echoLoop]);
    expect(endings.length).toBeGreaterThan(0);
    for (const s of endings) expect([ENODEV, ESHUTDOWN]).toContain(s);
    for (const t of all) expect(t.completions).toHaveLength(1);
    await eventually(() => !hcd.portStatus(port(1)).connected, 5000, "port 1 disconnect");
    await echo(2, 2, 1000, 3);
    await expectNoLeaks(conn, hcd, workers(1));
    await conn.attach(1, emu("loopback"));
    await guest.enumerate(port(1), addr(4));
    await echo(1, 4, 4096, 9);
    await expectNoLeaks(conn, hcd, workers(2));
  });

  it("backend worker restarted: everything in flight ends -ESHUTDOWN once, grants are all revoked, devices come back", async () => {
    r = await rig();
    const { conn, hcd, guest } = r;
    await conn.attach(1, emu("loopback"));
    await conn.attach(2, emu("keyboard"));
    await guest.enumerate(port(1), addr(2));
    await guest.enumerate(port(2), addr(3));
    const victims = [
      ...Array.from({ length: 6 }, () => new Tracked(hcd, bulkInUrb(1, 2, 1024))),
      ...Array.from({ length: 3 }, () => new Tracked(hcd, interruptInUrb(2, 3, 1, 8))),
    ];
    await eventually(() => hcd.stats().inFlight === 9, 5000, "9 URBs on the ring");
    await conn.restartBackend();
    expect(conn.frontend).toBe(hcd); // the same controller lives on, with a new backend
    for (const v of victims) {
      expect((await v.done).status).toBe(ESHUTDOWN);
      expect(v.completions).toHaveLength(1);
    }
    // backendLost force-revoked every grant at once: nothing waits for a dead backend's unmaps.
    expect(hcd.grants.entries - hcd.grants.freeCount).toBe(0);
    release(victims);
    await guest.enumerate(port(1), addr(5));
    await guest.enumerate(port(2), addr(6));
    await echo(1, 5, 3000, 4);
    await conn.deviceCommand(2, "pressKeys", 0, [0x04]);
    const report = await guest.transferIn(port(2), addr(6), 1, 8, "interrupt");
    expect(report[2]).toBe(0x04);
    await expectNoLeaks(conn, hcd, workers(2));
  });

  it("frontend revoking a busy grant: tryRevoke refuses while the backend holds it, and the transfer still completes right", async () => {
    r = await rig();
    const { conn, hcd, guest } = r;
    await conn.attach(1, emu("loopback"));
    await guest.enumerate(port(1), addr(2));
    const t = new Tracked(hcd, bulkInUrb(1, 2, 4096));
    await eventually(() => hcd.stats().inFlight === 1, 5000, "the IN on the ring");
    await eventually(
      () => {
        for (let ref = 0; ref < hcd.grants.entries; ref++) {
          if (hcd.grants.isGranted(ref as never) && hcd.grants.mapCount(ref as never) > 0) return true;
        }
        return false;
      },
      5000,
      "the backend to pin the grant",
    );
    const busy: number[] = [];
    for (let ref = 0; ref < hcd.grants.entries; ref++) if (hcd.grants.isGranted(ref as never)) busy.push(ref);
    expect(busy).toHaveLength(1);
    for (let i = 0; i < 100; i++) expect(hcd.grants.tryRevoke(busy[0] as never)).toBe(false);
    expect(hcd.grants.isGranted(busy[0] as never)).toBe(true);
    const data = pattern(4096, 11);
    await guest.transferOut(port(1), addr(2), 1, data);
    const c = await t.done;
    expect(c.status).toBe(OK);
    expect(Buffer.compare(guest.bytes(t.urb.buffer![0]!), data)).toBe(0);
    expect(hcd.grants.isGranted(busy[0] as never)).toBe(false); // revoked at completion, once unmapped
    release([t]);
    await expectNoLeaks(conn, hcd, workers(1));
  });

  it("ring full for seconds: 300 interrupt INs on an idle keyboard wait (the ring full, the rest queued), then complete or unlink, none lost", async () => {
    // A short hung-port limit: the hold below spans several of the watchdog's looks (a full ring on an
    // idle device is not a hung port).
    r = await rig({ hungPortMs: 400 });
    const { conn, hcd, guest } = r;
    await conn.attach(1, emu("keyboard"));
    await guest.enumerate(port(1), addr(2));
    // SET_IDLE(0): the keyboard never repeats a report, so an IN waits until a key changes.
    await guest.control(port(1), addr(2), {
      bmRequestType: 0x21,
      bRequest: 0x0a,
      wValue: 0,
      wIndex: 0,
      wLength: 0,
    });
    const urbs = Array.from({ length: 300 }, () => new Tracked(hcd, interruptInUrb(1, 2, 1, 8)));
    const onRing = 256 - UNLINK_RESERVED_SLOTS; // the rest of the ring is kept for unlinks
    await eventually(
      () => hcd.stats().inFlight === onRing && hcd.stats().pending === 300 - onRing,
      5000,
      "a full ring",
    );
    // Every URB on the ring has reached the device (the backend and the port hold them all) ...
    await eventually(
      async () => {
        const s = await conn.stats();
        return s.inFlight === onRing && (s.portWorkers[1]?.inFlight ?? 0) === onRing;
      },
      5000,
      "the backend and the port to hold the full ring",
    );
    // ... and they stay there: a timed hold, the premise of this case (not a synchronisation).
    await holdFor(1500);
    expect(urbs.filter((u) => u.completions.length > 0)).toHaveLength(0);
    expect(hcd.stats()).toMatchObject({ inFlight: onRing, pending: 300 - onRing });
    expect((await conn.stats()).inFlight).toBe(onRing); // the control plane still answers
    // 20 key changes complete the first 20 INs, in order, with the right reports.
    for (let i = 0; i < 20; i++) await conn.deviceCommand(1, "pressKeys", 0, [0x04 + i]);
    for (let i = 0; i < 20; i++) {
      expect((await urbs[i]!.done).status).toBe(OK);
      expect(guest.bytes(urbs[i]!.urb.buffer![0]!)[2]).toBe(0x04 + i);
    }
    // The rest are unlinked: the queued ones at once, the ones on the ring as slots come free.
    const unlinks = await Promise.all(urbs.slice(20).map((u) => hcd.unlink(u.urb)));
    for (const s of unlinks) expect(s).toBe(OK);
    for (const u of urbs.slice(20)) expect((await u.done).status).toBe(ECONNRESET);
    for (const u of urbs) expect(u.completions).toHaveLength(1);
    release(urbs);
    await expectNoLeaks(conn, hcd, workers(1));
    await conn.deviceCommand(1, "pressKeys", 0, [0x2c]);
    expect((await guest.transferIn(port(1), addr(2), 1, 8, "interrupt"))[2]).toBe(0x2c);
  });

  it("unlink storms: hundreds of unlinks racing completions; one completion each, no payload lost or duplicated", async () => {
    r = await rig();
    const { conn, hcd, guest } = r;
    await conn.attach(1, emu("loopback"));
    await guest.enumerate(port(1), addr(2));
    const outRange = guest.buffers.allocate(512);
    for (let round = 0; round < 3; round++) {
      const fed = new Map<string, number>();
      const ins = Array.from({ length: 200 }, () => new Tracked(hcd, bulkInUrb(1, 2, 512)));
      const feeds: Promise<unknown>[] = [];
      for (let i = 0; i < 100; i++) {
        const data = pattern(512, round * 1000 + i + 1);
        fed.set(Buffer.from(data).toString("hex"), 0);
        const range = guest.buffers.allocate(512);
        guest.bytes(range).set(data);
        feeds.push(
          hcd
            .submit({
              type: "bulk",
              port: port(1),
              device: addr(2),
              endpoint: ep(1),
              directionIn: false,
              buffer: [range],
            })
            .then((c) => {
              expect(c.status).toBe(OK);
              guest.buffers.release(range);
            }),
        );
        if (i % 10 === 0) await new Promise((res) => setImmediate(res));
      }
      // Every IN is unlinked (a third of them twice), interleaved with the feeding.
      const unlinks = ins.flatMap((t, i) =>
        i % 3 === 0 ? [hcd.unlink(t.urb), hcd.unlink(t.urb)] : [hcd.unlink(t.urb)],
      );
      await Promise.all(feeds);
      for (const s of await Promise.all(unlinks)) expect([OK, ENOENT]).toContain(s);
      let received = 0;
      for (const t of ins) {
        const c = await t.done;
        expect(t.completions).toHaveLength(1);
        expect([OK, ECONNRESET]).toContain(c.status);
        if (c.status === OK) {
          const key = Buffer.from(guest.bytes(t.urb.buffer![0]!)).toString("hex");
          expect(fed.get(key)).toBe(0);
          fed.set(key, 1);
          received++;
        }
      }
      release(ins);
      // What the storm did not take is still queued in the device, each payload once.
      for (let i = received; i < 100; i++) {
        const back = await guest.transferIn(port(1), addr(2), 1, 512);
        const key = Buffer.from(back).toString("hex");
        expect(fed.get(key)).toBe(0);
        fed.set(key, 1);
      }
      expect([...fed.values()].every((v) => v === 1)).toBe(true);
      await expectNoLeaks(conn, hcd, workers(1));
    }
    guest.buffers.release(outRange);
    expect(hcd.stats().unlinksSent).toBeGreaterThan(0);
  });

  it("USB/IP client vanishing mid-URB: the server unlinks everything, nothing leaks in the engine, re-import works", async () => {
    server = await startServer();
    const engine = server.server.connection;
    const hcd = engine.frontend!;
    const baseline = (await engine.stats()).liveWorkers;
    for (let round = 0; round < 3; round++) {
      const c = await server.imported("1-1");
      await enumerate(c);
      for (let i = 0; i < 40; i++) void c.submit({ ep: 1, directionIn: true, length: 4096 }).done;
      for (let i = 0; i < 10; i++) void c.submit({ ep: 2, directionIn: true, length: 8 }).done;
      for (let i = 0; i < 10; i++)
        void c.submit({ ep: 1, directionIn: false, data: pattern(1000, i + 1) }).done;
      await eventually(() => hcd.stats().inFlight > 20, 5000, "URBs in the engine");
      c.close(); // gone, without a single unlink
      await eventually(() => !server!.server.stats().imported.includes("1-1"), 5000, "1-1 released");
      await expectNoLeaks(engine, hcd, baseline);
    }
    const again = await server.imported("1-1");
    await enumerate(again);
    const payload = pattern(3000, 42);
    expect((await bulkOut(again, 1, payload)).status).toBe(0);
    expect(Buffer.compare((await bulkIn(again, 1, 3000)).data, payload)).toBe(0);
  });
});

describe("unlink racing completion", () => {
  it("gives every URB exactly one completion when unlink races completion, 10 000 times", async () => {
    r = await rig();
    const { hcd, guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    const inRange = guest.buffers.allocate(64);
    const outRange = guest.buffers.allocate(64);
    guest.bytes(outRange).set(pattern(64, 3));
    let completions = 0;
    let cancelled = 0;
    let finished = 0;
    let queued = 0; // OUT messages the device holds because their IN was cancelled
    const iterations = 10_000;
    const perUrb = new Uint8Array(iterations); // completions of iteration i's IN
    for (let i = 0; i < iterations; i++) {
      const inUrb = {
        type: "bulk" as const,
        port: port(1),
        device: addr(2),
        endpoint: ep(1),
        directionIn: true,
        buffer: [inRange],
      };
      const inDone = new Promise<UrbCompletion>((resolve) =>
        hcd.submitWithCallback(inUrb, (c) => {
          perUrb[i]!++;
          completions++;
          resolve(c);
        }),
      );
      // Feed the IN (unless a message is already queued), and unlink it at once: they race.
      const feed =
        queued > 0
          ? Promise.resolve()
          : hcd
              .submit({
                type: "bulk",
                port: port(1),
                device: addr(2),
                endpoint: ep(1),
                directionIn: false,
                buffer: [outRange],
              })
              .then((c) => expect(c.status).toBe(OK));
      const unlinked = hcd.unlink(inUrb);
      const [c, u] = await Promise.all([inDone, unlinked, feed]);
      if (c.status === OK) {
        finished++;
        if (queued > 0) queued--;
        expect([OK, ENOENT]).toContain(u);
      } else {
        expect(c.status).toBe(ECONNRESET);
        cancelled++;
        if (queued === 0) queued++;
      }
      // Not this IN's count (its first completion just resolved inDone: it is 1 here by construction) but
      // the previous one's: a second completion for it would have come back on the same rings before
      // this iteration's answers.
      if (i > 0) expect(perUrb[i - 1], `completions of iteration ${i - 1}'s IN`).toBe(1);
    }
    // A stray second completion would come back on the same rings before this echo's answers do
    // (responses are in order): after one more round trip, every completion there will be has been seen.
    if (queued > 0) await r.guest.transferIn(port(1), addr(2), 1, 64);
    await echo(1, 2, 64, 4);
    expect(completions).toBe(iterations);
    expect(perUrb.every((n) => n === 1)).toBe(true);
    expect(finished + cancelled).toBe(iterations);
    expect(cancelled).toBeGreaterThan(0);
    guest.buffers.release(inRange);
    guest.buffers.release(outRange);
    await expectNoLeaks(conn, hcd, 0);
  }, 120_000);
});

describe("hotplug under traffic", () => {
  it("attaches and detaches a device while another port moves data", async () => {
    r = await rig();
    const { guest, conn, hcd } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    let running = true;
    let moved = 0;
    const traffic = (async () => {
      let i = 0;
      while (running) {
        const data = pattern(4096, ++i);
        await guest.transferOut(port(1), addr(2), 1, data);
        const back = await guest.transferIn(port(1), addr(2), 1, 4096);
        expect(Buffer.compare(back, data)).toBe(0);
        moved++;
      }
    })();
    for (let round = 0; round < 5; round++) {
      const before = moved;
      await conn.attach(2, { kind: "emulated", name: "storage", options: { sizeBytes: 1024 * 1024 } });
      await guest.enumerate(port(2), addr(3));
      await conn.detach(2);
      await eventually(() => !hcd.portStatus(port(2)).connected, 5000, "port 2 disconnect");
      // Port 1 keeps moving data across every hotplug (an attach is now quicker than an echo under load).
      await eventually(() => moved > before, 5000, `port 1 traffic during round ${round}`);
    }
    running = false;
    await traffic;
    await expectNoLeaks(conn, hcd, 0);
  });
});

describe("hung port worker", () => {
  it("cuts off a port whose worker stops turning its event loop, and only that port", async () => {
    r = await rig({ hungPortMs: 400 });
    const { hcd, guest, conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback", placement: "worker" });
    await conn.attach(2, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    await guest.enumerate(port(2), addr(2));
    const failed = new Promise<[number, string, boolean]>((res) =>
      conn.once("port-failed", (p: number, why: string, gone: boolean) => res([p, why, gone])),
    );
    const range = guest.buffers.allocate(512);
    const pending = hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: ep(1),
      directionIn: true,
      buffer: [range],
    });
    await conn.freezePort(1, 5000);
    const [failedPort, why, gone] = await failed;
    expect(failedPort).toBe(1);
    expect(why).toMatch(/hung/);
    expect(gone).toBe(false); // a hung worker is a failure, not a device that went away
    expect([ESHUTDOWN, ENODEV]).toContain((await pending).status);
    await eventually(() => !hcd.portStatus(port(1)).connected, 5000, "port 1 disconnect");
    await echo(2, 2, 777, 1);
  });

  it("refuses to freeze a device on the backend's own thread, and a placement a device cannot have", async () => {
    r = await rig();
    const { conn } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await expect(conn.freezePort(1, 100)).rejects.toThrow(/runs on the backend thread/);
    await expect(
      conn.attach(2, { kind: "usbip", host: "127.0.0.1", busid: "1-1", placement: "backend" } as never),
    ).rejects.toThrow(/always run on a port worker/);
    await expect(
      conn.attach(2, { kind: "emulated", name: "loopback", placement: "elsewhere" } as never),
    ).rejects.toThrow(/placement must be 'backend' or 'worker'/);
  });
});
