/**
 * The SCSI transparent command set of the emulated disk (one logical unit, direct-access block device):
 * the commands Linux usb-storage / sd and other hosts send, decoded from the CDB into a plan the BOT layer
 * executes. Layouts from SPC-3 (INQUIRY §6.4 + VPD pages §7.6, REQUEST SENSE §6.27 with fixed-format sense
 * §4.5.3, MODE SENSE(6)/(10) §6.9/§6.10 with the caching mode page of SBC-2 §6.3.3, REPORT LUNS §6.21,
 * TEST UNIT READY §6.33, PREVENT ALLOW MEDIUM REMOVAL §6.13), SBC-2 (READ/WRITE(6)/(10)/(12)/(16),
 * READ CAPACITY(10)/(16), START STOP UNIT, SYNCHRONIZE CACHE(10), VERIFY(10)) and MMC-2/UFI's READ FORMAT
 * CAPACITIES (§5.3.3 of the USB Mass Storage UFI spec), which Windows sends to every USB disk.
 *
 * Every CDB field is untrusted: transfer lengths are only ever numbers compared with the store size and the
 * host's buffers, never allocation sizes; LBA + length is checked against the capacity before any I/O.
 */

/** Sense keys (SPC-3 Table 27) and the additional sense codes used here. */
export interface Sense {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
}

export const SENSE_NONE: Sense = { key: 0x00, asc: 0x00, ascq: 0x00 };
export const SENSE_INVALID_OPCODE: Sense = { key: 0x05, asc: 0x20, ascq: 0x00 };
export const SENSE_LBA_OUT_OF_RANGE: Sense = { key: 0x05, asc: 0x21, ascq: 0x00 };
export const SENSE_INVALID_FIELD_IN_CDB: Sense = { key: 0x05, asc: 0x24, ascq: 0x00 };
export const SENSE_LUN_NOT_SUPPORTED: Sense = { key: 0x05, asc: 0x25, ascq: 0x00 };
export const SENSE_SAVING_NOT_SUPPORTED: Sense = { key: 0x05, asc: 0x39, ascq: 0x00 };
export const SENSE_WRITE_PROTECTED: Sense = { key: 0x07, asc: 0x27, ascq: 0x00 };
export const SENSE_UNRECOVERED_READ_ERROR: Sense = { key: 0x03, asc: 0x11, ascq: 0x00 };
export const SENSE_WRITE_ERROR: Sense = { key: 0x03, asc: 0x0c, ascq: 0x00 };
export const SENSE_MEDIUM_NOT_PRESENT: Sense = { key: 0x02, asc: 0x3a, ascq: 0x00 };

export const ScsiOp = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_FORMAT_CAPACITIES: 0x23,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  VERIFY_10: 0x2f,
  SYNCHRONIZE_CACHE_10: 0x35,
  MODE_SENSE_10: 0x5a,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
} as const;

/** SERVICE ACTION IN(16) service action for READ CAPACITY(16). */
export const SAI_READ_CAPACITY_16 = 0x10;
const SERVICE_ACTION_MASK = 0x1f;

export const FIXED_SENSE_LENGTH = 18;
const SENSE_RESPONSE_CURRENT_FIXED = 0x70;
const STANDARD_INQUIRY_LENGTH = 36;
const INQUIRY_EVPD = 0x01;
const VPD_SUPPORTED_PAGES = 0x00;
const VPD_UNIT_SERIAL = 0x80;
const VPD_DEVICE_ID = 0x83;
const PERIPHERAL_DIRECT_ACCESS = 0x00;
const INQUIRY_RMB = 0x80;
/** VERSION 5: the device claims SPC-3. */
const INQUIRY_VERSION_SPC3 = 0x05;
/** RESPONSE DATA FORMAT 2 (the only valid value). */
const INQUIRY_RESPONSE_FORMAT = 0x02;
const READ_CAPACITY_10_LENGTH = 8;
const READ_CAPACITY_16_LENGTH = 32;
/** READ CAPACITY(10) answers this when the last LBA does not fit 32 bits: use READ CAPACITY(16). */
const LBA_32_OVERFLOW = 0xffff_ffff;
const MODE_PAGE_CACHING = 0x08;
const MODE_PAGE_ALL = 0x3f;
const MODE_PAGE_CODE_MASK = 0x3f;
const MODE_PC_SHIFT = 6;
const MODE_PC_SAVED = 3;
const CACHING_PAGE_LENGTH = 20;
const MODE_HEADER_6 = 4;
const MODE_HEADER_10 = 8;
/** Device-specific parameter bit 7 for direct-access devices: write protected. */
const MODE_WP = 0x80;
const REPORT_LUNS_LENGTH = 16;
/** READ FORMAT CAPACITIES: a 4-byte capacity list header and one 8-byte current capacity descriptor. */
const FORMAT_CAPACITY_LIST_LENGTH = 12;
const FORMAT_CAPACITY_DESCRIPTOR_LENGTH = 8;
/** Descriptor type 2: formatted media, the capacity is the current one. */
const FORMATTED_MEDIA = 0x02;
const VERIFY_BYTCHK = 0x02;
/** READ(6)/WRITE(6): a transfer length of 0 means 256 blocks. */
const SIX_BYTE_ZERO_MEANS = 256;
/** LBAs are numbers: the high half of a 64-bit LBA must stay below 2^21 for exact arithmetic. */
const MAX_SAFE_LBA_HIGH = 2 ** 21;

export interface LogicalUnit {
  readonly blockSize: number;
  readonly blockCount: number;
  readonly readOnly: boolean;
  readonly removable: boolean;
  /** 8 ASCII characters. */
  readonly vendor: string;
  /** 16 ASCII characters. */
  readonly product: string;
  /** 4 ASCII characters. */
  readonly revision: string;
  readonly serial: string;
}

/** What the device does for one command. `in` data is already cut to the allocation length. */
export type ScsiPlan =
  | { readonly kind: "good" }
  | { readonly kind: "check"; readonly sense: Sense }
  | { readonly kind: "in"; readonly data: Uint8Array }
  | { readonly kind: "read"; readonly offset: number; readonly length: number }
  | { readonly kind: "write"; readonly offset: number; readonly length: number }
  | { readonly kind: "sync" };

const be16 = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
const be32 = (b: Uint8Array, at: number) =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

function putBe16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}
function putBe32(b: Uint8Array, at: number, v: number): void {
  putBe16(b, at, Math.floor(v / 0x10000) & 0xffff);
  putBe16(b, at + 2, v & 0xffff);
}
function putBe64(b: Uint8Array, at: number, v: number): void {
  putBe32(b, at, Math.floor(v / 0x1_0000_0000));
  putBe32(b, at + 4, v % 0x1_0000_0000);
}

/** ASCII, space-padded or cut to `length` (INQUIRY identification fields). */
function ascii(text: string, length: number): Uint8Array {
  const out = new Uint8Array(length).fill(0x20);
  for (let i = 0; i < length && i < text.length; i++) out[i] = text.charCodeAt(i) & 0x7f;
  return out;
}

function check(sense: Sense): ScsiPlan {
  return { kind: "check", sense };
}

function inData(data: Uint8Array, allocationLength: number): ScsiPlan {
  return { kind: "in", data: data.subarray(0, Math.min(data.length, allocationLength)) };
}

/** Fixed-format sense data (SPC-3 §4.5.3). */
export function fixedSense(sense: Sense): Uint8Array {
  const out = new Uint8Array(FIXED_SENSE_LENGTH);
  out[0] = SENSE_RESPONSE_CURRENT_FIXED;
  out[2] = sense.key;
  out[7] = FIXED_SENSE_LENGTH - 8; // additional sense length
  out[12] = sense.asc;
  out[13] = sense.ascq;
  return out;
}

function inquiry(lu: LogicalUnit, cdb: Uint8Array): ScsiPlan {
  const allocation = be16(cdb, 3);
  const evpd = (cdb[1]! & INQUIRY_EVPD) !== 0;
  const page = cdb[2]!;
  if (!evpd) {
    if (page !== 0) return check(SENSE_INVALID_FIELD_IN_CDB);
    const out = new Uint8Array(STANDARD_INQUIRY_LENGTH);
    out[0] = PERIPHERAL_DIRECT_ACCESS;
    out[1] = lu.removable ? INQUIRY_RMB : 0;
    out[2] = INQUIRY_VERSION_SPC3;
    out[3] = INQUIRY_RESPONSE_FORMAT;
    out[4] = STANDARD_INQUIRY_LENGTH - 5; // additional length
    out.set(ascii(lu.vendor, 8), 8);
    out.set(ascii(lu.product, 16), 16);
    out.set(ascii(lu.revision, 4), 32);
    return inData(out, allocation);
  }
  const vpd = (code: number, body: Uint8Array): Uint8Array => {
    const out = new Uint8Array(4 + body.length);
    out[1] = code;
    putBe16(out, 2, body.length);
    out.set(body, 4);
    return out;
  };
  switch (page) {
    case VPD_SUPPORTED_PAGES:
      return inData(
        vpd(page, Uint8Array.of(VPD_SUPPORTED_PAGES, VPD_UNIT_SERIAL, VPD_DEVICE_ID)),
        allocation,
      );
    case VPD_UNIT_SERIAL:
      return inData(vpd(page, ascii(lu.serial, lu.serial.length)), allocation);
    case VPD_DEVICE_ID: {
      // One designator: T10 vendor ID based (type 1), ASCII (code set 2), associated with the LU.
      const id = ascii(`${lu.vendor.padEnd(8).slice(0, 8)}${lu.serial}`, 8 + lu.serial.length);
      const designator = new Uint8Array(4 + id.length);
      designator[0] = 0x02;
      designator[1] = 0x01;
      designator[3] = id.length;
      designator.set(id, 4);
      return inData(vpd(page, designator), allocation);
    }
    default:
      return check(SENSE_INVALID_FIELD_IN_CDB);
  }
}

function modeSense(lu: LogicalUnit, cdb: Uint8Array, ten: boolean): ScsiPlan {
  const page = cdb[2]! & MODE_PAGE_CODE_MASK;
  const pc = cdb[2]! >> MODE_PC_SHIFT;
  const allocation = ten ? be16(cdb, 7) : cdb[4]!;
  if (pc === MODE_PC_SAVED) return check(SENSE_SAVING_NOT_SUPPORTED);
  if (page !== MODE_PAGE_CACHING && page !== MODE_PAGE_ALL) return check(SENSE_INVALID_FIELD_IN_CDB);
  // Caching page with no bit set (write cache disabled): the same for current, default and changeable
  // values (PC 0, 2, 1), as nothing in it can be changed.
  const caching = new Uint8Array(CACHING_PAGE_LENGTH);
  caching[0] = MODE_PAGE_CACHING;
  caching[1] = CACHING_PAGE_LENGTH - 2;
  const header = ten ? MODE_HEADER_10 : MODE_HEADER_6;
  const out = new Uint8Array(header + caching.length);
  out.set(caching, header);
  const deviceSpecific = lu.readOnly ? MODE_WP : 0;
  if (ten) {
    putBe16(out, 0, out.length - 2); // mode data length excludes itself
    out[3] = deviceSpecific;
    // block descriptor length (bytes 6..7) 0: no block descriptors
  } else {
    out[0] = out.length - 1;
    out[2] = deviceSpecific;
  }
  return inData(out, allocation);
}

function readCapacity10(lu: LogicalUnit): ScsiPlan {
  const out = new Uint8Array(READ_CAPACITY_10_LENGTH);
  const last = lu.blockCount - 1;
  putBe32(out, 0, last > LBA_32_OVERFLOW - 1 ? LBA_32_OVERFLOW : last);
  putBe32(out, 4, lu.blockSize);
  return { kind: "in", data: out };
}

function readCapacity16(lu: LogicalUnit, cdb: Uint8Array): ScsiPlan {
  const out = new Uint8Array(READ_CAPACITY_16_LENGTH);
  putBe64(out, 0, lu.blockCount - 1);
  putBe32(out, 8, lu.blockSize);
  return inData(out, be32(cdb, 10));
}

/** LBA and block count of a READ/WRITE/VERIFY CDB; null when the opcode is not one. */
function blockRange(cdb: Uint8Array): { lba: number; blocks: number } | null {
  switch (cdb[0]) {
    case ScsiOp.READ_6:
    case ScsiOp.WRITE_6:
      return {
        lba: ((cdb[1]! & 0x1f) << 16) | be16(cdb, 2),
        blocks: cdb[4] === 0 ? SIX_BYTE_ZERO_MEANS : cdb[4]!,
      };
    case ScsiOp.READ_10:
    case ScsiOp.WRITE_10:
    case ScsiOp.VERIFY_10:
      return { lba: be32(cdb, 2), blocks: be16(cdb, 7) };
    case ScsiOp.READ_12:
    case ScsiOp.WRITE_12:
      return { lba: be32(cdb, 2), blocks: be32(cdb, 6) };
    case ScsiOp.READ_16:
    case ScsiOp.WRITE_16: {
      const high = be32(cdb, 2);
      // An LBA this large is past any store: make it out of range without losing precision.
      const lba = high >= MAX_SAFE_LBA_HIGH ? Number.MAX_SAFE_INTEGER : high * 0x1_0000_0000 + be32(cdb, 6);
      return { lba, blocks: be32(cdb, 10) };
    }
    default:
      return null;
  }
}

function blockIo(lu: LogicalUnit, cdb: Uint8Array, write: boolean): ScsiPlan {
  const range = blockRange(cdb)!;
  if (range.lba + range.blocks > lu.blockCount) return check(SENSE_LBA_OUT_OF_RANGE);
  if (write && lu.readOnly) return check(SENSE_WRITE_PROTECTED);
  if (range.blocks === 0) return { kind: "good" };
  const offset = range.lba * lu.blockSize;
  const length = range.blocks * lu.blockSize;
  return write ? { kind: "write", offset, length } : { kind: "read", offset, length };
}

/** READ FORMAT CAPACITIES: the current (formatted) capacity only, no formattable descriptors. */
function readFormatCapacities(lu: LogicalUnit, cdb: Uint8Array): ScsiPlan {
  const out = new Uint8Array(FORMAT_CAPACITY_LIST_LENGTH);
  out[3] = FORMAT_CAPACITY_DESCRIPTOR_LENGTH; // capacity list length
  // Number of blocks is 32 bits: a larger disk says all ones, as READ CAPACITY(10) does.
  putBe32(out, 4, Math.min(lu.blockCount, LBA_32_OVERFLOW));
  out[8] = FORMATTED_MEDIA;
  out[9] = (lu.blockSize >>> 16) & 0xff; // block length, 24 bits
  putBe16(out, 10, lu.blockSize & 0xffff);
  return inData(out, be16(cdb, 7));
}

function reportLuns(cdb: Uint8Array): ScsiPlan {
  const out = new Uint8Array(REPORT_LUNS_LENGTH);
  putBe32(out, 0, 8); // LUN list length: one 8-byte entry, LUN 0 (all zero)
  return inData(out, be32(cdb, 6));
}

/**
 * Decide what a CDB does. `sense` is the sense data kept from the previous command (for REQUEST SENSE).
 * Never throws; an unknown opcode is CHECK CONDITION / INVALID COMMAND OPERATION CODE.
 */
export function planCommand(lu: LogicalUnit, cdb: Uint8Array, lun: number, sense: Sense): ScsiPlan {
  const op = cdb[0]!;
  if (lun !== 0 && op !== ScsiOp.INQUIRY && op !== ScsiOp.REQUEST_SENSE)
    return check(SENSE_LUN_NOT_SUPPORTED);
  switch (op) {
    case ScsiOp.TEST_UNIT_READY:
    case ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL:
    case ScsiOp.START_STOP_UNIT:
      return { kind: "good" };
    case ScsiOp.REQUEST_SENSE:
      return inData(fixedSense(sense), cdb[4]!);
    case ScsiOp.INQUIRY:
      return inquiry(lu, cdb);
    case ScsiOp.MODE_SENSE_6:
      return modeSense(lu, cdb, false);
    case ScsiOp.MODE_SENSE_10:
      return modeSense(lu, cdb, true);
    case ScsiOp.READ_CAPACITY_10:
      return readCapacity10(lu);
    case ScsiOp.READ_FORMAT_CAPACITIES:
      return readFormatCapacities(lu, cdb);
    case ScsiOp.SERVICE_ACTION_IN_16:
      return (cdb[1]! & SERVICE_ACTION_MASK) === SAI_READ_CAPACITY_16
        ? readCapacity16(lu, cdb)
        : check(SENSE_INVALID_FIELD_IN_CDB);
    case ScsiOp.READ_6:
    case ScsiOp.READ_10:
    case ScsiOp.READ_12:
    case ScsiOp.READ_16:
      return blockIo(lu, cdb, false);
    case ScsiOp.WRITE_6:
    case ScsiOp.WRITE_10:
    case ScsiOp.WRITE_12:
    case ScsiOp.WRITE_16:
      return blockIo(lu, cdb, true);
    case ScsiOp.VERIFY_10: {
      // Without BYTCHK the medium is "verified" (memory and files cannot rot); BYTCHK would need a
      // data-out compare, not supported.
      if ((cdb[1]! & VERIFY_BYTCHK) !== 0) return check(SENSE_INVALID_FIELD_IN_CDB);
      const r = blockRange(cdb)!;
      return r.lba + r.blocks > lu.blockCount ? check(SENSE_LBA_OUT_OF_RANGE) : { kind: "good" };
    }
    case ScsiOp.SYNCHRONIZE_CACHE_10:
      return { kind: "sync" };
    case ScsiOp.REPORT_LUNS:
      return reportLuns(cdb);
    default:
      return check(SENSE_INVALID_OPCODE);
  }
}
