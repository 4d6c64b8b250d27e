/**
 * The per-peer share and its bounds on their own (unit): option names and defaults, the renamed names
 * refused, and PeerShare's flow control with a fake socket and gate under fake timers — blocked on
 * unsent bytes until the peer reads, blocked on its share until it comes back or the forced verdict,
 * dropped when it does not read, the request clock, the handshake, the connection cap.
 */
import type { Socket } from "node:net";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  checkPeerBounds,
  DEFAULT_MAX_UNSENT_BYTES,
  MAX_TIMER_MS,
  type PeerBounds,
  RENAMED_OPTIONS,
} from "../../src/network-face/bounds.js";
import { ConnectionCap } from "../../src/network-face/listener.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { Blocked, PeerShare, type ShareGate } from "../../src/network-face/share.js";

const fail = (m: string) => new Error(m);

describe("checkPeerBounds", () => {
  it("applies the defaults, and the server's own default for maxUrbsPerPeer", () => {
    const b = checkPeerBounds({}, 62, fail);
    expect(b).toEqual({
      maxUrbs: 62,
      maxUnsent: DEFAULT_MAX_UNSENT_BYTES,
      stalledMs: 30_000,
      blockedMs: 2000,
      handshakeMs: 30_000,
      requestMs: 30_000,
      maxConnections: 64,
    });
    expect(checkPeerBounds({ handshakeTimeoutMs: 0, requestTimeoutMs: 0 }, 1, fail)).toMatchObject({
      handshakeMs: 0,
      requestMs: 0,
    });
  });

  it("refuses every old name, naming the new one", () => {
    for (const [old, now] of Object.entries(RENAMED_OPTIONS)) {
      expect(() => checkPeerBounds({ [old]: 5 } as never, 1, fail)).toThrow(
        `options.${old} was renamed ${now}`,
      );
    }
  });

  it("refuses values that are not integers in range, naming the option", () => {
    expect(() => checkPeerBounds({ maxUnsentBytes: 0 }, 1, fail)).toThrow(
      "options.maxUnsentBytes must be a positive",
    );
    expect(() => checkPeerBounds({ maxConnections: 1.5 }, 1, fail)).toThrow("options.maxConnections");
    expect(() => checkPeerBounds({ requestTimeoutMs: -1 }, 1, fail)).toThrow(
      "options.requestTimeoutMs must be a non-negative",
    );
  });

  it("refuses a time longer than a Node timer keeps (it would fire after 1 ms)", () => {
    expect(checkPeerBounds({ stalledPeerMs: MAX_TIMER_MS }, 1, fail).stalledMs).toBe(MAX_TIMER_MS);
    for (const key of [
      "stalledPeerMs",
      "blockedRequestMs",
      "handshakeTimeoutMs",
      "requestTimeoutMs",
    ] as const) {
      expect(() => checkPeerBounds({ [key]: MAX_TIMER_MS + 1 }, 1, fail)).toThrow(
        `options.${key} must be at most ${MAX_TIMER_MS}`,
      );
    }
  });
});

class FakeGate implements ShareGate {
  isBlocked = false;
  partialBytes = 0;
  completed = 0;
  resumes = 0;
  resume(): void {
    this.resumes++;
    this.isBlocked = false;
  }
}

function fakeSocket() {
  const calls: string[] = [];
  const socket = { pause: () => calls.push("pause"), resume: () => calls.push("resume") };
  return { socket: socket as unknown as Socket, calls };
}

const BOUNDS: PeerBounds = {
  maxUrbs: 2,
  maxUnsent: 1000,
  stalledMs: 500,
  blockedMs: 200,
  handshakeMs: 300,
  requestMs: 400,
  maxConnections: 2,
};

function rig() {
  const { socket, calls } = fakeSocket();
  const gate = new FakeGate();
  const state = { owed: 0, dropped: [] as string[], forcing: 0, drained: 0 };
  const share = new PeerShare(socket, BOUNDS, {
    batch: (fn) => fn(),
    drop: (reason) => state.dropped.push(reason),
    owed: () => state.owed,
    memoryInUse: () => 0,
    forcing: () => state.forcing++,
    drained: () => state.drained++,
  });
  share.gate = gate;
  return { share, gate, calls, state };
}

describe("PeerShare", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "performance", "Date"] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("over the unsent bound: reads pause, resume once the peer read below it, dropped if it never does", () => {
    const { share, gate, calls, state } = rig();
    state.owed = 1001;
    expect(share.overUnsent).toBe(true);
    share.block(Blocked.SEND);
    gate.isBlocked = true;
    share.updateFlow();
    expect(calls).toEqual(["pause"]);
    // The peer reads: a write reaches the kernel.
    state.owed = 10;
    share.written();
    expect(gate.resumes).toBe(1);
    expect(state.drained).toBe(1);
    expect(calls).toEqual(["pause", "resume"]);
    expect(share.blocked).toBe(Blocked.NO);
    // Over again and never read: dropped after stalledMs, not before.
    state.owed = 5000;
    share.block(Blocked.SEND);
    gate.isBlocked = true;
    share.updateFlow();
    vi.advanceTimersByTime(499);
    expect(state.dropped).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(state.dropped).toEqual(["peer stopped reading: 5000 bytes unsent for 500 ms"]);
    // A SEND block has no forced verdict: waiting for the peer is its own business.
    expect(state.forcing).toBe(0);
  });

  it("blocked on its share: resumed when something comes back, or forced once after blockedMs", () => {
    const { share, gate, state } = rig();
    share.urbs = 2;
    expect(share.urbsFull).toBe(true);
    share.block(Blocked.SHARE);
    gate.isBlocked = true;
    vi.advanceTimersByTime(100);
    share.urbs = 1;
    share.progress();
    expect(gate.resumes).toBe(1);
    expect(share.takeForced()).toBe(false);
    // Nothing comes back this time: the request is admitted with the forced verdict, once.
    share.block(Blocked.SHARE);
    gate.isBlocked = true;
    vi.advanceTimersByTime(200);
    expect(state.forcing).toBe(1);
    expect(gate.resumes).toBe(2);
    expect(share.takeForced()).toBe(true);
    expect(share.takeForced()).toBe(false);
  });

  it("the request clock: a request half received for requestMs ends the connection; one that moves does not", () => {
    const { share, gate, state } = rig();
    gate.partialBytes = 10;
    share.updateFlow();
    vi.advanceTimersByTime(300);
    // The request completed and the next one is half in: the clock starts again.
    gate.completed = 1;
    share.updateFlow();
    vi.advanceTimersByTime(300);
    expect(state.dropped).toEqual([]);
    vi.advanceTimersByTime(100);
    expect(state.dropped).toHaveLength(1);
    expect(state.dropped[0]).toMatch(/^a request begun 400 ms ago is not finished \(10 bytes of it in/);
  });

  it("the request clock does not run while the gate is stopped by the server", () => {
    const { share, gate, state } = rig();
    gate.partialBytes = 48;
    gate.isBlocked = true;
    share.updateFlow();
    vi.advanceTimersByTime(10_000);
    expect(state.dropped).toEqual([]);
  });

  it("the handshake must be done within handshakeMs; close() stops every timer", () => {
    const late: number[] = [];
    const a = rig();
    a.share.startHandshake((ms) => late.push(ms));
    vi.advanceTimersByTime(300);
    expect(late).toEqual([300]);
    const b = rig();
    b.share.startHandshake((ms) => late.push(ms));
    b.share.handshakeDone();
    const c = rig();
    c.share.startHandshake((ms) => late.push(ms));
    c.state.owed = 5000;
    c.share.updateFlow();
    c.share.close();
    vi.advanceTimersByTime(10_000);
    expect(late).toEqual([300]);
    expect(c.state.dropped).toEqual([]);
  });
});

describe("ConnectionCap", () => {
  it("holds at most maxConnections, destroys the rest and logs the refusals once per interval", () => {
    const log = new CollectingLogger();
    let now = 0;
    const cap = new ConnectionCap(2, log, () => now);
    const destroyed: number[] = [];
    const sock = (i: number) => ({ destroy: () => destroyed.push(i) }) as unknown as Socket;
    expect(cap.admit(sock(1), "p1")).toBe(true);
    expect(cap.admit(sock(2), "p2")).toBe(true);
    for (let i = 3; i < 50; i++) expect(cap.admit(sock(i), `p${i}`)).toBe(false);
    expect(destroyed).toHaveLength(47);
    expect(log.lines).toHaveLength(1);
    now += 10_000;
    expect(cap.admit(sock(50), "p50")).toBe(false);
    expect(log.lines).toHaveLength(2);
    expect(log.lines[1]).toContain("47 refused since the last such line");
    cap.release();
    expect(cap.admit(sock(51), "p51")).toBe(true);
    expect(cap.count).toBe(2);
  });
});
