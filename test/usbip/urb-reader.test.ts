/**
 * The URB-phase stream reader (src/usbip-server/urb-reader.ts): the sink sees the same admit/submit/unlink calls
 * however TCP cuts the stream, OUT data lands byte-exact where the sink pointed it, a refused header stops
 * the reader until resume(), framing errors end the stream, and the work is linear in the bytes.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MAX_BUFFER_LENGTH, MAX_ISO_PACKETS } from "../../src/urb/limits.js";
import { decodeSetup } from "../../src/usb/index.js";
import { encodeDevlistRequest } from "../../src/usbip/management-pdus.js";
import { URB_HEADER_SIZE } from "../../src/usbip/protocol.js";
import { encodeCmdSubmit, encodeCmdUnlink, type IsoDescriptor } from "../../src/usbip/urb-pdus.js";
import { type SubmitHeader, UrbReader, type UrbReaderSink } from "../../src/usbip-server/urb-reader.js";
import { pattern } from "../support/data.js";

// ---------------------------------------------------------------- PDUs with their expected calls

interface SubmitPdu {
  readonly kind: "submit";
  readonly seqnum: number;
  readonly devid: number;
  readonly directionIn: boolean;
  readonly ep: number;
  readonly transferFlags: number;
  /** IN: any length (no bytes on the wire); OUT: data.length. */
  readonly transferBufferLength: number;
  readonly startFrame: number;
  /** Wire number_of_packets of a non-iso URB: 0 or -1 (0xffffffff). */
  readonly nonIsoPackets: number;
  readonly interval: number;
  readonly setup: Uint8Array;
  readonly data: Uint8Array;
  readonly iso: readonly IsoDescriptor[];
}

interface UnlinkPdu {
  readonly kind: "unlink";
  readonly seqnum: number;
  readonly devid: number;
  readonly directionIn: boolean;
  readonly ep: number;
  readonly unlinkSeqnum: number;
}

type Pdu = SubmitPdu | UnlinkPdu;

type Call =
  | { readonly call: "admit"; readonly h: SubmitHeader }
  | { readonly call: "submit"; readonly h: SubmitHeader; readonly iso: Uint8Array }
  | {
      readonly call: "unlink";
      readonly seqnum: number;
      readonly devid: number;
      readonly unlinkSeqnum: number;
    }
  | { readonly call: "malformed"; readonly reason: string };

function encode(p: Pdu): Uint8Array {
  if (p.kind === "unlink") return encodeCmdUnlink(p);
  return encodeCmdSubmit({ ...p, numberOfPackets: p.nonIsoPackets });
}

/** The header the sink should see for `p`. */
function headerOf(p: SubmitPdu): SubmitHeader {
  return {
    seqnum: p.seqnum,
    devid: p.devid,
    directionIn: p.directionIn,
    ep: p.ep,
    transferFlags: p.transferFlags,
    transferBufferLength: p.transferBufferLength,
    startFrame: p.startFrame,
    packets: p.iso.length,
    rawPackets: p.iso.length > 0 ? p.iso.length : p.nonIsoPackets | 0,
    interval: p.interval,
    ...decodeSetup(p.setup),
  };
}

/** The iso descriptors exactly as encoded: the bytes after the header and the OUT data. */
function isoBytesOf(p: SubmitPdu): Uint8Array {
  const wire = encode(p);
  return wire.slice(URB_HEADER_SIZE + (p.directionIn ? 0 : p.data.length));
}

// ---------------------------------------------------------------- a scripted sink over "guest memory"

const CANARY = 0xa5;
/** Bytes left untouched between two OUT buffers, checked afterwards. */
const GAP = 16;

interface Decision {
  /** How many times admit() refuses this header before it admits it. */
  readonly blocks: number;
  /** Whether admit() names a target for the OUT data (else the reader drops it). */
  readonly land: boolean;
}

const ADMIT: Decision = { blocks: 0, land: true };

/**
 * Records every call (headers and iso bytes copied: the reader reuses them) and answers admit() from a
 * script indexed by PDU number. OUT data gets a fresh range of `guest`, GAP canary bytes apart.
 */
class ScriptedSink implements UrbReaderSink {
  readonly calls: Call[] = [];
  readonly guest: Uint8Array;
  /** Where each PDU's OUT data was sent (by PDU number), if it was. */
  readonly offsets = new Map<number, number>();
  reader!: UrbReader;
  private pdu = 0;
  private refusals = 0;
  private next = GAP;

  constructor(
    private readonly script: (pdu: number) => Decision = () => ADMIT,
    guestBytes = 1 << 20,
  ) {
    this.guest = new Uint8Array(guestBytes).fill(CANARY);
  }

  admit(h: SubmitHeader): boolean {
    this.calls.push({ call: "admit", h: { ...h } });
    const d = this.script(this.pdu);
    if (this.refusals < d.blocks) {
      this.refusals++;
      return false;
    }
    if (d.land && !h.directionIn && h.transferBufferLength > 0) {
      this.offsets.set(this.pdu, this.next);
      this.reader.receiveInto(this.guest, this.next);
      this.next += h.transferBufferLength + GAP;
    }
    return true;
  }

  submit(h: SubmitHeader, iso: Uint8Array): void {
    // A plain copy: the reader reuses its iso array (and Buffer#slice would be a view of it).
    this.calls.push({ call: "submit", h: { ...h }, iso: new Uint8Array(iso) });
    this.pdu++;
    this.refusals = 0;
  }

  unlink(seqnum: number, devid: number, unlinkSeqnum: number): boolean {
    this.calls.push({ call: "unlink", seqnum, devid, unlinkSeqnum });
    this.pdu++;
    return true;
  }

  malformed(reason: string): void {
    this.calls.push({ call: "malformed", reason });
  }
}

function readerWith(sink: ScriptedSink): UrbReader {
  const reader = new UrbReader(sink);
  sink.reader = reader;
  return reader;
}

/** Push each segment, resuming at once whenever the sink refused a header (it admits on a later try). */
function feed(reader: UrbReader, segments: readonly Buffer[]): void {
  for (const s of segments) {
    reader.push(s);
    for (let i = 0; reader.isBlocked && i < 100; i++) reader.resume();
  }
}

/** Cut `stream` into consecutive segments of the given sizes (repeated; zero sizes give empty segments). */
function cut(stream: Buffer, sizes: readonly number[]): Buffer[] {
  const steps = sizes.some((n) => n > 0) ? sizes : [...sizes, 1];
  const out: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < stream.length; i++) {
    const n = steps[i % steps.length]!;
    out.push(stream.subarray(at, at + n));
    at += n;
  }
  out.push(Buffer.alloc(0));
  return out;
}

function expectedCalls(pdus: readonly Pdu[], script: (pdu: number) => Decision = () => ADMIT): Call[] {
  const calls: Call[] = [];
  pdus.forEach((p, i) => {
    if (p.kind === "unlink") {
      calls.push({ call: "unlink", seqnum: p.seqnum, devid: p.devid, unlinkSeqnum: p.unlinkSeqnum });
      return;
    }
    const h = headerOf(p);
    for (let n = 0; n <= script(i).blocks; n++) calls.push({ call: "admit", h });
    calls.push({ call: "submit", h, iso: isoBytesOf(p) });
  });
  return calls;
}

/** A small OUT bulk submit with `data`. */
function outSubmit(seqnum: number, data: Uint8Array, iso: readonly IsoDescriptor[] = []): SubmitPdu {
  return {
    kind: "submit",
    seqnum,
    devid: 0x1_0002,
    directionIn: false,
    ep: 2,
    transferFlags: 0,
    transferBufferLength: data.length,
    startFrame: 0,
    nonIsoPackets: -1,
    interval: 0,
    setup: new Uint8Array(8),
    data,
    iso,
  };
}

function unlinkPdu(seqnum: number, unlinkSeqnum: number): UnlinkPdu {
  return { kind: "unlink", seqnum, devid: 0x1_0002, directionIn: false, ep: 0, unlinkSeqnum };
}

function bytes(...pdus: Pdu[]): Buffer {
  return Buffer.concat(pdus.map(encode));
}

// ---------------------------------------------------------------- generators

const arbU32 = fc.integer({ min: 0, max: 0xffff_ffff });
const arbI32 = fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff });
const arbIso = fc.array(fc.record({ offset: arbU32, length: arbU32, actualLength: arbU32, status: arbI32 }), {
  maxLength: 6,
});
const arbSubmitBase = {
  seqnum: arbU32,
  devid: arbU32,
  ep: fc.oneof(fc.integer({ min: 0, max: 15 }), arbU32),
  transferFlags: arbU32,
  startFrame: arbI32,
  nonIsoPackets: fc.constantFrom(0, -1),
  interval: arbI32,
  setup: fc.uint8Array({ minLength: 8, maxLength: 8 }),
};
const arbOut: fc.Arbitrary<Pdu> = fc
  .record({ ...arbSubmitBase, data: fc.uint8Array({ maxLength: 700 }), iso: arbIso })
  .map((r) => ({ kind: "submit", directionIn: false, transferBufferLength: r.data.length, ...r }));
const arbIn: fc.Arbitrary<Pdu> = fc
  .record({
    ...arbSubmitBase,
    transferBufferLength: fc.integer({ min: 0, max: MAX_BUFFER_LENGTH }),
    iso: arbIso,
  })
  .map((r) => ({ kind: "submit", directionIn: true, data: new Uint8Array(0), ...r }));
const arbUnlink: fc.Arbitrary<Pdu> = fc
  .record({ seqnum: arbU32, devid: arbU32, directionIn: fc.boolean(), ep: arbU32, unlinkSeqnum: arbU32 })
  .map((r) => ({ kind: "unlink", ...r }));
const arbSizes = fc.array(
  fc.oneof(
    fc.constant(0),
    fc.constant(1),
    fc.integer({ min: 1, max: URB_HEADER_SIZE + 1 }),
    fc.integer({ min: 1, max: 3000 }),
  ),
  { minLength: 1, maxLength: 30 },
);
/** Enough for 16 OUT submits of up to 700 bytes, GAP apart. */
const GUEST_BYTES = 1 << 15;
const arbDecision = fc.record({ blocks: fc.integer({ min: 0, max: 2 }), land: fc.boolean() });

// ---------------------------------------------------------------- tests

describe("UrbReader: streaming the URB phase", () => {
  it("property: the sink sees the same calls and OUT data lands byte-exact however the stream is cut", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(arbOut, arbIn, arbUnlink), { minLength: 1, maxLength: 16 }),
        arbSizes,
        fc.array(arbDecision, { minLength: 16, maxLength: 16 }),
        (pdus, sizes, decisions) => {
          const script = (i: number) => decisions[i]!;
          const stream = bytes(...pdus);

          const sink = new ScriptedSink(script, GUEST_BYTES);
          const reader = readerWith(sink);
          feed(reader, cut(stream, sizes));

          expect(sink.calls).toEqual(expectedCalls(pdus, script));
          expect(reader.pending).toBe(0);
          expect(reader.incomplete).toBe(0);
          expect(reader.isBlocked).toBe(false);

          // OUT data where it was sent; every other byte of guest memory (gaps, dropped data) untouched.
          const expectedGuest = new Uint8Array(sink.guest.length).fill(CANARY);
          pdus.forEach((p, i) => {
            const at = sink.offsets.get(i);
            if (p.kind === "submit" && !p.directionIn && script(i).land && p.data.length > 0) {
              expect(at).toBeDefined();
              expectedGuest.set(p.data, at);
            } else expect(at).toBeUndefined();
          });
          expect(Buffer.from(sink.guest).equals(Buffer.from(expectedGuest))).toBe(true);

          // The same stream in one piece: the same calls, the same guest memory.
          const whole = new ScriptedSink(script, GUEST_BYTES);
          feed(readerWith(whole), [stream]);
          expect(whole.calls).toEqual(sink.calls);
          expect(Buffer.from(whole.guest).equals(Buffer.from(sink.guest))).toBe(true);
        },
      ),
      { numRuns: 200, seed: 0x0b5e_55ed },
    );
  });

  it("drops the OUT data of a submit admitted without a target and parses the next PDU", () => {
    const dropped = pattern(300, 1);
    const kept = pattern(200, 2);
    const pdus = [outSubmit(1, dropped), outSubmit(2, kept), unlinkPdu(3, 1)];
    const sink = new ScriptedSink((i) => ({ blocks: 0, land: i !== 0 }));
    const reader = readerWith(sink);
    feed(reader, cut(bytes(...pdus), [7, 1, 64]));

    expect(sink.calls).toEqual(expectedCalls(pdus));
    expect(sink.offsets.has(0)).toBe(false);
    const at = sink.offsets.get(1)!;
    expect(sink.guest.subarray(at, at + kept.length)).toEqual(kept);
    // Nothing of the dropped submit reached guest memory.
    expect(sink.guest.subarray(0, at).every((b) => b === CANARY)).toBe(true);
    expect(sink.guest.subarray(at + kept.length).every((b) => b === CANARY)).toBe(true);
  });

  it("ignores a target named for an IN submit: the next PDU starts right after the header", () => {
    const inSubmit: SubmitPdu = {
      ...outSubmit(1, new Uint8Array(0)),
      directionIn: true,
      transferBufferLength: 64,
    };
    const guest = new Uint8Array(256).fill(CANARY);
    const calls: string[] = [];
    const reader: UrbReader = new UrbReader({
      admit(h) {
        calls.push(`admit ${h.seqnum}`);
        reader.receiveInto(guest, 0);
        return true;
      },
      submit: (h) => calls.push(`submit ${h.seqnum}`),
      unlink: (seqnum) => calls.push(`unlink ${seqnum}`) > 0,
      malformed: (reason) => calls.push(`malformed ${reason}`),
    });
    reader.push(bytes(inSubmit, unlinkPdu(2, 1)));
    expect(calls).toEqual(["admit 1", "submit 1", "unlink 2"]);
    expect(guest.every((b) => b === CANARY)).toBe(true);
  });

  it("delivers iso descriptors after the OUT data, for OUT and IN iso submits", () => {
    const iso = [
      { offset: 0, length: 8, actualLength: 0, status: 0 },
      { offset: 8, length: 8, actualLength: 0, status: -18 },
      { offset: 16, length: 4, actualLength: 0, status: 0 },
    ];
    const isoOut = outSubmit(1, pattern(20, 3), iso);
    const isoIn: SubmitPdu = {
      ...outSubmit(2, new Uint8Array(0), iso),
      directionIn: true,
      transferBufferLength: 20,
    };
    const sink = new ScriptedSink();
    feed(readerWith(sink), cut(bytes(isoOut, isoIn), [1]));
    expect(sink.calls).toEqual(expectedCalls([isoOut, isoIn]));
    const submits = sink.calls.filter((c) => c.call === "submit");
    expect(submits.map((c) => c.h.packets)).toEqual([3, 3]);
    expect(submits.map((c) => c.iso.length)).toEqual([48, 48]);
  });

  it("a 1024-packet IN submit of the largest length is framed, not refused", () => {
    const iso = Array.from({ length: MAX_ISO_PACKETS }, (_, i) => ({
      offset: i * 4,
      length: 4,
      actualLength: 0,
      status: 0,
    }));
    const big: SubmitPdu = {
      ...outSubmit(9, new Uint8Array(0), iso),
      directionIn: true,
      transferBufferLength: MAX_BUFFER_LENGTH,
    };
    const sink = new ScriptedSink();
    feed(readerWith(sink), [bytes(big)]);
    expect(sink.calls).toEqual(expectedCalls([big]));
  });
});

describe("UrbReader: a refused header blocks the reader", () => {
  it("consumes nothing after the refused header until resume(), then admits the same header again", () => {
    const data = pattern(10, 4);
    const first = outSubmit(1, data);
    const sink = new ScriptedSink((i) => ({ blocks: i === 0 ? 1 : 0, land: true }));
    const reader = readerWith(sink);

    reader.push(bytes(first, unlinkPdu(2, 1)));
    expect(sink.calls).toEqual([{ call: "admit", h: headerOf(first) }]);
    expect(reader.isBlocked).toBe(true);
    expect(reader.pending).toBe(data.length + URB_HEADER_SIZE);
    expect(reader.incomplete).toBe(URB_HEADER_SIZE + data.length + URB_HEADER_SIZE);

    // More bytes while blocked are kept, not read: no call, no data anywhere.
    const partial = encode(unlinkPdu(3, 1)).subarray(0, 5);
    reader.push(Buffer.from(partial));
    reader.push(Buffer.alloc(0));
    expect(sink.calls).toHaveLength(1);
    expect(reader.isBlocked).toBe(true);
    expect(reader.pending).toBe(data.length + URB_HEADER_SIZE + 5);
    expect(sink.guest.every((b) => b === CANARY)).toBe(true);

    reader.resume();
    expect(sink.calls).toEqual([
      { call: "admit", h: headerOf(first) },
      { call: "admit", h: headerOf(first) },
      { call: "submit", h: headerOf(first), iso: new Uint8Array(0) },
      { call: "unlink", seqnum: 2, devid: 0x1_0002, unlinkSeqnum: 1 },
    ]);
    expect(reader.isBlocked).toBe(false);
    // The 5 bytes of the next header are read into it: no longer pending, still incomplete.
    expect(reader.pending).toBe(0);
    expect(reader.incomplete).toBe(5);
    const at = sink.offsets.get(0)!;
    expect(sink.guest.subarray(at, at + data.length)).toEqual(data);
  });

  it("blocks on a header whose bytes arrived in pieces and resumes with the rest still to come", () => {
    const data = pattern(100, 5);
    const first = outSubmit(1, data);
    const sink = new ScriptedSink((i) => ({ blocks: i === 0 ? 2 : 0, land: true }));
    const reader = readerWith(sink);
    const stream = bytes(first, unlinkPdu(2, 1));

    for (const s of cut(stream.subarray(0, URB_HEADER_SIZE + 30), [1, 3])) reader.push(s);
    expect(reader.isBlocked).toBe(true);
    expect(reader.pending).toBe(30);
    reader.resume(); // refused once more
    expect(reader.isBlocked).toBe(true);
    expect(sink.calls.filter((c) => c.call === "admit")).toHaveLength(2);
    reader.resume();
    expect(reader.isBlocked).toBe(false);
    expect(reader.incomplete).toBe(URB_HEADER_SIZE + 30);
    reader.push(stream.subarray(URB_HEADER_SIZE + 30));
    expect(sink.calls).toEqual(
      expectedCalls([first, unlinkPdu(2, 1)], (i) => ({ blocks: i === 0 ? 2 : 0, land: true })),
    );
    const at = sink.offsets.get(0)!;
    expect(sink.guest.subarray(at, at + data.length)).toEqual(data);
  });

  it("forgets a target named by an admit() that then refused: the retry decides alone", () => {
    const data = pattern(32, 14);
    const guest = new Uint8Array(64).fill(CANARY);
    let tries = 0;
    const calls: string[] = [];
    const reader: UrbReader = new UrbReader({
      admit() {
        tries++;
        if (tries === 1) {
          reader.receiveInto(guest, 0);
          return false;
        }
        return true; // admitted without a target: the data is dropped
      },
      submit: (h) => calls.push(`submit ${h.seqnum}`),
      unlink: (seqnum) => calls.push(`unlink ${seqnum}`) > 0,
      malformed: (reason) => calls.push(`malformed ${reason}`),
    });
    reader.push(bytes(outSubmit(1, data), unlinkPdu(2, 1)));
    expect(reader.isBlocked).toBe(true);
    reader.resume();
    expect(calls).toEqual(["submit 1", "unlink 2"]);
    expect(guest.every((b) => b === CANARY)).toBe(true);
  });

  it("resume() when not blocked calls nothing", () => {
    const sink = new ScriptedSink();
    const reader = readerWith(sink);
    reader.push(bytes(outSubmit(1, pattern(4, 6))).subarray(0, URB_HEADER_SIZE + 2));
    const before = sink.calls.length;
    reader.resume();
    expect(sink.calls).toHaveLength(before);
    expect(reader.isBlocked).toBe(false);
  });

  it("a sink that stops the reader inside admit() ends reading without blocking", () => {
    const calls: string[] = [];
    const reader: UrbReader = new UrbReader({
      admit(h) {
        calls.push(`admit ${h.seqnum}`);
        reader.stop(); // as the server's drop() does, then refuses
        return false;
      },
      submit: (h) => calls.push(`submit ${h.seqnum}`),
      unlink: (seqnum) => calls.push(`unlink ${seqnum}`) > 0,
      malformed: (reason) => calls.push(`malformed ${reason}`),
    });
    reader.push(bytes(outSubmit(1, pattern(8, 7)), unlinkPdu(2, 1)));
    reader.push(bytes(unlinkPdu(3, 1)));
    reader.resume();
    expect(calls).toEqual(["admit 1"]);
    expect(reader.isBlocked).toBe(false);
    expect(reader.pending).toBe(0);
    expect(reader.incomplete).toBe(0);
  });
});

describe("UrbReader: framing errors end the stream", () => {
  /** A valid header-only IN submit, then `patch` applied to its header. */
  function badHeader(patch: (v: DataView) => void): Buffer {
    const h = Buffer.from(
      encode({ ...outSubmit(1, new Uint8Array(0)), directionIn: true, transferBufferLength: 8 }),
    );
    patch(new DataView(h.buffer, h.byteOffset, URB_HEADER_SIZE));
    return h;
  }

  const cases: readonly { readonly what: string; readonly header: Buffer; readonly reason: RegExp }[] = [
    {
      what: "an unknown command",
      header: badHeader((v) => v.setUint32(0, 5)),
      reason: /unknown command 0x5/,
    },
    {
      what: "a RET_SUBMIT sent by the client",
      header: badHeader((v) => v.setUint32(0, 3)),
      reason: /unknown command 0x3/,
    },
    {
      what: "direction 2 in a CMD_SUBMIT",
      header: badHeader((v) => v.setUint32(12, 2)),
      reason: /direction 2 is neither 0 nor 1/,
    },
    {
      what: "direction 2 in a CMD_UNLINK",
      header: (() => {
        const h = Buffer.from(encode(unlinkPdu(1, 0)));
        h.writeUInt32BE(2, 12);
        return h;
      })(),
      reason: /direction 2 is neither 0 nor 1/,
    },
    {
      what: "a transfer_buffer_length over MAX_BUFFER_LENGTH",
      header: badHeader((v) => v.setInt32(24, MAX_BUFFER_LENGTH + 1)),
      reason: new RegExp(`transfer_buffer_length ${MAX_BUFFER_LENGTH + 1} is outside`),
    },
    {
      what: "a negative transfer_buffer_length",
      header: badHeader((v) => v.setInt32(24, -1)),
      reason: /transfer_buffer_length -1 is outside/,
    },
    {
      what: "a number_of_packets over MAX_ISO_PACKETS",
      header: badHeader((v) => v.setUint32(32, MAX_ISO_PACKETS + 1)),
      reason: new RegExp(`number_of_packets ${MAX_ISO_PACKETS + 1} is above ${MAX_ISO_PACKETS}`),
    },
    {
      what: "a number_of_packets of -2",
      header: badHeader((v) => v.setInt32(32, -2)),
      reason: /number_of_packets 4294967294 is above/,
    },
    {
      what: "a management request (0x0111xxxx) after import",
      header: (() => {
        const h = Buffer.alloc(URB_HEADER_SIZE);
        h.set(encodeDevlistRequest());
        return h;
      })(),
      reason: /management request after import/,
    },
  ];

  for (const c of cases) {
    it(`reports ${c.what} as malformed and reads nothing afterwards`, () => {
      const before = unlinkPdu(7, 6);
      const sink = new ScriptedSink();
      const reader = readerWith(sink);
      // A whole PDU before it is delivered; the valid PDU right after it in the same chunk is not.
      reader.push(Buffer.concat([encode(before), c.header, encode(unlinkPdu(8, 6))]));
      expect(sink.calls).toHaveLength(2);
      expect(sink.calls[0]).toEqual({ call: "unlink", seqnum: 7, devid: 0x1_0002, unlinkSeqnum: 6 });
      const last = sink.calls[1]!;
      expect(last.call).toBe("malformed");
      expect(last.call === "malformed" && last.reason).toMatch(c.reason);

      reader.push(bytes(unlinkPdu(9, 6), outSubmit(10, pattern(4, 8))));
      reader.resume();
      expect(sink.calls).toHaveLength(2);
      expect(reader.pending).toBe(0);
      expect(reader.incomplete).toBe(0);
      expect(reader.isBlocked).toBe(false);
    });
  }

  it("finds a bad header cut into 1-byte segments exactly once", () => {
    const sink = new ScriptedSink();
    const reader = readerWith(sink);
    feed(reader, cut(Buffer.concat([encode(outSubmit(1, pattern(3, 9))), cases[0]!.header]), [1]));
    expect(sink.calls.map((c) => c.call)).toEqual(["admit", "submit", "malformed"]);
  });
});

describe("UrbReader: incomplete counts the bytes of PDUs not yet whole", () => {
  it("counts a partial header, a header with part of its data, and part of the iso descriptors", () => {
    const iso = [
      { offset: 0, length: 4, actualLength: 0, status: 0 },
      { offset: 4, length: 4, actualLength: 0, status: 0 },
    ];
    const pdu = outSubmit(1, pattern(8, 10), iso);
    const stream = bytes(pdu);
    expect(stream.length).toBe(URB_HEADER_SIZE + 8 + 32);
    const sink = new ScriptedSink();
    const reader = readerWith(sink);
    expect(reader.incomplete).toBe(0);

    const stops = [30, URB_HEADER_SIZE, URB_HEADER_SIZE + 5, URB_HEADER_SIZE + 8, URB_HEADER_SIZE + 8 + 20];
    let at = 0;
    for (const stop of stops) {
      reader.push(stream.subarray(at, stop));
      at = stop;
      expect(reader.incomplete).toBe(stop);
      expect(sink.calls.some((c) => c.call === "submit")).toBe(false);
    }
    // The rest, and the start of the next PDU.
    reader.push(Buffer.concat([stream.subarray(at), encode(unlinkPdu(2, 1)).subarray(0, 11)]));
    expect(sink.calls.map((c) => c.call)).toEqual(["admit", "submit"]);
    expect(reader.incomplete).toBe(11);
    expect(reader.pending).toBe(0);
  });

  it("counts the dropped part of OUT data admitted without a target", () => {
    const sink = new ScriptedSink(() => ({ blocks: 0, land: false }));
    const reader = readerWith(sink);
    reader.push(bytes(outSubmit(1, pattern(1000, 11))).subarray(0, URB_HEADER_SIZE + 400));
    expect(reader.incomplete).toBe(URB_HEADER_SIZE + 400);
  });
});

describe("UrbReader: work is linear in the bytes", () => {
  it("takes 512 KiB of OUT data as 524,288 one-byte Buffers", { timeout: 20_000 }, () => {
    const length = 512 * 1024;
    const data = pattern(length, 12);
    const stream = bytes(outSubmit(1, data), unlinkPdu(2, 1));
    const sink = new ScriptedSink(() => ADMIT, length + 2 * GAP);
    const reader = readerWith(sink);
    for (let i = 0; i < stream.length; i++) reader.push(stream.subarray(i, i + 1));

    expect(sink.calls.map((c) => c.call)).toEqual(["admit", "submit", "unlink"]);
    const at = sink.offsets.get(0)!;
    expect(Buffer.from(sink.guest.subarray(at, at + length)).equals(Buffer.from(data))).toBe(true);
    expect(reader.pending).toBe(0);
    expect(reader.incomplete).toBe(0);
  });

  it("takes 512 KiB of one-byte Buffers pushed while blocked, in one resume()", { timeout: 20_000 }, () => {
    const length = 512 * 1024;
    const data = pattern(length, 13);
    const stream = bytes(outSubmit(1, data), unlinkPdu(2, 1));
    const sink = new ScriptedSink((i) => ({ blocks: i === 0 ? 1 : 0, land: true }), length + 2 * GAP);
    const reader = readerWith(sink);
    for (let i = 0; i < stream.length; i++) reader.push(stream.subarray(i, i + 1));
    expect(reader.isBlocked).toBe(true);
    expect(reader.pending).toBe(stream.length - URB_HEADER_SIZE);

    reader.resume();
    expect(sink.calls.map((c) => c.call)).toEqual(["admit", "admit", "submit", "unlink"]);
    const at = sink.offsets.get(0)!;
    expect(Buffer.from(sink.guest.subarray(at, at + length)).equals(Buffer.from(data))).toBe(true);
    expect(reader.pending).toBe(0);
  });
});
