/**
 * Shared layout of a usbvirt ring: Xen's front/back ring (io/ring.h) in a
 * SharedArrayBuffer. Requests and responses share the slots, so at most
 * `slots` requests are ever in flight.
 *
 *   byte    line  written by  word (Int32, little-endian, free-running u32 indices)
 *   0x00    0     frontend    reqProd     requests published up to here
 *   0x04          frontend    rspEvent    notify the frontend when rspProd passes this
 *   0x40    1     backend     rspProd     responses published up to here
 *   0x44          backend     reqEvent    notify the backend when reqProd passes this
 *   0x80    2     either      error       sticky RingFault; 0→fault by compare-and-swap
 *   0x84          owner       generation  bumped by every reset
 *   0xC0    3..   frontend/backend   slot[0 .. slots-1], slotSize bytes each
 *
 * Producer- and consumer-written words sit on separate 64-byte lines so the
 * two threads never write the same cache line. The geometry (slots,
 * slotSize) is never read back from shared memory: both ends get it from the
 * control plane and check the buffer's size against it.
 */
import { InvalidOptionError } from "../util/errors.js";

export const CACHE_LINE = 64;

/** Int32 word indices in the header. */
export const kReqProd = 0;
export const kRspEvent = 1;
export const kRspProd = CACHE_LINE / 4;
export const kReqEvent = CACHE_LINE / 4 + 1;
export const kError = (2 * CACHE_LINE) / 4;
export const kGeneration = (2 * CACHE_LINE) / 4 + 1;
export const HEADER_BYTES = 3 * CACHE_LINE;

export const MIN_SLOTS = 256;
export const MAX_SLOTS = 1 << 16;
export const MIN_SLOT_SIZE = 8;
export const MAX_SLOT_SIZE = 4096;

export interface RingGeometry {
  /** Slot count: a power of two in [MIN_SLOTS, MAX_SLOTS]. */
  readonly slots: number;
  /** Bytes per slot: a multiple of 8 in [MIN_SLOT_SIZE, MAX_SLOT_SIZE]. */
  readonly slotSize: number;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function validateGeometry(g: RingGeometry): void {
  if (!isPowerOfTwo(g.slots) || g.slots < MIN_SLOTS || g.slots > MAX_SLOTS) {
    throw new InvalidOptionError(
      `ring.slots must be a power of two in [${MIN_SLOTS}, ${MAX_SLOTS}], got ${String(g.slots)}`,
    );
  }
  if (
    !Number.isInteger(g.slotSize) ||
    g.slotSize % 8 !== 0 ||
    g.slotSize < MIN_SLOT_SIZE ||
    g.slotSize > MAX_SLOT_SIZE
  ) {
    throw new InvalidOptionError(
      `ring.slotSize must be a multiple of 8 in [${MIN_SLOT_SIZE}, ${MAX_SLOT_SIZE}], got ${String(g.slotSize)}`,
    );
  }
}

export function ringByteLength(g: RingGeometry): number {
  validateGeometry(g);
  return HEADER_BYTES + g.slots * g.slotSize;
}

/**
 * Write the initial header (Xen SHARED_RING_INIT: prods 0, events 1). Only the
 * owner does this. `initialIndex` starts the free-running indices elsewhere
 * than 0, which lets tests cross the 2^32 wrap without 2^32 steps; the ends
 * attach to whatever index they find (Xen's FRONT/BACK_RING_ATTACH).
 */
export function initRingHeader(header: Int32Array, initialIndex = 0): void {
  const start = initialIndex >>> 0;
  // Events first, producers last: a peer that looks early sees an empty ring.
  Atomics.store(header, kReqEvent, (start + 1) | 0);
  Atomics.store(header, kRspEvent, (start + 1) | 0);
  Atomics.store(header, kError, 0);
  Atomics.store(header, kRspProd, start | 0);
  Atomics.store(header, kReqProd, start | 0);
}

export interface CreateRingOptions {
  /** Where the free-running indices start (default 0). */
  readonly initialIndex?: number;
}

/** Allocate and initialise the shared storage of one ring. */
export function createRingBuffer(g: RingGeometry, options: CreateRingOptions = {}): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(ringByteLength(g));
  initRingHeader(new Int32Array(sab, 0, HEADER_BYTES / 4), options.initialIndex);
  return sab;
}

/** Per-thread views over a ring buffer, after checking it has the geometry's size. */
export class RingViews {
  readonly header: Int32Array;
  /** One pre-made view per slot so the hot path never allocates. */
  readonly slotViews: readonly Uint8Array[];
  readonly mask: number;

  constructor(
    readonly sab: SharedArrayBuffer,
    readonly geometry: RingGeometry,
  ) {
    if (!(sab instanceof SharedArrayBuffer))
      throw new InvalidOptionError("ring buffer must be a SharedArrayBuffer");
    const expected = ringByteLength(geometry);
    if (sab.byteLength !== expected) {
      throw new InvalidOptionError(
        `ring buffer is ${sab.byteLength} bytes, geometry ${geometry.slots}×${geometry.slotSize} needs ${expected}`,
      );
    }
    this.header = new Int32Array(sab, 0, HEADER_BYTES / 4);
    this.mask = geometry.slots - 1;
    const views: Uint8Array[] = [];
    for (let i = 0; i < geometry.slots; i++) {
      views.push(new Uint8Array(sab, HEADER_BYTES + i * geometry.slotSize, geometry.slotSize));
    }
    this.slotViews = views;
  }
}
