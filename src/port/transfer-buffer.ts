/**
 * A transfer's buffer from the pinned segments the backend's gate resolved
 * (flat (region, offset, length) triples over guest memory's regions): one
 * zero-copy view when the segments lie back to back in one region, else a
 * private bounce buffer — an OUT transfer's bytes copied in at submit, an IN
 * transfer's copied back out at completion (`copyBack`). Each bounced
 * transfer is counted. This is the engine's one bounce path (the port
 * service runs it; the grant bench measures it).
 */
import { NO_DATA } from "../devices/device.js";

export interface BounceStats {
  /** Transfers that needed a bounce buffer. */
  bounceCopies: number;
  /** Their buffer lengths, added up. */
  bounceBytes: number;
}

export class TransferBuffers {
  /** True when the last `build` returned a bounce buffer (then keep a copy of the segments for copyBack). */
  bounced = false;

  constructor(
    private readonly memory: readonly SharedArrayBuffer[],
    private readonly stats: BounceStats,
  ) {}

  view(region: number, offset: number, length: number): Uint8Array {
    return new Uint8Array(this.memory[region]!, offset, length);
  }

  /** The buffer of `count` segments in `segs` adding up to `length` bytes. */
  build(segs: Uint32Array, count: number, length: number, directionIn: boolean): Uint8Array {
    this.bounced = false;
    if (count === 0) return NO_DATA;
    if (count === 1) return this.view(segs[0]!, segs[1]!, segs[2]!);
    let contiguous = true;
    for (let i = 1; i < count && contiguous; i++) {
      const p = (i - 1) * 3;
      contiguous = segs[i * 3] === segs[p] && segs[i * 3 + 1] === segs[p + 1]! + segs[p + 2]!;
    }
    if (contiguous) return this.view(segs[0]!, segs[1]!, length);
    const bounce = new Uint8Array(length);
    if (!directionIn) this.copy(segs, count, bounce, true, length);
    this.stats.bounceCopies++;
    this.stats.bounceBytes += length;
    this.bounced = true;
    return bounce;
  }

  /** An IN transfer completed with `actual` bytes in `bounce`: copy them to the segments. */
  copyBack(segs: Uint32Array, bounce: Uint8Array, actual: number): void {
    this.copy(segs, segs.length / 3, bounce, false, actual);
  }

  private copy(
    segs: Uint32Array,
    count: number,
    bounce: Uint8Array,
    intoBounce: boolean,
    limit: number,
  ): void {
    let at = 0;
    for (let i = 0; i < count * 3 && at < limit; i += 3) {
      const len = Math.min(segs[i + 2]!, limit - at);
      const v = this.view(segs[i]!, segs[i + 1]!, len);
      if (intoBounce) bounce.set(v, at);
      else v.set(bounce.subarray(at, at + len));
      at += len;
    }
  }
}
