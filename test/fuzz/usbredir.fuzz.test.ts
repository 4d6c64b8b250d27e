/**
 * Fuzz: arbitrary and mutated byte streams into the usbredir server (usbvirt redirect) over TCP loopback.
 *
 * Each fast-check run opens a connection and sends one of: raw bytes instead of a hello (or after a valid
 * hello, without waiting); raw bytes after a full hello exchange and the device's announcement; or a
 * stream of valid guest packets (control IN/OUT, bulk OUT/IN, interrupt, set/get_configuration,
 * start/stop_interrupt_receiving, cancel, filter) with a few bytes mutated and perhaps cut short. The
 * verdict comes from the server's own parse gate (RedirReader, peer "guest") run over the same bytes: a
 * stream it cannot frame (or a filter without its NUL) must get the connection closed; a stream that
 * frames gets at most one reply per data packet id, and exactly one (its reply, or `cancelled` for the
 * cancel the test then sends) when nothing was left half-sent. Every packet the server sends must frame
 * under a RedirReader for peer "host" — QEMU's strict parser, which aborts the VM on a packet it refuses.
 * Afterwards the peer vanishes and the device must be released: the next run's hello gets it announced.
 *
 * Throughout, a bystander server (its own device and engine) echoes verified data to an honest client;
 * it must keep moving, and at the end the fuzzed device is used once more. Time-boxed and seeded like
 * test/fuzz/usbip.fuzz.test.ts (USBVIRT_FUZZ_SEED / USBVIRT_FUZZ_MS).
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { UsbredirClient } from "../../src/usbredir/client.js";
import {
  decodeHello,
  encodeEmpty,
  negotiate,
  type RedirPacket,
  RedirStatus,
  RedirType,
} from "../../src/usbredir/protocol.js";
import { RedirReader } from "../../src/usbredir/reader.js";
import { HOST_CAPS } from "../../src/usbredir/server.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { HonestLoop } from "../support/honest-loop.js";
import { encodeGuestOps, GUEST_HELLO, guestOpArb, NEGOTIATED } from "../usbredir/gen.js";
import { echoRound, LOOPBACK, startRedirServer, type TestRedirServer } from "../usbredir/helpers.js";
import { RawPeer, type SeenPacket } from "../usbredir/raw-peer.js";
import { fuzzBeside } from "./time-box.js";

let t: TestRedirServer;
let bystander: TestRedirServer;
let honest: UsbredirClient;
let honestLoop: HonestLoop;

beforeAll(async () => {
  // A packet that waits for its share of the engine is answered inval after 200 ms (default 2 s).
  t = await startRedirServer(LOOPBACK, { blockedRequestMs: 200 });
  bystander = await startRedirServer(LOOPBACK);
  honest = await bystander.connect();
  honestLoop = new HonestLoop(echoRound(honest));
}, 30_000);

afterAll(async () => {
  await honestLoop?.stop();
  await bystander?.close();
  await t?.close();
});

// ------------------------------------------------------------------ the oracle

/** A data packet id as a key: control and bulk replies are matched on type and id. */
const keyOf = (type: number, low: number, high: number) => `${type}:${high}:${low}`;

interface Verdict {
  /** The server must close the connection. */
  readonly mustClose: boolean;
  /** Timing decides (an id repeated may be legal once the first completed, or close the connection). */
  readonly unsure: boolean;
  /** Control and bulk packets the server admits before any closing point, by key. */
  readonly transfers: Set<string>;
  /** Interrupt packets by key, and how many carry it. */
  readonly interrupts: Map<string, number>;
  /** Bytes of a packet left half-sent at the end. */
  readonly leftover: number;
}

/** What the server makes of `stream` (sent after `prefix`): its own parse gate, replayed, and its filter rule. */
function oracle(prefix: Uint8Array, stream: Uint8Array): Verdict {
  const transfers = new Set<string>();
  const interrupts = new Map<string, number>();
  let mustClose = false;
  let unsure = false;
  let counting = prefix.length === 0;
  const reader: RedirReader = new RedirReader("guest", {
    admit: () => null,
    deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array) {
      if (!counting || mustClose) return;
      if (p.type === RedirType.HELLO) {
        reader.setNegotiated(negotiate(HOST_CAPS, decodeHello(typeHeader, data).caps));
      } else if (p.type === RedirType.CONTROL_PACKET || p.type === RedirType.BULK_PACKET) {
        const key = keyOf(p.type, p.idLow, p.idHigh);
        // The server tracks ids across both types: a repeat of either may find the first in flight.
        const other = keyOf(
          p.type === RedirType.BULK_PACKET ? RedirType.CONTROL_PACKET : RedirType.BULK_PACKET,
          p.idLow,
          p.idHigh,
        );
        if (transfers.has(key) || transfers.has(other)) unsure = true;
        transfers.add(key);
      } else if (p.type === RedirType.INTERRUPT_PACKET) {
        const key = keyOf(p.type, p.idLow, p.idHigh);
        interrupts.set(key, (interrupts.get(key) ?? 0) + 1);
      } else if (p.type === RedirType.FILTER_FILTER && data.indexOf(0) !== data.length - 1) {
        mustClose = true;
      }
    },
    malformed() {
      mustClose = true;
    },
  });
  if (prefix.length > 0) {
    reader.push(prefix);
    reader.setNegotiated(NEGOTIATED);
    counting = true;
  }
  reader.push(stream);
  return { mustClose, unsure, transfers, interrupts, leftover: mustClose ? 0 : reader.partialBytes };
}

// ------------------------------------------------------------------ runs

const runArb = fc.oneof(
  {
    weight: 1,
    arbitrary: fc.record({
      mode: fc.constant("pre-hello" as const),
      helloFirst: fc.boolean(),
      bytes: fc.uint8Array({ maxLength: 400 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      mode: fc.constant("post-hello" as const),
      bytes: fc.oneof(
        fc.uint8Array({ maxLength: 400 }),
        // Garbage that starts like a bulk_packet header.
        fc.uint8Array({ minLength: 26, maxLength: 200 }).map((b) => {
          b.set([RedirType.BULK_PACKET, 0, 0, 0], 0);
          return b;
        }),
      ),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      mode: fc.constant("mutated" as const),
      ops: fc.array(guestOpArb, { minLength: 1, maxLength: 10 }),
      mutations: fc.array(fc.record({ at: fc.nat(), value: fc.nat({ max: 255 }) }), { maxLength: 3 }),
      cut: fc.oneof({ weight: 4, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: fc.nat() }),
    }),
  },
);
type Run = typeof runArb extends fc.Arbitrary<infer T> ? T : never;

const stats = { runs: 0, closedAsExpected: 0, replies: 0, exact: 0, unsure: 0, leftover: 0 };

/** Replies to the guest's control and bulk packets (the server's other packets are statuses and stream data). */
function transferReplies(p: RawPeer): SeenPacket[] {
  return p.packets.filter((x) => x.type === RedirType.CONTROL_PACKET || x.type === RedirType.BULK_PACKET);
}

function checkFramed(p: RawPeer): void {
  if (p.refused !== null) throw new Error(`the server sent a packet QEMU would refuse: ${p.refused}`);
}

async function released(): Promise<void> {
  await eventually(() => t.server.stats().peer === null, 5000, "the device released");
}

async function oneRun(run: Run): Promise<void> {
  stats.runs++;
  const p = await RawPeer.open(t.port);
  try {
    if (run.mode === "pre-hello") {
      const prefix = run.helloFirst ? GUEST_HELLO : new Uint8Array(0);
      p.write(Buffer.concat([prefix, run.bytes]));
      const v = oracle(new Uint8Array(0), Buffer.concat([prefix, run.bytes]));
      if (v.mustClose) {
        if (!(await p.closedWithin(3000))) throw new Error("the server kept a connection that sent garbage");
        stats.closedAsExpected++;
      } else await p.closedWithin(20);
      checkFramed(p);
      return;
    }
    await p.hello();
    let stream: Uint8Array;
    if (run.mode === "post-hello") stream = run.bytes;
    else {
      const s = Buffer.concat(encodeGuestOps(run.ops));
      for (const m of run.mutations) s[m.at % s.length] = m.value;
      stream = run.cut >= 0 ? s.subarray(0, run.cut % (s.length + 1)) : s;
    }
    const v = oracle(GUEST_HELLO, stream);
    p.write(stream);
    if (v.mustClose) {
      if (!(await p.closedWithin(3000)))
        throw new Error("the server kept a connection whose stream does not frame");
      stats.closedAsExpected++;
    } else {
      await p.closedWithin(20);
      if (v.unsure) stats.unsure++;
      if (v.leftover > 0) stats.leftover++;
      if (!v.unsure && v.leftover === 0 && !p.closed) {
        // Cancel whatever is still in flight; then every control and bulk packet has exactly one reply.
        const answered = new Set(transferReplies(p).map((r) => keyOf(r.type, r.idLow, r.idHigh)));
        for (const key of v.transfers) {
          if (answered.has(key)) continue;
          const [, high, low] = key.split(":").map(Number);
          p.write(encodeEmpty(NEGOTIATED, RedirType.CANCEL_DATA_PACKET, low!, high!));
        }
        const count = () => {
          const n = new Map<string, number>();
          for (const r of transferReplies(p)) {
            const k = keyOf(r.type, r.idLow, r.idHigh);
            n.set(k, (n.get(k) ?? 0) + 1);
          }
          return n;
        };
        const deadline = Date.now() + 3000;
        while ([...v.transfers].some((k) => count().get(k) !== 1) && Date.now() < deadline && !p.closed) {
          checkFramed(p);
          await new Promise((r) => setTimeout(r, 2));
        }
        checkFramed(p);
        const n = count();
        for (const k of v.transfers) {
          if (n.get(k) !== 1)
            throw new Error(
              `${k}: ${n.get(k) ?? 0} replies (closed ${p.closed}; log tail ${t.log.lines.slice(-3).join(" | ")})`,
            );
        }
        stats.exact++;
      }
    }
    checkFramed(p);
    // Never two replies for one id (an id repeated may legally get one per packet).
    if (!v.unsure) {
      const seen = new Set<string>();
      for (const r of transferReplies(p)) {
        const k = keyOf(r.type, r.idLow, r.idHigh);
        if (seen.has(k)) throw new Error(`${k} answered twice`);
        seen.add(k);
      }
      // Interrupt packets (QEMU reuses their ids): no more replies than packets with that id. Ids with
      // high 0 are left out: the server's own interrupt data counts up from 0:0.
      const replies = new Map<string, number>();
      for (const r of p.packets) {
        if (r.type !== RedirType.INTERRUPT_PACKET || r.idHigh === 0) continue;
        const k = keyOf(r.type, r.idLow, r.idHigh);
        replies.set(k, (replies.get(k) ?? 0) + 1);
      }
      for (const [k, n] of replies) {
        if (n > (v.interrupts.get(k) ?? 0))
          throw new Error(`${k}: ${n} replies to ${v.interrupts.get(k) ?? 0} packets`);
      }
    }
    stats.replies += p.packets.length;
  } finally {
    p.destroy(); // the peer vanishes, whatever it had in flight
    await released();
  }
}

describe("fuzz: arbitrary byte streams against the usbredir server", () => {
  it("closes bad connections alone, answers framed packets at most (or exactly) once in frames QEMU accepts, and releases the device", async () => {
    const { baselineRate, rate } = await fuzzBeside(
      { name: "honest client", rounds: () => honestLoop.rounds },
      300,
      "usbredir",
      runArb,
      oneRun,
      stats,
    );
    expect(honestLoop.error).toBeNull();
    expect(stats.runs).toBeGreaterThan(20);
    expect(stats.closedAsExpected).toBeGreaterThan(0);
    expect(stats.exact).toBeGreaterThan(0);
    expect(rate).toBeGreaterThan(baselineRate * 0.05);
    // The device is announced to the next peer and moves verified data after all that.
    const c = await t.connect({ timeoutMs: 5000 });
    const payload = pattern(3000, 9);
    expect((await c.bulk(0x01, payload).reply).status).toBe(RedirStatus.SUCCESS);
    const back = await c.bulk(0x81, 3000).reply;
    expect(Buffer.compare(back.data, payload)).toBe(0);
    c.close();
    await released();
    expect(t.server.stats().memoryBytes).toBe(0);
  }, 60_000);
});
