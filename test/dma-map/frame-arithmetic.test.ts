/**
 * src/dma-map/types.ts owns the arithmetic between guest frames and bytes (frameToOffset, offsetToFrame,
 * offsetInFrame, framesToBytes, bytesToFrames, framesSpanned). These tests pin what each helper means, and
 * read the sources so that a file outside src/dma-map that multiplies, divides or takes a remainder by
 * FRAME_SIZE, uses FRAME_SHIFT, or shifts by 12 fails here, naming the line. FRAME_SIZE as a bound, an
 * alignment or a buffer's size is not arithmetic and stays allowed.
 */
import { readFileSync } from "node:fs";
import { relative } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  bytesToFrames,
  FRAME_SIZE,
  framesSpanned,
  framesToBytes,
  frameToOffset,
  type GuestOffset,
  guestFrame,
  isGuestOffset,
  offsetInFrame,
  offsetToFrame,
} from "../../src/dma-map/types.js";
import { SRC, tsFiles } from "../support/source-files.js";

/** `*`, `/` or `%` next to FRAME_SIZE; any FRAME_SHIFT; a shift by 12. */
const HAND_ARITHMETIC = /[*/%]\s*FRAME_SIZE\b|\bFRAME_SIZE\s*[*/%]|\bFRAME_SHIFT\b|(?:<<|>>>?)\s*12\b/;

/** The code lines of `source` (comment lines and trailing `//` comments dropped) that do frame arithmetic by hand. */
function handFrameArithmetic(source: string): string[] {
  return source
    .split("\n")
    .map((line) => line.replace(/\/\/.*$/, "").trim())
    .filter((line) => !line.startsWith("*") && !line.startsWith("/*") && HAND_ARITHMETIC.test(line));
}

const offset = (n: number) => n as GuestOffset;

describe("the frame helpers", () => {
  it("convert a frame to its first byte and back", () => {
    expect(frameToOffset(guestFrame(0))).toBe(0);
    expect(frameToOffset(guestFrame(3))).toBe(3 * 4096);
    expect(offsetToFrame(offset(4095))).toBe(0);
    expect(offsetToFrame(offset(4096))).toBe(1);
    expect(offsetInFrame(offset(4096 + 17))).toBe(17);
    expect(offsetInFrame(offset(8192))).toBe(0);
  });

  it("count bytes as whole frames, rounding up", () => {
    expect(FRAME_SIZE).toBe(4096);
    expect(framesToBytes(2)).toBe(8192);
    expect(bytesToFrames(0)).toBe(0);
    expect(bytesToFrames(1)).toBe(1);
    expect(bytesToFrames(4096)).toBe(1);
    expect(bytesToFrames(4097)).toBe(2);
    expect(bytesToFrames(16 * 1024 * 1024)).toBe(4096);
  });

  it("count the frames a byte range touches", () => {
    expect(framesSpanned(offset(0), 1)).toBe(1);
    expect(framesSpanned(offset(0), 4096)).toBe(1);
    expect(framesSpanned(offset(1), 4096)).toBe(2);
    expect(framesSpanned(offset(4095), 2)).toBe(2);
    expect(framesSpanned(offset(4096 * 5), 4096 * 3)).toBe(3);
  });

  it("framesSpanned is the fewest frames, from the offset's own frame, that hold the range", () => {
    fc.assert(
      fc.property(fc.nat(1 << 30), fc.integer({ min: 1, max: 4 * FRAME_SIZE }), (at, length) => {
        const spanned = framesSpanned(offset(at), length);
        const end = offsetInFrame(offset(at)) + length; // bytes from the start of the first frame
        expect(framesToBytes(spanned)).toBeGreaterThanOrEqual(end);
        expect(framesToBytes(spanned - 1)).toBeLessThan(end);
        expect(frameToOffset(offsetToFrame(offset(at))) + offsetInFrame(offset(at))).toBe(at);
      }),
    );
  });

  it("isGuestOffset accepts exactly the integers in [0, 2^53)", () => {
    for (const ok of [0, 1, 4096, Number.MAX_SAFE_INTEGER]) expect(isGuestOffset(ok)).toBe(true);
    for (const bad of [-1, 0.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, "4096", null, undefined]) {
      expect(isGuestOffset(bad)).toBe(false);
    }
  });
});

describe("frame arithmetic lives in src/dma-map", () => {
  it("no file outside src/dma-map multiplies, divides or shifts by the frame size itself", () => {
    const files = tsFiles(SRC).filter((f) => !relative(SRC, f).startsWith("dma-map/"));
    expect(files.length).toBeGreaterThan(50);
    const found = files.flatMap((f) =>
      handFrameArithmetic(readFileSync(f, "utf8")).map((line) => `${relative(SRC, f)}: ${line}`),
    );
    expect(found).toEqual([]);
  });

  it("the scan sees each way the old code spelled it, and not a bound, an alignment or a size", () => {
    const spelled = [
      "const frame = Math.floor(range.offset / FRAME_SIZE) as GuestFrame;",
      "w.offset = offset % FRAME_SIZE;",
      "memory: (mib * 1024 * 1024) / FRAME_SIZE,",
      "const region = new GuestBufferAllocator(start, start + perDevice * FRAME_SIZE);",
      "return FRAME_SIZE * frames;",
      "const frame = offset >> 12;",
      "const frame = offset >>> 12;",
      "const at = frame << 12;",
      "const at = frame << FRAME_SHIFT;",
    ];
    for (const line of spelled) expect(handFrameArithmetic(line), line).toEqual([line]);
    const fine = [
      'import { FRAME_SIZE } from "../dma-map/types.js";',
      "private readonly pageCopy = new Uint8Array(FRAME_SIZE);",
      "return this.tryAllocate(length, length >= FRAME_SIZE ? FRAME_SIZE : 64);",
      'if (page.offset + page.length > FRAME_SIZE) return reject(id, "indirect-page-crosses-frame");',
      " * FRAME_SIZE bytes per frame; frame * FRAME_SIZE is its first byte.",
      "const x = y << 120; // frame << 12 in a comment",
    ];
    for (const line of fine) expect(handFrameArithmetic(line), line).toEqual([]);
  });
});
