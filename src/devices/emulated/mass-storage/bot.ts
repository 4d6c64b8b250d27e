/**
 * Bulk-Only Transport wrappers (USB Mass Storage Class Bulk-Only Transport 1.0): the Command Block
 * Wrapper (§5.1) and Command Status Wrapper (§5.2), with the validity checks of §6.2.1.
 *
 *   CBW, 31 bytes, little endian            CSW, 13 bytes, little endian
 *    0  dCBWSignature 0x43425355 "USBC"      0  dCSWSignature 0x53425355 "USBS"
 *    4  dCBWTag                              4  dCSWTag (echo of dCBWTag)
 *    8  dCBWDataTransferLength               8  dCSWDataResidue
 *   12  bmCBWFlags (bit 7: data IN)         12  bCSWStatus (0 passed, 1 failed, 2 phase error)
 *   13  bCBWLUN (bits 0..3)
 *   14  bCBWCBLength (bits 0..4, 1..16)
 *   15  CBWCB[16]
 */

export const CBW_SIZE = 31;
export const CSW_SIZE = 13;
export const CBW_SIGNATURE = 0x43425355;
export const CSW_SIGNATURE = 0x53425355;
export const CB_MAX_LENGTH = 16;
const CBW_OFFSET_TAG = 4;
const CBW_OFFSET_LENGTH = 8;
const CBW_OFFSET_FLAGS = 12;
const CBW_OFFSET_LUN = 13;
const CBW_OFFSET_CB_LENGTH = 14;
const CBW_OFFSET_CB = 15;
const CBW_FLAG_IN = 0x80;
const CBW_LUN_MASK = 0x0f;
const CBW_CB_LENGTH_MASK = 0x1f;

/** bCSWStatus (§5.2). */
export const CswStatus = { PASSED: 0, FAILED: 1, PHASE_ERROR: 2 } as const;
export type CswStatus = (typeof CswStatus)[keyof typeof CswStatus];

/** Class-specific requests (§3.1, §3.2). */
export const BotRequest = { RESET: 0xff, GET_MAX_LUN: 0xfe } as const;

export interface Cbw {
  readonly tag: number;
  /** Bytes the host expects to move in the data stage (untrusted: up to 4 GiB - 1). */
  readonly dataTransferLength: number;
  readonly directionIn: boolean;
  readonly lun: number;
  /** The 16-byte CB field, a private copy (the CDB, zero-padded past bCBWCBLength). */
  readonly cb: Uint8Array;
  readonly cbLength: number;
}

function readU32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

/**
 * Parse a CBW from an OUT transfer's bytes. A CBW is valid only as exactly 31 bytes with the signature
 * (§6.2.1); a CB length of 0 or more than 16 is not meaningful. Both give null: the caller stalls.
 * Everything is copied out of the (guest) view before it is used.
 */
export function parseCbw(bytes: Uint8Array): Cbw | null {
  if (bytes.length !== CBW_SIZE) return null;
  const copy = bytes.slice();
  if (readU32(copy, 0) !== CBW_SIGNATURE) return null;
  const cbLength = copy[CBW_OFFSET_CB_LENGTH]! & CBW_CB_LENGTH_MASK;
  if (cbLength === 0 || cbLength > CB_MAX_LENGTH) return null;
  const cb = new Uint8Array(CB_MAX_LENGTH);
  cb.set(copy.subarray(CBW_OFFSET_CB, CBW_OFFSET_CB + cbLength));
  return {
    tag: readU32(copy, CBW_OFFSET_TAG),
    dataTransferLength: readU32(copy, CBW_OFFSET_LENGTH),
    directionIn: (copy[CBW_OFFSET_FLAGS]! & CBW_FLAG_IN) !== 0,
    lun: copy[CBW_OFFSET_LUN]! & CBW_LUN_MASK,
    cb,
    cbLength,
  };
}

/** Encode a CBW (tests, and any host-side user). */
export function encodeCbw(c: {
  tag: number;
  dataTransferLength: number;
  directionIn: boolean;
  lun?: number;
  cb: Uint8Array | readonly number[];
}): Uint8Array {
  const out = new Uint8Array(CBW_SIZE);
  writeU32(out, 0, CBW_SIGNATURE);
  writeU32(out, CBW_OFFSET_TAG, c.tag);
  writeU32(out, CBW_OFFSET_LENGTH, c.dataTransferLength);
  out[CBW_OFFSET_FLAGS] = c.directionIn ? CBW_FLAG_IN : 0;
  out[CBW_OFFSET_LUN] = c.lun ?? 0;
  const cb = Uint8Array.from(c.cb).subarray(0, CB_MAX_LENGTH);
  out[CBW_OFFSET_CB_LENGTH] = cb.length;
  out.set(cb, CBW_OFFSET_CB);
  return out;
}

export function encodeCsw(tag: number, residue: number, status: CswStatus): Uint8Array {
  const out = new Uint8Array(CSW_SIZE);
  writeU32(out, 0, CSW_SIGNATURE);
  writeU32(out, 4, tag);
  writeU32(out, 8, residue);
  out[12] = status;
  return out;
}

export interface Csw {
  readonly signature: number;
  readonly tag: number;
  readonly residue: number;
  readonly status: number;
}

export function decodeCsw(bytes: Uint8Array): Csw | null {
  if (bytes.length !== CSW_SIZE) return null;
  return {
    signature: readU32(bytes, 0),
    tag: readU32(bytes, 4),
    residue: readU32(bytes, 8),
    status: bytes[12]!,
  };
}
