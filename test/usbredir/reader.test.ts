/**
 * The usbredir parse gate (src/usbredir/reader.ts) on its own: however a stream is cut into chunks —
 * and whether the sink stops it at a packet and resumes later — it yields the same packets, the same
 * data, and the same verdict (the same framing error at the same packet for a corrupted stream).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { QEMU_GUEST_CAPS } from "../../src/usbredir/client.js";
import {
  decodeHello,
  encodeHello,
  negotiate,
  type RedirPacket,
  RedirType,
} from "../../src/usbredir/protocol.js";
import { BLOCK, RedirReader, type RedirReaderSink } from "../../src/usbredir/reader.js";
import { HOST_CAPS } from "../../src/usbredir/server.js";
import { encodeGuestOps, encodeHostOps, GUEST_HELLO, guestOpArb, hostOpArb, splitAt } from "./gen.js";

type Role = "host" | "guest";

interface Outcome {
  readonly packets: string[];
  readonly malformed: string | null;
}

/** Read `chunks` with a reader for `peer`; `blockAt` says which admissions (by count) are stopped once and resumed after the chunk. */
function read(peer: Role, chunks: readonly Uint8Array[], blockAt: ReadonlySet<number> = new Set()): Outcome {
  const packets: string[] = [];
  let malformed: string | null = null;
  let admissions = 0;
  const blocked = new Set<number>();
  const ours = peer === "guest" ? HOST_CAPS : QEMU_GUEST_CAPS;
  const sink: RedirReaderSink = {
    admit(p: RedirPacket) {
      const n = admissions;
      if (blockAt.has(n) && !blocked.has(n)) {
        blocked.add(n);
        return BLOCK;
      }
      admissions++;
      // Alternate between a target of our own and the reader's buffer.
      return n % 2 === 0 && p.dataLength > 0 ? new Uint8Array(p.dataLength) : null;
    },
    deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array) {
      if (p.type === RedirType.HELLO)
        reader.setNegotiated(negotiate(ours, decodeHello(typeHeader, data).caps));
      packets.push(
        `${p.type} ${p.idHigh}:${p.idLow} ep ${p.endpoint} st ${p.status} len ${p.length} ` +
          `th ${Buffer.from(typeHeader).toString("hex")} data ${Buffer.from(data).toString("hex")}`,
      );
    },
    malformed(reason: string) {
      malformed = reason;
    },
  };
  const reader = new RedirReader(peer, sink);
  for (const c of chunks) {
    reader.push(c);
    while (reader.isBlocked) reader.resume();
  }
  return { packets, malformed };
}

const HOST_HELLO = encodeHello("usbvirt test host", HOST_CAPS);

const streamArb = fc.oneof(
  fc.array(guestOpArb, { maxLength: 12 }).map((ops) => ({
    peer: "guest" as Role,
    stream: Buffer.concat([GUEST_HELLO, ...encodeGuestOps(ops)]),
    count: 1 + ops.length,
  })),
  fc.array(hostOpArb, { maxLength: 12 }).map((ops) => ({
    peer: "host" as Role,
    stream: Buffer.concat([HOST_HELLO, ...encodeHostOps(ops)]),
    count: 4 + ops.length,
  })),
);

describe("RedirReader", () => {
  it("yields the same packets however a valid stream is split, blocked and resumed", () => {
    fc.assert(
      fc.property(
        streamArb,
        fc.array(fc.nat(), { maxLength: 40 }),
        fc.array(fc.nat({ max: 15 }), { maxLength: 6 }),
        ({ peer, stream, count }, cuts, blocks) => {
          const whole = read(peer, [stream]);
          expect(whole.malformed).toBeNull();
          expect(whole.packets).toHaveLength(count);
          const split = read(peer, splitAt(stream, cuts), new Set(blocks));
          expect(split).toEqual(whole);
          // One byte at a time, too.
          const bytes = Array.from(stream, (_, i) => stream.subarray(i, i + 1));
          expect(read(peer, bytes)).toEqual(whole);
        },
      ),
      { numRuns: 300, seed: 0x5eed },
    );
  });

  it("gives a corrupted stream the same verdict, at the same packet, however it is split", () => {
    fc.assert(
      fc.property(
        streamArb,
        fc.array(fc.record({ at: fc.nat(), value: fc.nat({ max: 255 }) }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.nat(), { maxLength: 40 }),
        ({ peer, stream }, mutations, cuts) => {
          const bad = Buffer.from(stream);
          for (const m of mutations) bad[m.at % bad.length] = m.value;
          expect(read(peer, splitAt(bad, cuts))).toEqual(read(peer, [bad]));
        },
      ),
      { numRuns: 300, seed: 0x5eed },
    );
  });

  it("names the framing error and stops reading", () => {
    const short = Buffer.from([0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0]);
    expect(read("guest", [short]).malformed).toBe("hello length 10 is shorter than its 64-byte header");
    const wrongWay = read("host", [HOST_HELLO, encodeHello("again", 0)]);
    expect(wrongWay.malformed).toBe("a second hello");
    const reset = Buffer.concat([HOST_HELLO, Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])]);
    expect(read("host", [reset]).malformed).toBe("reset is not a packet the host side sends");
    expect(read("host", [reset]).packets).toHaveLength(1);
  });
});
