/**
 * A guest's buffer allocator: hands out byte ranges of guest memory the way
 * a guest kernel's DMA allocator would, so examples, tests and benches can
 * put URB buffers somewhere real. First-fit over a free list, bounded.
 */
import { FRAME_SIZE, type GuestOffset } from "../dma-map/types.js";
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
    const range = this.tryAllocate(length, align);
    if (range === null) throw new InvalidOptionError(`guest memory exhausted allocating ${length} bytes`);
    return range;
  }

  /** As allocate(), but null when no free range is large enough (a server's hot path waits instead). */
  tryAllocate(length: number, align = 64): GuestRange | null {
    if (!Number.isInteger(length) || length < 1)
      throw new InvalidOptionError(`allocation length ${length} is invalid`);
    const free = this.free;
    for (let i = 0; i < free.length; i++) {
      const r = free[i]!;
      const at = Math.ceil(r.start / align) * align;
      if (at + length > r.end) continue;
      if (at === r.start) {
        // The common case: carve from the front, no new piece.
        if (at + length === r.end) free.splice(i, 1);
        else r.start = at + length;
      } else if (at + length === r.end) {
        r.end = at;
      } else {
        free.splice(i + 1, 0, { start: at + length, end: r.end });
        r.end = at;
      }
      return { offset: at as GuestOffset, length };
    }
    return null;
  }

  /**
   * As tryAllocate(), aligned as the servers align a transfer buffer: to a frame when it is a frame or
   * longer (it then spans the fewest frames), else to 64 bytes.
   */
  tryAllocateTransfer(length: number): GuestRange | null {
    return this.tryAllocate(length, length >= FRAME_SIZE ? FRAME_SIZE : 64);
  }

  /** A page-aligned allocation (DMA buffers usually are). */
  allocatePages(length: number): GuestRange {
    return this.allocate(length, FRAME_SIZE);
  }

  /** Bytes free in total (not necessarily contiguous). */
  get freeBytes(): number {
    let total = 0;
    for (const r of this.free) total += r.end - r.start;
    return total;
  }

  release(range: GuestRange): void {
    const start = range.offset as number;
    const end = start + range.length;
    const list = this.free;
    // Binary search for the first free range after this one, then merge with the neighbours in place.
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid]!.start < start) lo = mid + 1;
      else hi = mid;
    }
    const before = lo > 0 ? list[lo - 1]! : undefined;
    const after = lo < list.length ? list[lo]! : undefined;
    const joinsBefore = before !== undefined && before.end >= start;
    const joinsAfter = after !== undefined && end >= after.start;
    if (joinsBefore && joinsAfter) {
      before.end = Math.max(after.end, end);
      list.splice(lo, 1);
    } else if (joinsBefore) {
      before.end = Math.max(before.end, end);
    } else if (joinsAfter) {
      after.start = start;
      after.end = Math.max(after.end, end);
    } else {
      list.splice(lo, 0, { start, end });
    }
  }
}
