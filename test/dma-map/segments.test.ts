/**
 * Multi-segment buffers (usbif seg[] of {gref, offset, length}): contiguous
 * segments give one direct view, scattered ones a counted bounce buffer;
 * OUT copies in at map time, IN copies out exactly actualLength bytes at
 * completion; any fault leaves no grant pinned.
 */
import { describe, expect, it } from "vitest";
import {
  FRAME_SIZE,
  GrantFault,
  type GrantFaultCode,
  type GrantRef,
  type GrantSegment,
  type GuestFrame,
  isGrantFault,
  MAX_SEGMENTS,
  MAX_TRANSFER_BYTES,
  type MappedBuffer,
} from "../../src/dma-map/index.js";
import { BACKEND, canaryByte, fillCanary, mockGuest, snapshot } from "./support.js";

const frame = (n: number) => n as GuestFrame;

function mapped(result: MappedBuffer | GrantFaultCode): MappedBuffer {
  if (isGrantFault(result)) throw new Error(`expected a mapping, got fault ${result}`);
  return result;
}

describe("mapSegments", () => {
  it("maps back-to-back segments in one region as one direct view, counting no bounce", () => {
    const g = mockGuest([8, 4]);
    const a = g.owner.grant(BACKEND, frame(1), 1, false);
    const b = g.owner.grant(BACKEND, frame(2), 2, false);
    const segments: GrantSegment[] = [
      { ref: a, offset: 1000, length: FRAME_SIZE - 1000 },
      { ref: b, offset: 0, length: FRAME_SIZE },
      { ref: b, offset: FRAME_SIZE, length: 10 },
    ];
    const buffer = mapped(g.mapper.mapSegments(BACKEND, "write", segments));
    expect(buffer.bounced).toBe(false);
    expect(buffer.view.buffer).toBe(g.memory.regions[0]);
    expect(buffer.view.byteOffset).toBe(FRAME_SIZE + 1000);
    expect(buffer.length).toBe(FRAME_SIZE - 1000 + FRAME_SIZE + 10);
    expect(g.owner.mapCount(b)).toBe(2);
    expect(buffer.complete(buffer.length)).toBe(GrantFault.OK);
    expect(g.owner.mapCount(a) + g.owner.mapCount(b)).toBe(0);
    expect(g.mapper.stats).toMatchObject({
      directBuffers: 1,
      bouncedBuffers: 0,
      bounceCopies: 0,
      bounceBytes: 0,
    });
  });

  it("bounces frames that touch across a region boundary: they are different buffers", () => {
    const g = mockGuest([8, 4]);
    const a = g.owner.grant(BACKEND, frame(7), 1, false);
    const b = g.owner.grant(BACKEND, frame(8), 1, false);
    const buffer = mapped(
      g.mapper.mapSegments(BACKEND, "read", [
        { ref: a, offset: 0, length: FRAME_SIZE },
        { ref: b, offset: 0, length: FRAME_SIZE },
      ]),
    );
    expect(buffer.bounced).toBe(true);
    expect(buffer.release()).toBe(GrantFault.OK);
  });

  it("copies scattered OUT data into the bounce buffer at map time, in segment order", () => {
    const g = mockGuest([8, 4]);
    fillCanary(g.memory);
    const a = g.owner.grant(BACKEND, frame(5), 1, true);
    const b = g.owner.grant(BACKEND, frame(9), 1, true);
    const buffer = mapped(
      g.mapper.mapSegments(BACKEND, "read", [
        { ref: b, offset: 100, length: 50 },
        { ref: a, offset: 7, length: 30 },
      ]),
    );
    expect(buffer.bounced).toBe(true);
    const expected = [
      ...Array.from({ length: 50 }, (_, i) => canaryByte(9 * FRAME_SIZE + 100 + i)),
      ...Array.from({ length: 30 }, (_, i) => canaryByte(5 * FRAME_SIZE + 7 + i)),
    ];
    expect([...buffer.view]).toEqual(expected);
    expect(g.mapper.stats).toMatchObject({ bouncedBuffers: 1, bounceCopies: 1, bounceBytes: 80 });
    // OUT completion copies nothing back.
    const before = snapshot(g.memory);
    buffer.view.fill(0xee);
    expect(buffer.complete(80)).toBe(GrantFault.OK);
    expect(snapshot(g.memory)).toEqual(before);
    expect(g.mapper.stats.bounceCopies).toBe(1);
  });

  it("copies scattered IN data out at completion: only actualLength bytes, nothing beyond", () => {
    const g = mockGuest([8, 4]);
    const shadow = fillCanary(g.memory);
    const a = g.owner.grant(BACKEND, frame(2), 1, false);
    const b = g.owner.grant(BACKEND, frame(10), 1, false);
    const buffer = mapped(
      g.mapper.mapSegments(BACKEND, "write", [
        { ref: a, offset: 4000, length: 96 },
        { ref: b, offset: 0, length: 200 },
      ]),
    );
    expect(buffer.bounced).toBe(true);
    expect(g.mapper.stats.bounceCopies).toBe(0); // IN: nothing to copy in
    for (let i = 0; i < buffer.length; i++) buffer.view[i] = i & 0xff;
    expect(buffer.complete(120)).toBe(GrantFault.OK);
    for (let i = 0; i < 96; i++) shadow[2 * FRAME_SIZE + 4000 + i] = i;
    for (let i = 0; i < 24; i++) shadow[10 * FRAME_SIZE + i] = 96 + i;
    expect(Buffer.from(snapshot(g.memory)).equals(shadow)).toBe(true);
    expect(g.mapper.stats).toMatchObject({ bounceCopies: 1, bounceBytes: 120 });
    expect(g.owner.mapCount(a) + g.owner.mapCount(b)).toBe(0);
    expect(buffer.complete(120)).toBe(GrantFault.NOT_MAPPED);
    expect(buffer.release()).toBe(GrantFault.NOT_MAPPED);
  });

  it("rejects an impossible actualLength but still unmaps everything", () => {
    const g = mockGuest([8, 4]);
    const shadow = fillCanary(g.memory);
    const a = g.owner.grant(BACKEND, frame(0), 1, false);
    const b = g.owner.grant(BACKEND, frame(3), 1, false);
    const segs = [
      { ref: a, offset: 0, length: 10 },
      { ref: b, offset: 0, length: 10 },
    ];
    const tooLong = mapped(g.mapper.mapSegments(BACKEND, "write", segs));
    tooLong.view.fill(1);
    expect(tooLong.complete(21)).toBe(GrantFault.OUT_OF_BOUNDS);
    const negative = mapped(g.mapper.mapSegments(BACKEND, "write", segs));
    expect(negative.complete(-1)).toBe(GrantFault.OVERFLOW);
    expect(Buffer.from(snapshot(g.memory)).equals(shadow)).toBe(true);
    expect(g.owner.tryRevoke(a) && g.owner.tryRevoke(b)).toBe(true);
  });

  it("unmaps the segments already mapped when a later one faults, and returns that fault", () => {
    const g = mockGuest([8, 4]);
    const a = g.owner.grant(BACKEND, frame(0), 1, false);
    const b = g.owner.grant(BACKEND, frame(1), 1, false);
    const readonly = g.owner.grant(BACKEND, frame(2), 1, true);
    const result = g.mapper.mapSegments(BACKEND, "write", [
      { ref: a, offset: 0, length: 10 },
      { ref: b, offset: 0, length: 10 },
      { ref: readonly, offset: 0, length: 10 },
    ]);
    expect(result).toBe(GrantFault.READ_ONLY);
    for (const ref of [a, b, readonly]) expect(g.owner.mapCount(ref)).toBe(0);
    expect(g.mapper.stats.maps).toBe(g.mapper.stats.unmaps);
    const outOfRange = g.mapper.mapSegments(BACKEND, "read", [
      { ref: a, offset: 0, length: 10 },
      { ref: 77 as GrantRef, offset: 0, length: 10 },
    ]);
    expect(outOfRange).toBe(GrantFault.REF_OUT_OF_RANGE);
    expect(g.owner.mapCount(a)).toBe(0);
  });

  it("bounds the segment count and the total length before pinning anything", () => {
    const g = mockGuest([8, 4]);
    const a = g.owner.grant(BACKEND, frame(0), 1, false);
    const one = { ref: a, offset: 0, length: 1 };
    expect(g.mapper.mapSegments(BACKEND, "read", new Array(MAX_SEGMENTS + 1).fill(one))).toBe(
      GrantFault.TOO_MANY_SEGMENTS,
    );
    const huge = { ref: a, offset: 0, length: MAX_TRANSFER_BYTES / 2 + 1 };
    expect(g.mapper.mapSegments(BACKEND, "read", [huge, huge])).toBe(GrantFault.TRANSFER_TOO_LONG);
    expect(g.mapper.mapSegments(BACKEND, "read", [one, { ref: a, offset: Number.NaN, length: 1 }])).toBe(
      GrantFault.OVERFLOW,
    );
    expect(g.owner.mapCount(a)).toBe(0);
    // MAX_SEGMENTS segments of one grant pin it MAX_SEGMENTS times and unpin it as often.
    const all = mapped(g.mapper.mapSegments(BACKEND, "read", new Array(MAX_SEGMENTS).fill(one)));
    expect(g.owner.mapCount(a)).toBe(MAX_SEGMENTS);
    expect(all.release()).toBe(GrantFault.OK);
    expect(g.owner.mapCount(a)).toBe(0);
  });

  it("maps an empty segment list as an empty direct buffer", () => {
    const g = mockGuest();
    const empty = mapped(g.mapper.mapSegments(BACKEND, "write", []));
    expect(empty.length).toBe(0);
    expect(empty.bounced).toBe(false);
    expect(empty.complete(0)).toBe(GrantFault.OK);
  });
});
