/** Iso frame descriptor arrays: the descriptor gate's verdicts, and the per-packet result round trip. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  MAX_ISO_PACKET_LENGTH,
  parseIsoPacketDescriptors,
  readIsoPacketResult,
  writeIsoPacket,
  writeIsoPacketResult,
} from "../../src/urb/iso.js";
import { EPROTO, ESHUTDOWN, EXDEV, OK, type UrbStatus } from "../../src/urb/status.js";
import { InvalidOptionError } from "../../src/util/errors.js";
import { arbIsoDescriptorCase, ISO_DESCRIPTOR_CASE_LABELS, type IsoDescriptorCase } from "./gen.js";

describe("parseIsoPacketDescriptors", () => {
  it("gives the expected verdict for valid and corrupted descriptor arrays, covering each corruption", () => {
    const labels = new Set<string>();
    fc.assert(
      fc.property(arbIsoDescriptorCase, (c: IsoDescriptorCase) => {
        labels.add(c.label);
        expect(parseIsoPacketDescriptors(c.copied, c.numberOfPackets, c.bufferLength)).toEqual(c.expected);
      }),
      { numRuns: 400 },
    );
    expect([...ISO_DESCRIPTOR_CASE_LABELS].filter((l) => !labels.has(l))).toEqual([]);
  });

  it("accepts empty, overlapping and out-of-order packets, as Linux does", () => {
    const bytes = new Uint8Array(3 * 16);
    writeIsoPacket(bytes, 0, { offset: 100, length: 100 });
    writeIsoPacket(bytes, 1, { offset: 0, length: 150 });
    writeIsoPacket(bytes, 2, { offset: 200, length: 0 });
    expect(parseIsoPacketDescriptors(bytes, 3, 200)).toEqual({
      ok: true,
      packets: [
        { offset: 100, length: 100 },
        { offset: 0, length: 150 },
        { offset: 200, length: 0 },
      ],
    });
  });

  it("rejects a packet longer than a SuperSpeed service interval can carry with -EMSGSIZE", () => {
    const bytes = new Uint8Array(16);
    writeIsoPacket(bytes, 0, { offset: 0, length: MAX_ISO_PACKET_LENGTH + 1 });
    expect(parseIsoPacketDescriptors(bytes, 1, 4 * 1024 * 1024)).toMatchObject({
      ok: false,
      reason: "iso-packet-too-long",
    });
  });

  it("rejects 0 packets and more than 1024 before reading anything", () => {
    expect(parseIsoPacketDescriptors(new Uint8Array(0), 0, 0)).toMatchObject({ reason: "iso-no-packets" });
    expect(parseIsoPacketDescriptors(new Uint8Array(0), 1025, 0)).toMatchObject({
      reason: "too-many-iso-packets",
    });
  });
});

describe("iso packet results", () => {
  it("reads back what the backend wrote, with unknown statuses clamped to -ESHUTDOWN", () => {
    const bytes = new Uint8Array(4 * 16);
    writeIsoPacketResult(bytes, 0, OK, 192);
    writeIsoPacketResult(bytes, 1, EXDEV, 0);
    writeIsoPacketResult(bytes, 2, EPROTO, 3);
    writeIsoPacketResult(bytes, 3, -7 as UrbStatus, 1);
    expect([0, 1, 2, 3].map((i) => readIsoPacketResult(bytes, i))).toEqual([
      { status: OK, actualLength: 192 },
      { status: EXDEV, actualLength: 0 },
      { status: EPROTO, actualLength: 3 },
      { status: ESHUTDOWN, actualLength: 1 },
    ]);
  });

  it("refuses a packet index outside the descriptor array", () => {
    expect(() => writeIsoPacketResult(new Uint8Array(32), 2, OK, 0)).toThrow(InvalidOptionError);
    expect(() => readIsoPacketResult(new Uint8Array(32), -1)).toThrow(InvalidOptionError);
  });
});
