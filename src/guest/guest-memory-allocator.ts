/**
 * A guest's buffer allocator: hands out byte ranges of guest memory the way
 * a guest kernel's DMA allocator would, so examples, tests and benches can
 * put URB buffers somewhere real. First-fit over a free list, bounded.
 */
import type { GuestOffset } from "../dma-map/types.js";
import { FRAME_SIZE } from "../dma-map/types.js";
import { InvalidOptionError } from "../util/errors.js";

export interface GuestRange {
  readonly offset: GuestOffset;
  readonly length: number;
}

export class GuestBufferAllocator {
  /** Free ranges [start, end), sorted, coalesced. */
  private free: { start: number; end: number }[];

  /** Manage guest bytes [start, end): keep the frontend's scratch frames out of it. */
  constructor(start: number, end: number) {
    if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start < end)) {
      throw new InvalidOptionError(`guest allocator range [${start}, ${end}) is empty or invalid`);
    }
    this.free = [{ start, end }];
  }

  /** `length` bytes aligned to `align` (default 64); throws when guest memory is exhausted. */
  allocate(length: number, align = 64): GuestRange {
    if (!Number.isInteger(length) || length < 1)
      throw new InvalidOptionError(`allocation length ${length} is invalid`);
    for (let i = 0; i < this.free.length; i++) {
      const r = this.free[i]!;
      const at = Math.ceil(r.start / align) * align;
      if (at + length > r.end) continue;
      const pieces = [];
      if (at > r.start) pieces.push({ start: r.start, end: at });
      if (at + length < r.end) pieces.push({ start: at + length, end: r.end });
      this.free.splice(i, 1, ...pieces);
      return { offset: at as GuestOffset, length };
    }
    throw new InvalidOptionError(`guest memory exhausted allocating ${length} bytes`);
  }

  /** A page-aligned allocation (DMA buffers usually are). */
  allocatePages(length: number): GuestRange {
    return this.allocate(length, FRAME_SIZE);
  }

  release(range: GuestRange): void {
    const start = range.offset as number;
    const end = start + range.length;
    const list = this.free;
    let i = 0;
    while (i < list.length && list[i]!.start < start) i++;
    list.splice(i, 0, { start, end });
    // Coalesce neighbours.
    const merged: { start: number; end: number }[] = [];
    for (const r of list) {
      const last = merged[merged.length - 1];
      if (last !== undefined && last.end >= r.start) last.end = Math.max(last.end, r.end);
      else merged.push({ ...r });
    }
    this.free = merged;
  }
}
