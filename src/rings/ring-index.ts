/**
 * Free-running 32-bit ring indices (Xen io/ring.h): they wrap modulo 2^32 and
 * only their differences mean anything, so all arithmetic goes through here.
 */
import type { Brand } from "../util/brand.js";

export type RingIdx = Brand<number, "RingIdx">;

/** `(a - b) mod 2^32`: how far `a` is ahead of `b`. */
export function ringDistance(a: RingIdx, b: RingIdx): number {
  return (a - b) >>> 0;
}

/** `idx + n mod 2^32`. */
export function ringAdvance(idx: RingIdx, n: number): RingIdx {
  return ((idx + n) >>> 0) as RingIdx;
}

/** Read a shared index word (stored as Int32) as an unsigned index. */
export function asRingIdx(word: number): RingIdx {
  return (word >>> 0) as RingIdx;
}
