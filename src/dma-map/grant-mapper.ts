/**
 * The backend's grant mapper: turns (ref, offset, length) from a URB's segment
 * list into a zero-copy Uint8Array over guest memory, after checking what Xen's
 * grant-table code checks for a map/copy (ref in range, entry in use, granted
 * to us, read-only vs write, bounds, overflow) plus that a frontend-written
 * frame/nframes lies inside guest memory. The entry layout and protocol are in
 * ./grant-table.ts; the faults in ./grant-fault.ts.
 *
 * Hot path (map / unmap): no exceptions, no allocation but the returned view.
 * A buffer in several segments (usbif's seg[] of {gref, offset, length}) is
 * mapped by mapSegments: one direct view when the segments are back to back in
 * one memory region, otherwise a bounce buffer, copied in at map time for OUT
 * (read access) and out at completion for IN (write access), counted in stats.
 * Every loop over peer data is bounded by a constant (MAX_SEGMENTS,
 * GRANT_CAS_ATTEMPTS, MAX_MEMORY_REGIONS).
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
/** Longest buffer mapSegments accepts: 4 MiB. */
export const MAX_TRANSFER_BYTES = 4 * 1024 * 1024;

export interface GrantMapperStats {
  /** Successful single-grant pins (map, and each segment of mapSegments). */
  maps: number;
  /** Successful unpins. */
  unmaps: number;
  /** Rejected map, unmap or mapSegments calls. */
  faults: number;
  /** mapSegments results that are one view of guest memory. */
  directBuffers: number;
  /** mapSegments results that needed a bounce buffer. */
  bouncedBuffers: number;
  /** Copies between a bounce buffer and guest memory (one per copy-in or copy-out). */
  bounceCopies: number;
  /** Bytes moved by those copies. */
  bounceBytes: number;
}

export interface GrantMapperOptions {
  /** The grant table's shared storage (the frontend's GrantTableOwner.storage). */
  readonly table: SharedArrayBuffer;
  /** Guest memory over the same regions as the frontend's. */
  readonly memory: GuestMemory;
}

// Per-segment record inside a MappedBuffer, in one Float64Array (one allocation per buffer).
const kSegRef = 0;
const kSegRegion = 1;
const kSegRegionOffset = 2;
const kSegLength = 3;
const SEG_RECORD = 4;

export class GrantMapper {
  readonly memory: GuestMemory;
  readonly entries: number;
  readonly stats: GrantMapperStats = {
    maps: 0,
    unmaps: 0,
    faults: 0,
    directBuffers: 0,
    bouncedBuffers: 0,
    bounceCopies: 0,
    bounceBytes: 0,
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
   * releases the other's pin. MappedBuffer.release is exact per mapping.
   */
  unmap(ref: GrantRef): GrantFaultCode {
    const fault = isU32(ref) && ref < this.entries ? this.#unpin(ref) : GrantFault.REF_OUT_OF_RANGE;
    if (fault === GrantFault.OK) this.stats.unmaps++;
    else this.stats.faults++;
    return fault;
  }

  /**
   * Map a buffer given as segments, all with the same access. Returns a
   * MappedBuffer (call `complete` or `release` exactly once) or the first
   * fault; on a fault no grant is left pinned.
   */
  mapSegments(
    domid: DomId,
    access: GrantAccess,
    segments: readonly GrantSegment[],
  ): MappedBuffer | GrantFaultCode {
    const count = segments.length;
    if (!(count <= MAX_SEGMENTS)) return this.#fault(GrantFault.TOO_MANY_SEGMENTS);
    // First pass, before pinning anything: every offset/length a u32, the total bounded.
    let total = 0;
    for (let i = 0; i < count; i++) {
      const segment = segments[i]!;
      if (!isU32(segment.offset) || !isU32(segment.length)) return this.#fault(GrantFault.OVERFLOW);
      total += segment.length;
      if (total > MAX_TRANSFER_BYTES) return this.#fault(GrantFault.TRANSFER_TOO_LONG);
    }
    const records = new Float64Array(count * SEG_RECORD);
    let contiguous = true;
    for (let i = 0; i < count; i++) {
      const { ref, offset, length } = segments[i]!;
      const fault = this.#pin(ref, domid, access, offset, length);
      if (fault !== GrantFault.OK) {
        // Undo in reverse so no grant stays busy because of a later segment's fault.
        for (let j = i - 1; j >= 0; j--) this.#unpinCounted(records[j * SEG_RECORD + kSegRef]! as GrantRef);
        return this.#fault(fault);
      }
      this.stats.maps++;
      const at = i * SEG_RECORD;
      records[at + kSegRef] = ref;
      records[at + kSegRegion] = this.#pinnedRegion;
      records[at + kSegRegionOffset] = this.#pinnedRegionOffset;
      records[at + kSegLength] = length;
      if (i > 0) {
        const prev = at - SEG_RECORD;
        contiguous &&=
          records[prev + kSegRegion] === this.#pinnedRegion &&
          records[prev + kSegRegionOffset]! + records[prev + kSegLength]! === this.#pinnedRegionOffset;
      }
    }
    if (contiguous) {
      this.stats.directBuffers++;
      const view =
        count === 0
          ? new Uint8Array(0)
          : new Uint8Array(this.memory.regions[records[kSegRegion]!]!, records[kSegRegionOffset]!, total);
      return new MappedBuffer(this, access, view, false, records, count);
    }
    this.stats.bouncedBuffers++;
    const bounce = new Uint8Array(total);
    if (access === "read") this._copySegments(records, count, bounce, total, "in");
    return new MappedBuffer(this, access, bounce, true, records, count);
  }

  /**
   * Copy between a bounce buffer and the segments, `bytes` bytes from the
   * start: "in" = guest → bounce (OUT at map), "out" = bounce → guest (IN at completion).
   * Internal to this module (MappedBuffer calls it).
   */
  _copySegments(
    records: Float64Array,
    count: number,
    bounce: Uint8Array,
    bytes: number,
    direction: "in" | "out",
  ): void {
    let done = 0;
    for (let i = 0; i < count && done < bytes; i++) {
      const at = i * SEG_RECORD;
      const n = Math.min(records[at + kSegLength]!, bytes - done);
      const guest = new Uint8Array(
        this.memory.regions[records[at + kSegRegion]!]!,
        records[at + kSegRegionOffset]!,
        n,
      );
      if (direction === "in") bounce.set(guest, done);
      else guest.set(bounce.subarray(done, done + n));
      done += n;
    }
    this.stats.bounceCopies++;
    this.stats.bounceBytes += done;
  }

  /** Unpin one grant of a MappedBuffer, counting it. Internal to this module. */
  _unpinCounted(ref: GrantRef): GrantFaultCode {
    return this.#unpinCounted(ref);
  }

  #unpinCounted(ref: GrantRef): GrantFaultCode {
    const fault = this.#unpin(ref);
    if (fault === GrantFault.OK) this.stats.unmaps++;
    else this.stats.faults++;
    return fault;
  }

  #fault(fault: GrantFaultCode): GrantFaultCode {
    this.stats.faults++;
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

/**
 * A mapped multi-segment buffer. `view` is guest memory itself (`bounced`
 * false) or a private bounce buffer. Finish with `complete(actualLength)`
 * (copies an IN transfer's bytes back, then unmaps) or `release()` (unmaps
 * without copying: cancelled transfer). Either works once; later calls return
 * NOT_MAPPED and touch nothing. Do not use `view` after that.
 */
export class MappedBuffer {
  readonly view: Uint8Array;
  readonly bounced: boolean;
  readonly access: GrantAccess;
  readonly segmentCount: number;
  readonly #mapper: GrantMapper;
  readonly #records: Float64Array;
  #live = true;

  /** @internal built by GrantMapper.mapSegments only. */
  constructor(
    mapper: GrantMapper,
    access: GrantAccess,
    view: Uint8Array,
    bounced: boolean,
    records: Float64Array,
    segmentCount: number,
  ) {
    this.#mapper = mapper;
    this.access = access;
    this.view = view;
    this.bounced = bounced;
    this.#records = records;
    this.segmentCount = segmentCount;
  }

  get length(): number {
    return this.view.length;
  }

  /** True until complete or release. */
  get live(): boolean {
    return this.#live;
  }

  /**
   * The transfer finished with `actualLength` bytes. For a bounced IN buffer,
   * copy exactly those bytes back to guest memory; then unmap every segment.
   * An actualLength that is not a u32 (OVERFLOW) or exceeds the buffer
   * (OUT_OF_BOUNDS) copies nothing but still unmaps, so no grant stays busy.
   */
  complete(actualLength: number): GrantFaultCode {
    if (!this.#live) return GrantFault.NOT_MAPPED;
    let fault: GrantFaultCode = GrantFault.OK;
    if (!isU32(actualLength)) fault = GrantFault.OVERFLOW;
    else if (actualLength > this.view.length) fault = GrantFault.OUT_OF_BOUNDS;
    else if (this.bounced && this.access === "write" && actualLength > 0) {
      this.#mapper._copySegments(this.#records, this.segmentCount, this.view, actualLength, "out");
    }
    const unmapFault = this.release();
    return fault !== GrantFault.OK ? fault : unmapFault;
  }

  /** Unmap every segment without copying. Returns OK, or the first unmap fault. */
  release(): GrantFaultCode {
    if (!this.#live) return GrantFault.NOT_MAPPED;
    this.#live = false;
    let first: GrantFaultCode = GrantFault.OK;
    for (let i = this.segmentCount - 1; i >= 0; i--) {
      const fault = this.#mapper._unpinCounted(this.#records[i * SEG_RECORD + kSegRef]! as GrantRef);
      if (first === GrantFault.OK) first = fault;
    }
    return first;
  }
}
