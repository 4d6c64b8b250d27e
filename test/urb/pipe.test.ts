/** The usbif pipe word: bit positions as in Xen usbif.h, field round trips, no spill between fields. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodePipe, encodePipe, PIPE_RESERVED_MASK, type Pipe } from "../../src/urb/pipe.js";
import {
  type DevAddr,
  Direction,
  type EndpointNum,
  type PortNum,
  TransferType,
} from "../../src/urb/types.js";

const arbPipe: fc.Arbitrary<Pipe> = fc.record({
  port: fc.integer({ min: 1, max: 31 }).map((n) => n as PortNum),
  unlink: fc.boolean(),
  direction: fc.constantFrom(Direction.In, Direction.Out),
  device: fc.integer({ min: 0, max: 127 }).map((n) => n as DevAddr),
  endpoint: fc.integer({ min: 0, max: 15 }).map((n) => n as EndpointNum),
  type: fc.constantFrom(
    TransferType.Isochronous,
    TransferType.Interrupt,
    TransferType.Control,
    TransferType.Bulk,
  ),
});

describe("pipe word", () => {
  it("puts a bulk IN to device 5, endpoint 2, port 3 at the usbif.h bit positions", () => {
    const pipe: Pipe = {
      port: 3 as PortNum,
      unlink: false,
      direction: Direction.In,
      device: 5 as DevAddr,
      endpoint: 2 as EndpointNum,
      type: TransferType.Bulk,
    };
    // port 3 | IN 1<<7 | dev 5<<8 | ep 2<<15 | bulk 3<<30
    expect(encodePipe(pipe)).toBe(0xc0010583);
    expect(encodePipe({ ...pipe, unlink: true })).toBe(0xc00105a3);
  });

  it("reserves bit 6 and bits 19..29", () => {
    expect(PIPE_RESERVED_MASK).toBe(0x3ff80040);
  });

  it("decodes what it encodes", () => {
    fc.assert(
      fc.property(arbPipe, (pipe) => {
        const word = encodePipe(pipe);
        expect(word & PIPE_RESERVED_MASK).toBe(0);
        expect(decodePipe(word)).toEqual(pipe);
      }),
    );
  });

  it("re-encodes any word whose reserved bits are clear to the same word", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff_ffff }), (raw) => {
        const word = (raw & ~PIPE_RESERVED_MASK) >>> 0;
        expect(encodePipe(decodePipe(word))).toBe(word);
      }),
    );
  });

  it("masks an out-of-range field to its width instead of letting it set a neighbour", () => {
    const word = encodePipe({
      port: 0x3f as PortNum, // would set the unlink bit if not masked
      unlink: false,
      direction: Direction.Out,
      device: 0xff as DevAddr, // would set endpoint bit 0
      endpoint: 0x1f as EndpointNum, // would set reserved bit 19
      type: TransferType.Control,
    });
    expect(decodePipe(word)).toMatchObject({ port: 31, unlink: false, device: 127, endpoint: 15 });
    expect(word & PIPE_RESERVED_MASK).toBe(0);
  });
});
