/**
 * Guest memory: one or more SharedArrayBuffers ("regions") laid end to end in
 * one guest-frame number space of 4 KiB frames, like rust-vmm vm-memory's
 * GuestMemoryMmap of several regions (src/guest_memory.rs). Every thread that
 * needs the memory builds its own GuestMemory over the same SABs
 * (`new GuestMemory({ regions: other.regions })`), so the data never moves.
 *
 *   frame 0                    regionFirstFrame(1)                frameCount
 *   |<------- region 0 ------->|<----------- region 1 ----------->|
 *
 * A view never straddles two regions: they are separate buffers.
 * Region arithmetic (which region holds a frame, where a view starts) stays
 * inside this class.
 */
import { InvalidOptionError } from "../util/errors.js";
import { FRAME_SIZE, framesToBytes, type GuestFrame, type GuestOffset } from "./types.js";

/** Most regions one guest memory may have; region lookups are loops bounded by it. */
export const MAX_MEMORY_REGIONS = 64;
/** Largest frame-number space: frame numbers travel as u32 on the wire. */
export const MAX_GUEST_FRAMES = 2 ** 32 - 1;

export interface GuestMemoryOptions {
  /** The regions, in frame order; each a whole number of frames. */
  readonly regions: readonly SharedArrayBuffer[];
}

export interface CreateGuestMemoryOptions {
  /** Frames per region, in frame order, e.g. `[256]` for one 1 MiB region. */
  readonly regionFrames: readonly number[];
}

export class GuestMemory {
  /** The regions, ready to post to another thread. */
  readonly regions: readonly SharedArrayBuffer[];
  /** Total frames across all regions. */
  readonly frameCount: number;
  // Private per-region tables; index i describes regions[i].
  readonly #firstFrame: number[];
  readonly #frameCounts: number[];

  /** Allocate fresh zeroed regions. */
  static create(options: CreateGuestMemoryOptions): GuestMemory {
    const sizes = options?.regionFrames;
    if (!Array.isArray(sizes) || sizes.length === 0 || sizes.length > MAX_MEMORY_REGIONS) {
      throw new InvalidOptionError(
        `options.regionFrames must be a non-empty array of at most ${MAX_MEMORY_REGIONS} frame counts`,
      );
    }
    const regions = sizes.map((frames, i) => {
      if (!Number.isInteger(frames) || frames <= 0) {
        throw new InvalidOptionError(`options.regionFrames[${i}] must be a positive integer, got ${frames}`);
      }
      return new SharedArrayBuffer(framesToBytes(frames));
    });
    return new GuestMemory({ regions });
  }

  /** Wrap existing regions (e.g. received from another thread). Validates eagerly. */
  constructor(options: GuestMemoryOptions) {
    const regions = options?.regions;
    if (!Array.isArray(regions) || regions.length === 0 || regions.length > MAX_MEMORY_REGIONS) {
      throw new InvalidOptionError(
        `options.regions must be a non-empty array of at most ${MAX_MEMORY_REGIONS} SharedArrayBuffers`,
      );
    }
    this.#firstFrame = [];
    this.#frameCounts = [];
    let total = 0;
    regions.forEach((region: unknown, i) => {
      if (!(region instanceof SharedArrayBuffer)) {
        throw new InvalidOptionError(`options.regions[${i}] must be a SharedArrayBuffer`);
      }
      if (region.byteLength === 0 || region.byteLength % FRAME_SIZE !== 0) {
        throw new InvalidOptionError(
          `options.regions[${i}].byteLength must be a positive multiple of ${FRAME_SIZE}, got ${region.byteLength}`,
        );
      }
      const frames = region.byteLength / FRAME_SIZE;
      this.#firstFrame.push(total);
      this.#frameCounts.push(frames);
      total += frames;
    });
    if (total > MAX_GUEST_FRAMES) {
      throw new InvalidOptionError(`options.regions hold ${total} frames, more than ${MAX_GUEST_FRAMES}`);
    }
    this.regions = Object.freeze([...regions]);
    this.frameCount = total;
  }

  /** Total bytes across all regions. */
  get byteLength(): number {
    return framesToBytes(this.frameCount);
  }

  /**
   * Index of the region that holds all of frames [frame, frame + frames), or -1
   * when they are outside memory or cross a region boundary. Accepts any
   * numbers (peer data): non-integers and negatives give -1. Allocation-free.
   */
  regionOfExtent(frame: number, frames: number): number {
    if (!Number.isInteger(frame) || !Number.isInteger(frames) || frame < 0 || frames < 0) return -1;
    const first = this.#firstFrame;
    const counts = this.#frameCounts;
    // Bounded by MAX_MEMORY_REGIONS (validated in the constructor).
    for (let i = 0; i < first.length; i++) {
      const start = first[i]!;
      const end = start + counts[i]!;
      if (frame >= start && frame < end) return frame + frames <= end ? i : -1;
    }
    return -1;
  }

  /** First frame of region `region` in the guest frame space. */
  regionFirstFrame(region: number): GuestFrame {
    return this.#firstFrame[region]! as GuestFrame;
  }

  /**
   * Byte offset inside its region's buffer of byte `byteOffset` of `frame`.
   * The caller has found `region` with regionOfExtent.
   */
  byteOffsetInRegion(region: number, frame: number, byteOffset: number): number {
    return framesToBytes(frame - this.#firstFrame[region]!) + byteOffset;
  }

  /** Guest-wide byte offset of byte `byteOffsetInRegion` of region `region`. */
  guestOffsetOf(region: number, byteOffsetInRegion: number): GuestOffset {
    return (framesToBytes(this.#firstFrame[region]!) + byteOffsetInRegion) as GuestOffset;
  }

  /**
   * A zero-copy view of `length` bytes starting `byteOffset` bytes into
   * `frame`, or undefined when the range leaves memory or crosses regions.
   * For trusted callers (the frontend filling its own buffers, tests);
   * the backend goes through GrantMapper.
   */
  tryFrameView(frame: GuestFrame, byteOffset: number, length: number): Uint8Array | undefined {
    if (!Number.isInteger(byteOffset) || !Number.isInteger(length) || byteOffset < 0 || length < 0) {
      return undefined;
    }
    const lastByte = byteOffset + Math.max(length, 1) - 1;
    const frames = Math.floor(lastByte / FRAME_SIZE) + 1;
    const region = this.regionOfExtent(frame, frames);
    if (region < 0) return undefined;
    return new Uint8Array(this.regions[region]!, this.byteOffsetInRegion(region, frame, byteOffset), length);
  }

  /** A zero-copy view of whole frames [frame, frame + frames); throws RangeError outside memory. */
  frameView(frame: GuestFrame, frames = 1): Uint8Array {
    const view =
      Number.isInteger(frames) && frames > 0 ? this.tryFrameView(frame, 0, framesToBytes(frames)) : undefined;
    if (view === undefined) {
      throw new RangeError(
        `frames [${frame}, ${frame} + ${frames}) are not inside one region of guest memory`,
      );
    }
    return view;
  }

  /** A view of the whole of region `region` (tests, canary fills). */
  regionView(region: number): Uint8Array {
    const sab = this.regions[region];
    if (sab === undefined) throw new RangeError(`no guest memory region ${region}`);
    return new Uint8Array(sab);
  }
}
