/**
 * Address spaces of guest memory and grants, one brand each (rust-vmm
 * vm-memory style): a frame number is not a byte offset is not a grant ref.
 * Every conversion between frames and bytes is a named helper in this file
 * (frameToOffset, offsetToFrame, offsetInFrame, framesToBytes, bytesToFrames,
 * framesSpanned), beside the checked constructors (guestFrame, grantRef,
 * domId); no module outside src/dma-map multiplies, divides or shifts by the
 * frame size itself (test/dma-map/frame-arithmetic.test.ts keeps it so).
 */
import type { Brand } from "../util/brand.js";

/** Size of one guest frame (page) in bytes. */
export const FRAME_SIZE = 4096;
export const FRAME_SHIFT = 12;

/** Index of a 4 KiB frame in guest memory. */
export type GuestFrame = Brand<number, "GuestFrame">;
/** Byte offset in guest memory. */
export type GuestOffset = Brand<number, "GuestOffset">;
/** Index of an entry in a grant table. */
export type GrantRef = Brand<number, "GrantRef">;
/** Domain id: who owns a grant (the frontend) and who may map it (the backend). */
export type DomId = Brand<number, "DomId">;

/** Xen's DOMID_FIRST_RESERVED: ids from here up name pseudo-domains, never a real peer. */
export const DOMID_FIRST_RESERVED = 0x7ff0;

/**
 * True when `value` is an integer in [0, 2^32): the only values a u32 wire
 * field can carry. Rejects negatives, NaN, ±Infinity, fractions, ≥ 2^32 and
 * non-numbers in one comparison (`>>> 0` maps each of them to another value).
 */
export function isU32(value: unknown): value is number {
  return typeof value === "number" && value >>> 0 === value;
}

/**
 * True when `value` can be a guest byte offset: an integer in [0, 2^53).
 * Whether it lies inside guest memory is the memory's to say.
 */
export function isGuestOffset(value: unknown): value is GuestOffset {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** Byte length of `frames` whole frames. */
export function framesToBytes(frames: number): number {
  return frames * FRAME_SIZE;
}

/** Whole frames needed to hold `bytes` bytes (rounded up). */
export function bytesToFrames(bytes: number): number {
  return Math.ceil(bytes / FRAME_SIZE);
}

/** Byte offset in guest memory of the first byte of `frame`. */
export function frameToOffset(frame: GuestFrame): GuestOffset {
  return (frame * FRAME_SIZE) as GuestOffset;
}

/** The frame holding guest byte `offset`. */
export function offsetToFrame(offset: GuestOffset): GuestFrame {
  return Math.floor(offset / FRAME_SIZE) as GuestFrame;
}

/** Where guest byte `offset` lies within its frame: 0 ≤ result < FRAME_SIZE. */
export function offsetInFrame(offset: GuestOffset): number {
  return offset % FRAME_SIZE;
}

/** Frames spanned by `length` ≥ 1 bytes starting at guest byte `offset`. */
export function framesSpanned(offset: GuestOffset, length: number): number {
  return Math.floor((offset + length - 1) / FRAME_SIZE) - Math.floor(offset / FRAME_SIZE) + 1;
}

/** Brand a frame number; throws RangeError unless it is a u32. */
export function guestFrame(value: number): GuestFrame {
  if (!isU32(value)) throw new RangeError(`guest frame must be an integer in [0, 2^32), got ${value}`);
  return value as GuestFrame;
}

/** Brand a grant reference; throws RangeError unless it is a u32 (the table checks its own size). */
export function grantRef(value: number): GrantRef {
  if (!isU32(value)) throw new RangeError(`grant ref must be an integer in [0, 2^32), got ${value}`);
  return value as GrantRef;
}

/** Brand a domain id; throws RangeError unless it is a real domain (u16 below DOMID_FIRST_RESERVED). */
export function domId(value: number): DomId {
  if (!Number.isInteger(value) || value < 0 || value >= DOMID_FIRST_RESERVED) {
    throw new RangeError(`domain id must be an integer in [0, ${DOMID_FIRST_RESERVED}), got ${value}`);
  }
  return value as DomId;
}
