/**
 * The frontend's scratch frames: a first-fit allocator over the guest frames
 * [first, first + count) that the control plane set aside for the frontend's
 * own structures (indirect segment pages, iso packet descriptor arrays).
 * Private to one controller; a failed allocation means "wait", not "error".
 */
import type { GuestMemory } from "../dma-map/guest-memory.js";
import type { GuestFrame } from "../dma-map/types.js";
import { InvalidOptionError } from "../util/errors.js";

export class ScratchFrames {
  private readonly used: Uint8Array;
  private freeFrames: number;

  constructor(
    memory: GuestMemory,
    readonly first: number,
    readonly count: number,
  ) {
    if (!Number.isInteger(first) || first < 0 || !Number.isInteger(count) || count < 1) {
      throw new InvalidOptionError(
        `handles.scratchFirstFrame/scratchFrames must be a non-negative integer and a positive integer, got ${first}/${count}`,
      );
    }
    // Multi-frame allocations become one view: the area must sit in one region.
    if (memory.regionOfExtent(first, count) < 0) {
      throw new InvalidOptionError(
        `scratch frames [${first}, ${first + count}) must lie inside one region of guest memory`,
      );
    }
    this.used = new Uint8Array(count);
    this.freeFrames = count;
  }

  get available(): number {
    return this.freeFrames;
  }

  /** True when guest bytes [offset, offset + length) touch a scratch frame. */
  overlaps(firstFrame: number, lastFrame: number): boolean {
    return lastFrame >= this.first && firstFrame < this.first + this.count;
  }

  /** `frames` contiguous frames, or -1 when no run is free. Bounded by `count`. */
  allocate(frames: number): GuestFrame | -1 {
    if (frames > this.freeFrames) return -1;
    let run = 0;
    for (let i = 0; i < this.count; i++) {
      run = this.used[i] === 0 ? run + 1 : 0;
      if (run === frames) {
        const start = i - frames + 1;
        this.used.fill(1, start, i + 1);
        this.freeFrames -= frames;
        return (this.first + start) as GuestFrame;
      }
    }
    return -1;
  }

  release(frame: GuestFrame, frames: number): void {
    const start = frame - this.first;
    this.used.fill(0, start, start + frames);
    this.freeFrames += frames;
  }

  releaseAll(): void {
    this.used.fill(0);
    this.freeFrames = this.count;
  }
}
