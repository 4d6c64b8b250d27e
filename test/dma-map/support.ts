/**
 * Mock guest for the dma-map tests and bench: guest memory + grant table +
 * mapper wired together, a canary fill, raw (possibly hostile) entry writes
 * that bypass GrantTableOwner, and an independent reference model of the
 * mapper's verdict (the checks of src/dma-map/grant-mapper.ts, in order).
 */
import {
  createGrantTableStorage,
  DOMID_SHIFT,
  type DomId,
  FRAME_SIZE,
  GRANT_ENTRY_WORDS,
  GRANT_KNOWN_FLAGS,
  GrantFault,
  type GrantFaultCode,
  GrantMapper,
  GrantTableOwner,
  GTF_PERMIT_ACCESS,
  GTF_READONLY,
  GuestMemory,
  kFrame,
  kFrameCount,
  kStatus,
  MAP_COUNT_MAX,
  MAP_COUNT_SHIFT,
  MAX_GRANT_FRAMES,
} from "../../src/dma-map/index.js";

export const BACKEND = 1 as DomId;
export const OTHER_DOMAIN = 2 as DomId;

export interface MockGuest {
  readonly memory: GuestMemory;
  readonly owner: GrantTableOwner;
  readonly mapper: GrantMapper;
  readonly table: SharedArrayBuffer;
  readonly regionFrames: readonly number[];
}

export function mockGuest(regionFrames: readonly number[] = [8, 5], entries = 32): MockGuest {
  const memory = GuestMemory.create({ regionFrames });
  const table = createGrantTableStorage({ entries });
  const owner = new GrantTableOwner({ storage: table, memory });
  const mapper = new GrantMapper({ table, memory });
  return { memory, owner, mapper, table, regionFrames };
}

/** Canary byte at guest-wide offset `offset`: not constant, so a shifted copy shows. */
export function canaryByte(offset: number): number {
  return (offset * 131 + 0x5a) & 0xff;
}

/** Fill all guest memory with the canary; returns a flat shadow copy (guest offset order). */
export function fillCanary(memory: GuestMemory): Uint8Array {
  const shadow = new Uint8Array(memory.byteLength);
  for (let i = 0; i < shadow.length; i++) shadow[i] = canaryByte(i);
  let at = 0;
  for (let r = 0; r < memory.regions.length; r++) {
    const view = memory.regionView(r);
    view.set(shadow.subarray(at, at + view.length));
    at += view.length;
  }
  return shadow;
}

/** All guest memory flattened in guest offset order. */
export function snapshot(memory: GuestMemory): Uint8Array {
  const out = new Uint8Array(memory.byteLength);
  let at = 0;
  for (let r = 0; r < memory.regions.length; r++) {
    const view = memory.regionView(r);
    out.set(view, at);
    at += view.length;
  }
  return out;
}

export interface RawEntry {
  readonly status: number;
  readonly frame: number;
  readonly nframes: number;
}

/** What a hostile frontend does: write any words into an entry, bypassing the owner. */
export function writeRawEntry(table: SharedArrayBuffer, ref: number, entry: RawEntry): void {
  const words = new Int32Array(table);
  const base = ref * GRANT_ENTRY_WORDS;
  words[base + kFrame] = entry.frame | 0;
  words[base + kFrameCount] = entry.nframes | 0;
  Atomics.store(words, base + kStatus, entry.status | 0);
}

export function readRawEntry(table: SharedArrayBuffer, ref: number): RawEntry {
  const words = new Int32Array(table);
  const base = ref * GRANT_ENTRY_WORDS;
  return {
    status: Atomics.load(words, base + kStatus),
    frame: words[base + kFrame]! >>> 0,
    nframes: words[base + kFrameCount]! >>> 0,
  };
}

/** Status word built from parts (for raw entries). */
export function statusWord(parts: {
  permit: boolean;
  readonly: boolean;
  domid: number;
  mapCount?: number;
  reservedBits?: number;
}): number {
  return (
    ((parts.domid & 0xffff) << DOMID_SHIFT) |
    (parts.permit ? GTF_PERMIT_ACCESS : 0) |
    (parts.readonly ? GTF_READONLY : 0) |
    ((parts.mapCount ?? 0) << MAP_COUNT_SHIFT) |
    (parts.reservedBits ?? 0)
  );
}

const isU32 = (v: unknown): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** 32;

export interface ModelVerdict {
  readonly fault: GrantFaultCode;
  /** Guest-wide byte offset of the view when fault is OK. */
  readonly guestOffset: number;
}

/**
 * Reference model: the verdict for map(ref, domid, access, offset, length)
 * given the raw entries and the region sizes. Written from the spec, not from
 * the mapper's code paths.
 */
export function modelVerdict(
  entries: readonly RawEntry[],
  regionFrames: readonly number[],
  ref: number,
  domid: number,
  access: "read" | "write",
  offset: number,
  length: number,
): ModelVerdict {
  const fail = (fault: GrantFaultCode): ModelVerdict => ({ fault, guestOffset: -1 });
  if (!isU32(ref) || ref >= entries.length) return fail(GrantFault.REF_OUT_OF_RANGE);
  if (!isU32(offset) || !isU32(length)) return fail(GrantFault.OVERFLOW);
  const e = entries[ref]!;
  const flags = e.status & 0xffff;
  if (!(flags & GTF_PERMIT_ACCESS)) return fail(GrantFault.NOT_GRANTED);
  if (flags & ~GRANT_KNOWN_FLAGS) return fail(GrantFault.MALFORMED_ENTRY);
  if (e.status >>> 16 !== domid) return fail(GrantFault.WRONG_DOMAIN);
  if (access === "write" && flags & GTF_READONLY) return fail(GrantFault.READ_ONLY);
  if (flags >>> MAP_COUNT_SHIFT === MAP_COUNT_MAX) return fail(GrantFault.BUSY);
  if (e.nframes === 0 || e.nframes > MAX_GRANT_FRAMES) return fail(GrantFault.MALFORMED_ENTRY);
  if (offset + length > e.nframes * FRAME_SIZE) return fail(GrantFault.OUT_OF_BOUNDS);
  let start = 0;
  for (const frames of regionFrames) {
    if (e.frame >= start && e.frame + e.nframes <= start + frames) {
      return { fault: GrantFault.OK, guestOffset: e.frame * FRAME_SIZE + offset };
    }
    start += frames;
  }
  return fail(GrantFault.FRAME_OUTSIDE_MEMORY);
}
