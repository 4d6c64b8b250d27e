/**
 * Address spaces of guest memory and grants, one brand each (rust-vmm
 * vm-memory style): a frame number is not a byte offset is not a grant ref.
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
