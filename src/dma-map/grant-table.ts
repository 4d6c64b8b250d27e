/**
 * The grant table: the frontend's list of "the backend may touch these guest
 * frames", in a SharedArrayBuffer that both threads view. Modelled on Xen's
 * grant table v1 (xen/include/public/grant_table.h, `struct grant_entry_v1`),
 * extended with a frame count ("extent") so that one grant covers a buffer of
 * up to MAX_GRANT_FRAMES contiguous frames, and with a map count instead of
 * Xen's reading/writing bits (Xen keeps its pin counts in the hypervisor's
 * private active-grant table; usbvirt has no hypervisor, so the count lives in
 * the shared word — a frontend that corrupts it only hurts itself, see below).
 *
 * Entry, 16 bytes, little-endian, 4 Int32 words:
 *
 *   octet 0         2         4                   8                   12                  16
 *         +---------+---------+-------------------+-------------------+-------------------+
 *         | flags   | domid   | frame (u32)       | nframes (u32)     | reserved (0)      |
 *         | u16     | u16     | first GuestFrame  | extent in frames  |                   |
 *         +---------+---------+-------------------+-------------------+-------------------+
 *         \___ word kStatus: Int32, only ever accessed with Atomics ___/
 *
 *   flags bit 0      GTF_PERMIT_ACCESS (Xen value 1): the entry is in use
 *   flags bit 2      GTF_READONLY      (Xen value 1<<2): the backend may only read
 *   flags bits 5-15  MAP_COUNT: live backend mappings (0..2047); revoke needs 0
 *   flags bits 1,3,4 reserved, 0 (Xen's reading/writing bits are replaced by MAP_COUNT)
 *
 * flags and domid share one 32-bit word as in Xen v1, so a single
 * compare-and-swap checks the domain, the permission and the count together.
 *
 * Protocol (Xen's, with a count):
 *   grant  (frontend): write frame, nframes; then Atomics.store(status, flags|domid).
 *   map    (backend):  CAS status: count+1, only while permitted/domid matches; then read frame, nframes.
 *   unmap  (backend):  CAS status: count-1, only while count > 0 (never underflows).
 *   revoke (frontend): CAS status → 0, only while count == 0.
 *
 * Trust: the frontend may write anything anywhere in this table. The mapper
 * therefore reads each field once into a local and checks the local against
 * guest memory; a corrupted entry yields a fault, never a view outside memory.
 */
import { InvalidOptionError } from "../util/errors.js";
import { GrantError } from "./grant-fault.js";
import type { GuestMemory } from "./guest-memory.js";
import { DOMID_FIRST_RESERVED, type DomId, type GrantRef, type GuestFrame, isU32 } from "./types.js";

export const GRANT_ENTRY_BYTES = 16;
export const GRANT_ENTRY_WORDS = GRANT_ENTRY_BYTES / 4;
/** Word indices inside one entry. */
export const kStatus = 0;
export const kFrame = 1;
export const kFrameCount = 2;
export const kReserved = 3;

export const GTF_PERMIT_ACCESS = 1 << 0;
export const GTF_READONLY = 1 << 2;
export const MAP_COUNT_SHIFT = 5;
export const MAP_COUNT_MAX = 0x7ff;
/** Add this to the status word to count one more mapping. */
export const MAP_COUNT_ONE = 1 << MAP_COUNT_SHIFT;
export const MAP_COUNT_MASK = MAP_COUNT_MAX << MAP_COUNT_SHIFT;
export const GRANT_FLAGS_MASK = 0xffff;
/** Flag bits a well-formed entry may have set. */
export const GRANT_KNOWN_FLAGS = GTF_PERMIT_ACCESS | GTF_READONLY | MAP_COUNT_MASK;
export const DOMID_SHIFT = 16;

/** Largest table: refs must fit the wire's u32 and a private free list; Xen's default is far smaller. */
export const MAX_GRANT_ENTRIES = 65536;
/** Largest extent of one grant: 1024 frames = 4 MiB, the largest transfer. */
export const MAX_GRANT_FRAMES = 1024;

// Layout asserted at load time.
if (GRANT_ENTRY_WORDS !== 4 || kReserved !== GRANT_ENTRY_WORDS - 1) throw new Error("grant entry layout");
if ((GRANT_KNOWN_FLAGS & ~GRANT_FLAGS_MASK) !== 0) throw new Error("grant flags overflow their u16");
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("usbvirt's shared layouts assume a little-endian host");
}

/** Status word of a granted entry: flags in the low half, domid in the high half. */
export function grantStatusWord(domid: DomId, readonly: boolean): number {
  return (domid << DOMID_SHIFT) | GTF_PERMIT_ACCESS | (readonly ? GTF_READONLY : 0);
}

/** Live mappings recorded in a status word. */
export function mapCountOf(status: number): number {
  return (status >>> MAP_COUNT_SHIFT) & MAP_COUNT_MAX;
}

/** Domain recorded in a status word. */
export function domidOf(status: number): number {
  return (status >>> DOMID_SHIFT) & 0xffff;
}

export interface GrantTableStorageOptions {
  /** Number of entries (refs 0 .. entries-1), 1 ..= MAX_GRANT_ENTRIES. */
  readonly entries: number;
}

/** Allocate zeroed shared storage for a grant table (every entry free). */
export function createGrantTableStorage(options: GrantTableStorageOptions): SharedArrayBuffer {
  const entries = options?.entries;
  if (!Number.isInteger(entries) || entries < 1 || entries > MAX_GRANT_ENTRIES) {
    throw new InvalidOptionError(
      `options.entries must be an integer in [1, ${MAX_GRANT_ENTRIES}], got ${entries}`,
    );
  }
  return new SharedArrayBuffer(entries * GRANT_ENTRY_BYTES);
}

/** Check a storage buffer handed to a view and return its entry count. */
export function grantTableEntries(storage: SharedArrayBuffer): number {
  if (!(storage instanceof SharedArrayBuffer)) {
    throw new InvalidOptionError("grant table storage must be a SharedArrayBuffer");
  }
  const { byteLength } = storage;
  if (
    byteLength === 0 ||
    byteLength % GRANT_ENTRY_BYTES !== 0 ||
    byteLength / GRANT_ENTRY_BYTES > MAX_GRANT_ENTRIES
  ) {
    throw new InvalidOptionError(
      `grant table storage must be 1..${MAX_GRANT_ENTRIES} entries of ${GRANT_ENTRY_BYTES} bytes, got ${byteLength} bytes`,
    );
  }
  return byteLength / GRANT_ENTRY_BYTES;
}

/** Word index of field `field` (kStatus …) of entry `ref`. */
export function entryWord(ref: GrantRef, field: number): number {
  return ref * GRANT_ENTRY_WORDS + field;
}

/** Compare-and-swap attempts before a contended operation gives up (constant bound on a peer-driven loop). */
export const GRANT_CAS_ATTEMPTS = 64;

export interface GrantOwnerOptions {
  /** Storage from createGrantTableStorage; must have no entry in use. */
  readonly storage: SharedArrayBuffer;
  /** Guest memory the grants point into: grant() refuses extents outside it. */
  readonly memory: GuestMemory;
}

/**
 * The frontend's side of a grant table: grants and revokes, with a private
 * free list of refs (Linux gnttab's free list, kept outside shared memory so
 * the backend cannot disturb it). One owner per table.
 *
 * Error policy: misuse (bad arguments, table full, revoking a ref this owner
 * did not grant) throws GrantError. A grant still mapped by the backend is a
 * normal state, not misuse: `tryRevoke` returns false and the caller retries
 * later (Linux's gnttab_end_foreign_access_ref returns 0 the same way).
 */
export class GrantTableOwner {
  readonly storage: SharedArrayBuffer;
  readonly entries: number;
  readonly #words: Int32Array;
  readonly #memory: GuestMemory;
  // Private free list: a stack of refs; #granted[ref] is 1 while the ref is out.
  readonly #free: Int32Array;
  #freeTop: number;
  readonly #granted: Uint8Array;

  constructor(options: GrantOwnerOptions) {
    this.entries = grantTableEntries(options?.storage);
    this.storage = options.storage;
    this.#memory = options.memory;
    this.#words = new Int32Array(this.storage);
    this.#free = new Int32Array(this.entries);
    this.#granted = new Uint8Array(this.entries);
    // Hand out low refs first: push in reverse so ref 0 is on top.
    for (let i = 0; i < this.entries; i++) {
      if (Atomics.load(this.#words, i * GRANT_ENTRY_WORDS + kStatus) !== 0) {
        throw new GrantError(
          "STORAGE_IN_USE",
          `grant table entry ${i} is already in use; an owner needs fresh storage`,
        );
      }
      this.#free[i] = this.entries - 1 - i;
    }
    this.#freeTop = this.entries;
  }

  /** Refs still available to grant. */
  get freeCount(): number {
    return this.#freeTop;
  }

  /**
   * Grant domain `domid` access to frames [frame, frame + frameCount),
   * read-only if `readonly`. Throws GrantError (INVALID_ARGUMENT, TABLE_FULL).
   */
  grant(domid: DomId, frame: GuestFrame, frameCount: number, readonly: boolean): GrantRef {
    if (!Number.isInteger(domid) || domid < 0 || domid >= DOMID_FIRST_RESERVED) {
      throw new GrantError(
        "INVALID_ARGUMENT",
        `domid must be an integer in [0, ${DOMID_FIRST_RESERVED}), got ${domid}`,
      );
    }
    if (!Number.isInteger(frameCount) || frameCount < 1 || frameCount > MAX_GRANT_FRAMES) {
      throw new GrantError(
        "INVALID_ARGUMENT",
        `frameCount must be an integer in [1, ${MAX_GRANT_FRAMES}], got ${frameCount}`,
      );
    }
    if (!isU32(frame) || this.#memory.regionOfExtent(frame, frameCount) < 0) {
      throw new GrantError(
        "INVALID_ARGUMENT",
        `frames [${frame}, ${frame} + ${frameCount}) are not inside one region of guest memory`,
      );
    }
    if (this.#freeTop === 0) throw new GrantError("TABLE_FULL", `all ${this.entries} grant refs are in use`);
    const ref = this.#free[--this.#freeTop]! as GrantRef;
    this.#granted[ref] = 1;
    const base = ref * GRANT_ENTRY_WORDS;
    this.#words[base + kFrame] = frame;
    this.#words[base + kFrameCount] = frameCount;
    this.#words[base + kReserved] = 0;
    // Publish (release): the seq-cst store orders the plain field writes above
    // before it, so a backend whose Atomics.load/CAS sees PERMIT also sees them.
    Atomics.store(this.#words, base + kStatus, grantStatusWord(domid, readonly));
    return ref;
  }

  /**
   * End the backend's access to `ref` unless it is mapped. Returns true (the ref
   * is back on the free list) or false (still mapped: try again after the
   * backend unmaps). Throws GrantError NOT_ACTIVE for a ref this owner has not granted.
   */
  tryRevoke(ref: GrantRef): boolean {
    this.#assertGranted(ref, "revoke");
    const index = entryWord(ref, kStatus);
    for (let attempt = 0; attempt < GRANT_CAS_ATTEMPTS; attempt++) {
      // Consume (acquire): the current count decides; the CAS below re-checks it atomically.
      const status = Atomics.load(this.#words, index);
      if (mapCountOf(status) !== 0) return false;
      // CAS to 0 only from the exact word we saw with count 0: a map that slips in
      // between changes the word, the CAS fails and we look again.
      if (Atomics.compareExchange(this.#words, index, status, 0) === status) {
        this.#granted[ref] = 0;
        this.#free[this.#freeTop++] = ref;
        return true;
      }
    }
    return false;
  }

  /**
   * End access to `ref` even while the backend still has it mapped, and put
   * the ref back on the free list. Returns the map count that was discarded.
   * ONLY for a backend known to be dead (its worker terminated, or cut off
   * after a protocol fault): a dead backend's map counts can never drop, so
   * tryRevoke would refuse forever. Never call it while a live backend may
   * still use the grant: it could then write memory the guest has reused.
   */
  forceRevoke(ref: GrantRef): number {
    this.#assertGranted(ref, "force-revoke");
    // Seq-cst exchange: any later map attempt sees PERMIT clear and fails.
    const status = Atomics.exchange(this.#words, entryWord(ref, kStatus), 0);
    this.#granted[ref] = 0;
    this.#free[this.#freeTop++] = ref;
    return mapCountOf(status);
  }

  /** Live backend mappings of a granted ref (0 when none). */
  mapCount(ref: GrantRef): number {
    this.#assertGranted(ref, "read the map count of");
    // Consume: a snapshot; the backend may map or unmap right after.
    return mapCountOf(Atomics.load(this.#words, entryWord(ref, kStatus)));
  }

  /** True while this owner has `ref` granted (not yet revoked). */
  isGranted(ref: GrantRef): boolean {
    return isU32(ref) && ref < this.entries && this.#granted[ref] === 1;
  }

  #assertGranted(ref: GrantRef, what: string): void {
    if (!this.isGranted(ref))
      throw new GrantError("NOT_ACTIVE", `cannot ${what} grant ref ${ref}: not granted by this owner`);
  }
}
