/**
 * The backend's grant mapper: turns (ref, offset, length) from a URB's segment
 * list into a zero-copy Uint8Array over guest memory, after checking what Xen's
 * grant-table code checks for a map/copy (ref in range, entry in use, granted
 * to us, read-only vs write, bounds, overflow) plus that a frontend-written
 * frame/nframes lies inside guest memory. The entry layout and protocol are in
 * ./grant-table.ts; the faults in ./grant-fault.ts.
 *
 * Hot path (pin / map / unmap): no exceptions, no allocation but the returned
 * view. A buffer in several segments (usbif's seg[] of {gref, offset, length})
 * is pinned segment by segment by the backend's gate (src/backend/resolve.ts);
 * the port service then makes one view of them, or bounces them
 * (src/port/transfer-buffer.ts). Every loop over peer data is bounded by a
 * constant (GRANT_CAS_ATTEMPTS, MAX_MEMORY_REGIONS).
 */
import { GrantFault, type GrantFaultCode } from "./grant-fault.js";
import {
  domidOf,
  GRANT_CAS_ATTEMPTS,
  GRANT_ENTRY_WORDS,
  GRANT_FLAGS_MASK,
  GRANT_KNOWN_FLAGS,
  GTF_PERMIT_ACCESS,
  GTF_READONLY,
  grantTableEntries,
  kFrame,
  kFrameCount,
  kStatus,
  MAP_COUNT_MAX,
  MAP_COUNT_ONE,
  MAX_GRANT_FRAMES,
  mapCountOf,
} from "./grant-table.js";
import type { GuestMemory } from "./guest-memory.js";
import { type DomId, framesToBytes, type GrantRef, isU32 } from "./types.js";

/**
 * What the backend does with the bytes: "read" for an OUT transfer (device
 * reads guest memory), "write" for an IN transfer (device data lands in guest
 * memory). A read-only grant only ever maps for "read".
 */
export type GrantAccess = "read" | "write";

/** The access an endpoint direction needs: IN writes guest memory. */
export function accessForDirection(directionIn: boolean): GrantAccess {
  return directionIn ? "write" : "read";
}

/** One piece of a guest buffer, as usbif's seg[] carries it. */
export interface GrantSegment {
  readonly ref: GrantRef;
  readonly offset: number;
  readonly length: number;
}

/** Most segments in one buffer (usbif has 16; an indirect segment page lifts it). */
export const MAX_SEGMENTS = 256;
/** Longest buffer one transfer may have: 4 MiB (the URB gate's MAX_BUFFER_LENGTH). */
export const MAX_TRANSFER_BYTES = 4 * 1024 * 1024;

export interface GrantMapperStats {
  /** Successful single-grant pins (pin and map). */
  maps: number;
  /** Successful unpins. */
  unmaps: number;
  /** Rejected pin, map or unmap calls. */
  faults: number;
}

export interface GrantMapperOptions {
  /** The grant table's shared storage (the frontend's GrantTableOwner.storage). */
  readonly table: SharedArrayBuffer;
  /** Guest memory over the same regions as the frontend's. */
  readonly memory: GuestMemory;
}

export class GrantMapper {
  readonly memory: GuestMemory;
  readonly entries: number;
  readonly stats: GrantMapperStats = {
    maps: 0,
    unmaps: 0,
    faults: 0,
  };
  readonly #words: Int32Array;
  // Where the last successful #pin resolved to; read right after it (no allocation for a result object).
  #pinnedRegion = 0;
  #pinnedRegionOffset = 0;

  constructor(options: GrantMapperOptions) {
    this.entries = grantTableEntries(options?.table);
    this.memory = options.memory;
    this.#words = new Int32Array(options.table);
  }

  /**
   * Map `length` bytes at `offset` into grant `ref` for `access` by domain
   * `domid`. Returns the view (the grant stays pinned until `unmap(ref)`) or a
   * fault code; never throws.
   */
  map(
    ref: GrantRef,
    domid: DomId,
    access: GrantAccess,
    offset: number,
    length: number,
  ): Uint8Array | GrantFaultCode {
    const fault = this.#pin(ref, domid, access, offset, length);
    if (fault !== GrantFault.OK) {
      this.stats.faults++;
      return fault;
    }
    this.stats.maps++;
    return new Uint8Array(this.memory.regions[this.#pinnedRegion]!, this.#pinnedRegionOffset, length);
  }

  /**
   * Like map(), but without making a view: on OK the pinned bytes are at
   * `pinnedRegion` / `pinnedRegionOffset` until the next call. For a caller
   * that hands the location to another thread (the port workers build their
   * own views over the same SharedArrayBuffers).
   */
  pin(ref: GrantRef, domid: DomId, access: GrantAccess, offset: number, length: number): GrantFaultCode {
    const fault = this.#pin(ref, domid, access, offset, length);
    if (fault !== GrantFault.OK) this.stats.faults++;
    else this.stats.maps++;
    return fault;
  }

  /** Region of the last successful pin(). */
  get pinnedRegion(): number {
    return this.#pinnedRegion;
  }

  /** Byte offset in that region of the last successful pin(). */
  get pinnedRegionOffset(): number {
    return this.#pinnedRegionOffset;
  }

  /**
   * Drop one mapping of `ref`. Returns OK, NOT_MAPPED when the grant has no
   * mapping (a double unmap: nothing changes, the count never underflows),
   * REF_OUT_OF_RANGE, or BUSY if the entry kept changing under us.
   * The count is per grant: with two live mappings of one ref, an extra unmap
   * releases the other's pin.
   */
  unmap(ref: GrantRef): GrantFaultCode {
    const fault = isU32(ref) && ref < this.entries ? this.#unpin(ref) : GrantFault.REF_OUT_OF_RANGE;
    if (fault === GrantFault.OK) this.stats.unmaps++;
    else this.stats.faults++;
    return fault;
  }

  /**
   * Check and pin one grant; on OK, #pinnedRegion/#pinnedRegionOffset say
   * where the bytes are. The order of checks is the verdict order the tests'
   * reference model follows.
   */
  #pin(ref: GrantRef, domid: DomId, access: GrantAccess, offset: number, length: number): GrantFaultCode {
    if (!isU32(ref) || ref >= this.entries) return GrantFault.REF_OUT_OF_RANGE;
    if (!isU32(offset) || !isU32(length)) return GrantFault.OVERFLOW;
    const words = this.#words;
    const base = ref * GRANT_ENTRY_WORDS;
    const readonlyFault = access === "read" ? 0 : GTF_READONLY;
    let pinned = false;
    for (let attempt = 0; attempt < GRANT_CAS_ATTEMPTS && !pinned; attempt++) {
      // Consume (acquire): seeing PERMIT here makes the frontend's earlier frame/nframes writes visible.
      const status = Atomics.load(words, base + kStatus);
      if ((status & GTF_PERMIT_ACCESS) === 0) return GrantFault.NOT_GRANTED;
      if ((status & GRANT_FLAGS_MASK & ~GRANT_KNOWN_FLAGS) !== 0) return GrantFault.MALFORMED_ENTRY;
      if (domidOf(status) !== domid) return GrantFault.WRONG_DOMAIN;
      if ((status & readonlyFault) !== 0) return GrantFault.READ_ONLY;
      if (mapCountOf(status) === MAP_COUNT_MAX) return GrantFault.BUSY;
      // Pin: count+1 only if the word (permission, domid, count) is still what we checked;
      // a concurrent revoke or map makes the CAS fail and we check again.
      pinned = Atomics.compareExchange(words, base + kStatus, status, status + MAP_COUNT_ONE) === status;
    }
    if (!pinned) return GrantFault.BUSY;
    // Pinned: a well-behaved frontend cannot change the entry now. A hostile one can,
    // so read each field once (u32) and check only the local copies.
    const frame = words[base + kFrame]! >>> 0;
    const frames = words[base + kFrameCount]! >>> 0;
    let fault: GrantFaultCode = GrantFault.OK;
    let region = -1;
    if (frames === 0 || frames > MAX_GRANT_FRAMES) fault = GrantFault.MALFORMED_ENTRY;
    else if (offset + length > framesToBytes(frames)) fault = GrantFault.OUT_OF_BOUNDS;
    else {
      region = this.memory.regionOfExtent(frame, frames);
      if (region < 0) fault = GrantFault.FRAME_OUTSIDE_MEMORY;
    }
    if (fault !== GrantFault.OK) {
      this.#unpin(ref);
      return fault;
    }
    this.#pinnedRegion = region;
    this.#pinnedRegionOffset = this.memory.byteOffsetInRegion(region, frame, offset);
    return GrantFault.OK;
  }

  #unpin(ref: GrantRef): GrantFaultCode {
    const words = this.#words;
    const index = ref * GRANT_ENTRY_WORDS + kStatus;
    for (let attempt = 0; attempt < GRANT_CAS_ATTEMPTS; attempt++) {
      // Consume: the count decides; count 0 means nothing to unpin (no underflow).
      const status = Atomics.load(words, index);
      if (mapCountOf(status) === 0) return GrantFault.NOT_MAPPED;
      // Release: the seq-cst CAS orders our accesses through the view before the
      // frontend can observe count 0 and revoke.
      if (Atomics.compareExchange(words, index, status, status - MAP_COUNT_ONE) === status)
        return GrantFault.OK;
    }
    return GrantFault.BUSY;
  }
}
