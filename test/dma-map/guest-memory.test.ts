/** GuestMemory: eager option validation, region lookup, views never crossing a region. */
import { describe, expect, it } from "vitest";
import { FRAME_SIZE, type GuestFrame, GuestMemory, MAX_MEMORY_REGIONS } from "../../src/dma-map/index.js";
import { InvalidOptionError } from "../../src/util/errors.js";

describe("GuestMemory options", () => {
  it("rejects empty, non-SAB, and non-frame-multiple regions with the option named", () => {
    expect(() => new GuestMemory({ regions: [] })).toThrow(/options\.regions must be a non-empty array/);
    expect(() => new GuestMemory({ regions: [new ArrayBuffer(FRAME_SIZE) as never] })).toThrow(
      /options\.regions\[0\] must be a SharedArrayBuffer/,
    );
    expect(
      () => new GuestMemory({ regions: [new SharedArrayBuffer(FRAME_SIZE), new SharedArrayBuffer(100)] }),
    ).toThrow(/options\.regions\[1\]\.byteLength must be a positive multiple of 4096, got 100/);
    expect(() => GuestMemory.create({ regionFrames: [1, 0] })).toThrow(InvalidOptionError);
    expect(() => GuestMemory.create({ regionFrames: [1.5] })).toThrow(
      /regionFrames\[0\] must be a positive integer/,
    );
    expect(() => GuestMemory.create({ regionFrames: new Array(MAX_MEMORY_REGIONS + 1).fill(1) })).toThrow(
      /at most 64/,
    );
  });
});

describe("GuestMemory regions", () => {
  const memory = GuestMemory.create({ regionFrames: [4, 2] });

  it("numbers frames across regions end to end", () => {
    expect(memory.frameCount).toBe(6);
    expect(memory.byteLength).toBe(6 * FRAME_SIZE);
    expect(memory.regionFirstFrame(1)).toBe(4);
  });

  it("finds the region of an extent only when it is inside one region", () => {
    expect(memory.regionOfExtent(0, 4)).toBe(0);
    expect(memory.regionOfExtent(3, 2)).toBe(-1); // crosses into region 1
    expect(memory.regionOfExtent(4, 2)).toBe(1);
    expect(memory.regionOfExtent(5, 2)).toBe(-1); // past the end
    expect(memory.regionOfExtent(6, 0)).toBe(-1);
    expect(memory.regionOfExtent(-1, 1)).toBe(-1);
    expect(memory.regionOfExtent(Number.NaN, 1)).toBe(-1);
    expect(memory.regionOfExtent(2 ** 32 - 1, 2)).toBe(-1);
  });

  it("gives views over the right region bytes and refuses crossings", () => {
    const view = memory.frameView(5 as GuestFrame);
    expect(view.buffer).toBe(memory.regions[1]);
    expect(view.byteOffset).toBe(FRAME_SIZE);
    expect(view.length).toBe(FRAME_SIZE);
    expect(memory.tryFrameView(3 as GuestFrame, 100, FRAME_SIZE)).toBeUndefined();
    expect(memory.tryFrameView(3 as GuestFrame, 100, FRAME_SIZE - 100)?.byteOffset).toBe(
      3 * FRAME_SIZE + 100,
    );
    expect(() => memory.frameView(3 as GuestFrame, 2)).toThrow(RangeError);
  });

  it("shares bytes with a second GuestMemory built over the same regions", () => {
    const other = new GuestMemory({ regions: memory.regions });
    other.frameView(4 as GuestFrame)[7] = 0xab;
    expect(memory.regionView(1)[7]).toBe(0xab);
  });
});
