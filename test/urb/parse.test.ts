/**
 * The parse gate against the generator's expected verdicts (every corruption kind, every reason code), plus
 * hand-written cases named after the rule they pin down.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { GrantRef } from "../../src/dma-map/types.js";
import { encodeIndirectSegments } from "../../src/urb/codec.js";
import { FLAG_INDIRECT, kReqSegments, kReqTransferFlags, URB_SLOT_SIZE } from "../../src/urb/layout.js";
import { MAX_BUFFER_LENGTH } from "../../src/urb/limits.js";
import { parseIndirectSegments, parseRequest } from "../../src/urb/parse.js";
import { PARSE_REASONS, type ParseReason } from "../../src/urb/reasons.js";
import { EINVAL, EMSGSIZE } from "../../src/urb/status.js";
import {
  type BulkUrb,
  type ControlUrb,
  Direction,
  devAddr,
  endpointNum,
  portNum,
  TransferType,
  type UnlinkUrb,
  type UrbRequest,
  urbId,
} from "../../src/urb/types.js";
import {
  arbCase,
  arbIndirectCase,
  CASE_LABELS,
  encoded,
  type GenCase,
  INDIRECT_CASE_LABELS,
  type IndirectCase,
} from "./gen.js";

const ref = (n: number) => n as GrantRef;

/** GET_DESCRIPTOR(device, 18 bytes) to the default address: the first request of every enumeration. */
const getDeviceDescriptor: ControlUrb = {
  kind: "control",
  id: urbId(7),
  port: portNum(1),
  device: devAddr(0),
  endpoint: endpointNum(0),
  direction: Direction.In,
  bufferLength: 18,
  buffer: { kind: "inline", segments: [{ ref: ref(5), offset: 0x100, length: 18 }] },
  shortNotOk: false,
  setup: { bmRequestType: 0x80, bRequest: 6, wValue: 0x0100, wIndex: 0, wLength: 18 },
};

const bulkOut: BulkUrb = {
  kind: "bulk",
  streamId: 0,
  id: urbId(9),
  port: portNum(2),
  device: devAddr(3),
  endpoint: endpointNum(1),
  direction: Direction.Out,
  bufferLength: 4096 + 512,
  buffer: {
    kind: "inline",
    segments: [
      { ref: ref(10), offset: 0, length: 4096 },
      { ref: ref(11), offset: 0, length: 512 },
    ],
  },
  shortNotOk: false,
  zeroPacket: true,
};

function reasonOf(req: UrbRequest | Uint8Array): ParseReason | "ok" {
  const result = parseRequest(req instanceof Uint8Array ? req : encoded(req));
  return result.ok ? "ok" : result.reason;
}

function checkCase(c: GenCase): ParseReason | "ok" {
  const result = parseRequest(c.bytes);
  const expected = c.expected;
  if (expected.ok === true) {
    expect(result).toEqual({ ok: true, req: expected.req });
  } else if (expected.ok === false) {
    expect(result).toEqual(expected);
  } else if (result.ok) {
    // Every unused octet must be zero for a request to pass, so re-encoding reproduces the input exactly.
    expect(encoded(result.req)).toEqual(c.bytes);
  } else {
    expect([EINVAL, EMSGSIZE]).toContain(result.status);
  }
  return result.ok ? "ok" : result.reason;
}

describe("parseRequest against generated cases", () => {
  it("gives the expected verdict for valid, corrupted, wrong-size and garbage slots, covering every reason", () => {
    const labels = new Set<string>();
    const reasons = new Set<string>();
    fc.assert(
      fc.property(arbCase, (c) => {
        labels.add(c.label);
        reasons.add(checkCase(c));
      }),
      { numRuns: 20_000 },
    );
    expect([...CASE_LABELS].filter((l) => !labels.has(l))).toEqual([]);
    // These belong to the indirect-page and iso-descriptor gates (tested below and in iso.test.ts).
    const laterGates: ParseReason[] = [
      "truncated-indirect-page",
      "truncated-iso-descriptors",
      "iso-packet-too-long",
      "iso-packet-outside-buffer",
    ];
    const requestReasons = PARSE_REASONS.filter((r) => !laterGates.includes(r));
    expect(requestReasons.filter((r) => !reasons.has(r))).toEqual([]);
    expect(reasons.has("ok")).toBe(true);
  });

  it("never throws, whatever the bytes and their length", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 2 * URB_SLOT_SIZE }), (bytes) => {
        const result = parseRequest(bytes);
        expect(typeof result.ok).toBe("boolean");
      }),
      { numRuns: 10_000 },
    );
  });

  it("reads a slot that is a subarray of a larger buffer (a ring's private copy area)", () => {
    const area = new Uint8Array(3 * URB_SLOT_SIZE).fill(0xee);
    area.set(encoded(getDeviceDescriptor), URB_SLOT_SIZE);
    expect(parseRequest(area.subarray(URB_SLOT_SIZE, 2 * URB_SLOT_SIZE))).toEqual({
      ok: true,
      req: getDeviceDescriptor,
    });
  });
});

describe("parseRequest rules", () => {
  it("accepts GET_DESCRIPTOR(device) sent to the default address 0", () => {
    expect(parseRequest(encoded(getDeviceDescriptor))).toEqual({ ok: true, req: getDeviceDescriptor });
  });

  it("rejects a control URB whose wLength exceeds buffer_length", () => {
    const bytes = encoded({ ...getDeviceDescriptor, setup: { ...getDeviceDescriptor.setup, wLength: 64 } });
    expect(parseRequest(bytes)).toEqual({
      ok: false,
      id: getDeviceDescriptor.id,
      status: EINVAL,
      reason: "control-wlength-exceeds-buffer",
    });
  });

  it("accepts a control IN whose buffer is longer than wLength (usbhid pads IN buffers to the packet size)", () => {
    expect(reasonOf({ ...getDeviceDescriptor, setup: { ...getDeviceDescriptor.setup, wLength: 9 } })).toBe(
      "ok",
    );
  });

  it("rejects a control IN whose buffer is longer than 0xffff bytes, whatever its wLength (no data stage is longer)", () => {
    const big = 0x10000;
    const bytes = encoded({
      ...getDeviceDescriptor,
      bufferLength: big,
      buffer: { kind: "inline", segments: [{ ref: ref(5), offset: 0, length: big }] },
    });
    expect(parseRequest(bytes)).toEqual({
      ok: false,
      id: getDeviceDescriptor.id,
      status: EINVAL,
      reason: "control-buffer-too-long",
    });
    const padded = encoded({
      ...getDeviceDescriptor,
      bufferLength: 0xffff,
      buffer: { kind: "inline", segments: [{ ref: ref(5), offset: 0, length: 0xffff }] },
    });
    expect(reasonOf(padded)).toBe("ok");
  });

  it("rejects a control OUT whose buffer_length differs from wLength", () => {
    const setReport: ControlUrb = {
      ...getDeviceDescriptor,
      direction: Direction.Out,
      setup: { bmRequestType: 0x21, bRequest: 9, wValue: 0x0200, wIndex: 0, wLength: 8 },
    };
    expect(reasonOf(setReport)).toBe("control-out-length-mismatch");
    expect(reasonOf({ ...setReport, setup: { ...setReport.setup, wLength: 18 } })).toBe("ok");
  });

  it("rejects a control IN whose setup packet says host-to-device", () => {
    const bytes = encoded({
      ...getDeviceDescriptor,
      setup: { ...getDeviceDescriptor.setup, bmRequestType: 0x00 },
    });
    expect(reasonOf(bytes)).toBe("control-direction-mismatch");
  });

  it("accepts a request without data stage (SET_CONFIGURATION) whatever the pipe direction", () => {
    const setConfiguration: ControlUrb = {
      ...getDeviceDescriptor,
      bufferLength: 0,
      buffer: { kind: "none" },
      setup: { bmRequestType: 0x00, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 },
    };
    expect(reasonOf({ ...setConfiguration, direction: Direction.Out })).toBe("ok");
    expect(reasonOf({ ...setConfiguration, direction: Direction.In })).toBe("ok");
  });

  it("accepts a control transfer on an endpoint other than 0", () => {
    expect(reasonOf({ ...getDeviceDescriptor, endpoint: endpointNum(15) })).toBe("ok");
  });

  it("rejects a bulk URB on endpoint 0", () => {
    expect(reasonOf({ ...bulkOut, endpoint: endpointNum(0) })).toBe("endpoint-zero-not-control");
  });

  it("rejects ZERO_PACKET on a bulk IN (it only means something for OUT)", () => {
    expect(reasonOf({ ...bulkOut, direction: Direction.In })).toBe("flag-not-valid-for-transfer");
    expect(reasonOf(bulkOut)).toBe("ok");
  });

  it("rejects segments whose lengths do not add up to buffer_length", () => {
    expect(reasonOf({ ...bulkOut, bufferLength: 4096 })).toBe("segment-length-mismatch");
  });

  it("reports a buffer above 4 MiB as -EMSGSIZE (too big), not -EINVAL (malformed)", () => {
    const result = parseRequest(encoded({ ...bulkOut, bufferLength: MAX_BUFFER_LENGTH + 1 }));
    expect(result).toMatchObject({ ok: false, status: EMSGSIZE, reason: "buffer-too-long" });
  });

  it("rejects a stray byte in a segment slot beyond nr_segs instead of ignoring it", () => {
    const bytes = encoded(bulkOut);
    bytes[kReqSegments + 2 * 12 + 8] = 1;
    expect(reasonOf(bytes)).toBe("reserved-bytes-nonzero");
  });

  it("treats port 32 as what the 5-bit field holds: port 0 with the unlink bit, out of range", () => {
    const bytes = encoded(bulkOut);
    bytes[4] = (bytes[4]! & ~0x3f) | 32;
    expect(reasonOf(bytes)).toBe("port-out-of-range");
  });

  it("answers a slot too short to hold an id with a null id, and a longer one with its id", () => {
    expect(parseRequest(new Uint8Array(3))).toEqual({
      ok: false,
      id: null,
      status: EINVAL,
      reason: "bad-slot-size",
    });
    const long = new Uint8Array(URB_SLOT_SIZE + 1);
    long.set(encoded(bulkOut));
    expect(parseRequest(long)).toMatchObject({ ok: false, id: bulkOut.id, reason: "bad-slot-size" });
  });

  it("parses an indirect URB into its page descriptor and count, leaving the segments for the second gate", () => {
    const indirect: BulkUrb = {
      ...bulkOut,
      bufferLength: 20 * 4096,
      buffer: {
        kind: "indirect",
        page: { ref: ref(99), offset: 4096 - 20 * 12, length: 20 * 12 },
        count: 20,
      },
    };
    expect(parseRequest(encoded(indirect))).toEqual({ ok: true, req: indirect });
    const crossing = encoded({
      ...indirect,
      buffer: { kind: "indirect", page: { ref: ref(99), offset: 4000, length: 240 }, count: 20 },
    });
    expect(reasonOf(crossing)).toBe("indirect-page-crosses-frame");
  });

  it("rejects INDIRECT with nr_segs 0", () => {
    const bytes = encoded(bulkOut);
    bytes[kReqTransferFlags + 1] = FLAG_INDIRECT >>> 8;
    bytes[10] = 0;
    expect(reasonOf(bytes)).toBe("indirect-empty");
  });

  it("parses an unlink and keeps the cancelled URB's pipe", () => {
    const unlink: UnlinkUrb = {
      kind: "unlink",
      id: urbId(10),
      port: portNum(2),
      device: devAddr(3),
      endpoint: endpointNum(1),
      direction: Direction.Out,
      targetType: TransferType.Bulk,
      unlinkId: bulkOut.id,
    };
    expect(parseRequest(encoded(unlink))).toEqual({ ok: true, req: unlink });
    expect(reasonOf({ ...unlink, unlinkId: unlink.id })).toBe("unlink-targets-itself");
  });
});

describe("parseIndirectSegments", () => {
  it("gives the expected verdict for valid and corrupted indirect pages, covering each corruption", () => {
    const labels = new Set<string>();
    fc.assert(
      fc.property(arbIndirectCase, (c: IndirectCase) => {
        labels.add(c.label);
        expect(parseIndirectSegments(c.page, c.count, c.bufferLength)).toEqual(c.expected);
      }),
      { numRuns: 1_000 },
    );
    expect([...INDIRECT_CASE_LABELS].filter((l) => !labels.has(l))).toEqual([]);
  });

  it("reads only count × 12 bytes of a whole copied page", () => {
    const page = new Uint8Array(4096).fill(0xff);
    const segments = [
      { ref: ref(1), offset: 0, length: 4096 },
      { ref: ref(2), offset: 100, length: 1 },
    ];
    encodeIndirectSegments(segments, page);
    expect(parseIndirectSegments(page, 2, 4097)).toEqual({ ok: true, segments });
  });

  it("rejects a count of 0 and a buffer_length above the limit without reading the page", () => {
    expect(parseIndirectSegments(new Uint8Array(0), 0, 0)).toMatchObject({
      ok: false,
      reason: "indirect-empty",
    });
    expect(parseIndirectSegments(new Uint8Array(12), 1, MAX_BUFFER_LENGTH + 1)).toMatchObject({
      ok: false,
      status: EMSGSIZE,
      reason: "buffer-too-long",
    });
  });
});
