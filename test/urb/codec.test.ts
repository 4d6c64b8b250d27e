/** The slot codec: request encode → parse is the identity, responses round-trip, writers stay in bounds. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { GrantSegment } from "../../src/dma-map/grant-mapper.js";
import { decodeResponse, encodeRequest, encodeResponse } from "../../src/urb/codec.js";
import { URB_RESPONSE_SIZE, URB_SLOT_SIZE } from "../../src/urb/layout.js";
import { parseRequest } from "../../src/urb/parse.js";
import { EPIPE, ESHUTDOWN, isKnownStatus, STATUS_TABLE, type UrbStatus } from "../../src/urb/status.js";
import type { Segment, UnlinkUrb, UrbId, UrbResponse } from "../../src/urb/types.js";
import { UsbvirtError } from "../../src/util/errors.js";
import { arbUrbId, arbValidUrb, encoded } from "./gen.js";

const encodedUnlink = {
  kind: "unlink",
  id: 1 as UrbId,
  port: 1,
  device: 0,
  endpoint: 0,
  direction: 0,
  targetType: 3,
  unlinkId: 2 as UrbId,
} as UnlinkUrb;

const arbKnownStatus = fc.constantFrom(...STATUS_TABLE.map((info) => info.status));
const arbU32 = fc.integer({ min: 0, max: 0xffff_ffff });
const arbResponse = fc.record({
  id: arbUrbId,
  status: arbKnownStatus,
  actualLength: arbU32,
  startFrame: arbU32,
  errorCount: arbU32,
});

describe("request codec", () => {
  it("round-trips every valid request: parse(encode(req)) is req", () => {
    fc.assert(
      fc.property(arbValidUrb(), (req) => {
        expect(parseRequest(encoded(req))).toEqual({ ok: true, req });
      }),
      { numRuns: 5_000 },
    );
  });

  it("writes the whole slot, zeroing stale octets, and nothing outside it", () => {
    fc.assert(
      fc.property(
        arbValidUrb(),
        fc.integer({ min: 0, max: 64 }),
        fc.integer({ min: 1, max: 255 }),
        (req, offset, stale) => {
          const ring = new Uint8Array(offset + URB_SLOT_SIZE + 16).fill(stale);
          encodeRequest(req, ring, offset);
          expect(ring.subarray(offset, offset + URB_SLOT_SIZE)).toEqual(encoded(req));
          expect(ring.subarray(0, offset).every((b) => b === stale)).toBe(true);
          expect(ring.subarray(offset + URB_SLOT_SIZE).every((b) => b === stale)).toBe(true);
          expect(parseRequest(ring.slice(offset, offset + URB_SLOT_SIZE))).toEqual({ ok: true, req });
        },
      ),
      { numRuns: 1_000 },
    );
  });

  it("writes into a SharedArrayBuffer-backed slot like into private memory", () => {
    fc.assert(
      fc.property(arbValidUrb(), (req) => {
        const shared = new Uint8Array(new SharedArrayBuffer(URB_SLOT_SIZE));
        encodeRequest(req, shared);
        expect(parseRequest(shared.slice())).toEqual({ ok: true, req });
      }),
      { numRuns: 200 },
    );
  });

  it("refuses a target too small for a slot with a stable error code", () => {
    fc.assert(
      fc.property(arbValidUrb(), (req) => {
        expect(() => encodeRequest(req, new Uint8Array(URB_SLOT_SIZE), 1)).toThrow(UsbvirtError);
      }),
      { numRuns: 20 },
    );
    let thrown: unknown;
    try {
      encodeRequest(encodedUnlink, new Uint8Array(URB_SLOT_SIZE - 1));
    } catch (error) {
      thrown = error;
    }
    expect((thrown as UsbvirtError).code).toBe("ERR_USBVIRT_INVALID_OPTION");
  });
});

describe("response codec", () => {
  it("round-trips every response with a known status", () => {
    fc.assert(
      fc.property(arbResponse, fc.integer({ min: 0, max: 32 }), (rsp, offset) => {
        const slot = new Uint8Array(offset + URB_SLOT_SIZE);
        encodeResponse(rsp, slot, offset);
        expect(decodeResponse(slot, offset)).toEqual(rsp);
      }),
      { numRuns: 2_000 },
    );
  });

  it("writes only the first 20 octets, leaving the rest of the request slot as it was", () => {
    const slot = new Uint8Array(URB_SLOT_SIZE).fill(0xab);
    encodeResponse({ id: 1 as UrbId, status: EPIPE, actualLength: 0, startFrame: 0, errorCount: 0 }, slot);
    expect(slot.subarray(URB_RESPONSE_SIZE).every((b) => b === 0xab)).toBe(true);
    expect([...slot.subarray(4, 8)]).toEqual([0xe0, 0xff, 0xff, 0xff]); // -32 little-endian
  });

  it("turns a status the peer made up into -ESHUTDOWN, as xen-hcd does", () => {
    fc.assert(
      fc.property(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), (raw) => {
        const slot = new Uint8Array(URB_RESPONSE_SIZE);
        encodeResponse(
          { id: 3 as UrbId, status: raw as UrbStatus, actualLength: 5, startFrame: 0, errorCount: 0 },
          slot,
        );
        const rsp: UrbResponse = decodeResponse(slot);
        expect(rsp.status).toBe(isKnownStatus(raw) ? raw : ESHUTDOWN);
      }),
      { numRuns: 2_000 },
    );
  });
});

describe("segment type", () => {
  it("is accepted by the grant mapper's segment type without conversion", () => {
    const segment: Segment = { ref: 1 as Segment["ref"], offset: 0, length: 1 };
    const forMapper: GrantSegment = segment;
    expect(forMapper).toBe(segment);
  });
});
