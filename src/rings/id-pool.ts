/**
 * In-flight ids of one ring's frontend: a free list (a stack, so recently
 * used ids are reused while they are cache-warm) and an in-flight map. The
 * frontend allocates an id per request; a response must name an id that is in
 * flight, otherwise the peer is lying and the ring latches a fault
 * (xen-hcd.c treats an id not in flight as a protocol error).
 */
import { InvalidOptionError } from "../util/errors.js";

export const MAX_IDS = 1 << 16;

export class IdPool {
  private readonly free: Uint32Array;
  private freeCount: number;
  private readonly inFlight: Uint8Array;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_IDS) {
      throw new InvalidOptionError(
        `IdPool capacity must be an integer in [1, ${MAX_IDS}], got ${String(capacity)}`,
      );
    }
    this.free = new Uint32Array(capacity);
    this.inFlight = new Uint8Array(capacity);
    // Lowest ids on top of the stack.
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.freeCount = capacity;
  }

  get available(): number {
    return this.freeCount;
  }

  get inFlightCount(): number {
    return this.capacity - this.freeCount;
  }

  /** Take a free id and mark it in flight; -1 when all are in flight. */
  allocate(): number {
    if (this.freeCount === 0) return -1;
    const id = this.free[--this.freeCount]!;
    this.inFlight[id] = 1;
    return id;
  }

  isInFlight(id: number): boolean {
    return Number.isInteger(id) && id >= 0 && id < this.capacity && this.inFlight[id] === 1;
  }

  /** A response for `id` arrived: true and the id is free again if it was in flight, false otherwise. */
  complete(id: number): boolean {
    if (!this.isInFlight(id)) return false;
    this.inFlight[id] = 0;
    this.free[this.freeCount++] = id;
    return true;
  }

  /** Forget every in-flight id (ring reset). Returns the ids that were in flight. */
  reset(): number[] {
    const lost: number[] = [];
    for (let id = 0; id < this.capacity; id++) if (this.inFlight[id] === 1) lost.push(id);
    this.inFlight.fill(0);
    for (let i = 0; i < this.capacity; i++) this.free[i] = this.capacity - 1 - i;
    this.freeCount = this.capacity;
    return lost;
  }
}

/** Read the little-endian u32 id every usbvirt slot format starts with. */
export function slotId(copy: Uint8Array): number {
  return (copy[0]! | (copy[1]! << 8) | (copy[2]! << 16) | (copy[3]! << 24)) >>> 0;
}
