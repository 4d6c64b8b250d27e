/**
 * The USB/IP URB phase's 48-byte header, decoded and written in this one place: its named offsets, the
 * CMD_SUBMIT header into a typed record (framing checks with the readers' limits), the RET_SUBMIT and
 * RET_UNLINK headers written in place. The server's gate (usbip-server/urb-reader.ts), its reply writer,
 * the frame readers of urb-pdus.ts (client, tests, fuzzers) and the tests all use it.
 *
 *    0 command u32  4 seqnum u32  8 devid u32  12 direction u32 (0 out, 1 in)  16 ep u32
 *   CMD_SUBMIT 1   20 transfer_flags u32  24 transfer_buffer_length s32  28 start_frame s32
 *                  32 number_of_packets s32  36 interval s32  40 setup[8]
 *   RET_SUBMIT 3   20 status s32  24 actual_length s32  28 start_frame s32  32 number_of_packets s32
 *                  36 error_count s32  40 padding[8]
 *   CMD_UNLINK 2   20 unlink_seqnum u32, padding[24]
 *   RET_UNLINK 4   20 status s32, padding[24]
 */
import {
  MAX_PACKETS,
  MAX_TRANSFER_LENGTH,
  NON_ISO_PACKETS,
  URB_HEADER_SIZE,
  USBIP_VERSION,
  UsbipCommand,
} from "./protocol.js";

/** Offsets of the header's fields (big-endian). */
export const UrbField = {
  COMMAND: 0,
  SEQNUM: 4,
  DEVID: 8,
  DIRECTION: 12,
  EP: 16,
  /** CMD_SUBMIT */
  TRANSFER_FLAGS: 20,
  TRANSFER_BUFFER_LENGTH: 24,
  START_FRAME: 28,
  NUMBER_OF_PACKETS: 32,
  INTERVAL: 36,
  SETUP: 40,
  /** RET_SUBMIT, RET_UNLINK */
  STATUS: 20,
  ACTUAL_LENGTH: 24,
  ERROR_COUNT: 36,
  /** CMD_UNLINK */
  UNLINK_SEQNUM: 20,
} as const;

/** One CMD_SUBMIT header, decoded into numbers. Readers reuse one record: copy what you keep. */
export interface SubmitHeader {
  seqnum: number;
  devid: number;
  directionIn: boolean;
  ep: number;
  transferFlags: number;
  transferBufferLength: number;
  startFrame: number;
  /** 0 for a non-iso URB (the wire's 0 or 0xffffffff), else 1..MAX_PACKETS. */
  packets: number;
  /** number_of_packets as the wire has it (signed). */
  rawPackets: number;
  interval: number;
  /** The setup packet's fields (USB byte order already undone). */
  bmRequestType: number;
  bRequest: number;
  wValue: number;
  wIndex: number;
  wLength: number;
}

export function emptySubmitHeader(): SubmitHeader {
  return {
    seqnum: 0,
    devid: 0,
    directionIn: false,
    ep: 0,
    transferFlags: 0,
    transferBufferLength: 0,
    startFrame: 0,
    packets: 0,
    rawPackets: 0,
    interval: 0,
    bmRequestType: 0,
    bRequest: 0,
    wValue: 0,
    wIndex: 0,
    wLength: 0,
  };
}

function u32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}
function s32(b: Uint8Array, at: number): number {
  return (b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!;
}

/** The command word of the header at `b[0 ..]`. */
export function headerCommand(b: Uint8Array): number {
  return u32(b, UrbField.COMMAND);
}

/**
 * Why the header at `b[0 .. 48)` cannot be framed as a client's PDU (CMD_SUBMIT or CMD_UNLINK), or null:
 * the command, the direction, and for CMD_SUBMIT the buffer length and packet count against the limits.
 */
export function clientHeaderProblem(b: Uint8Array): string | null {
  const command = u32(b, UrbField.COMMAND);
  if (command !== UsbipCommand.CMD_SUBMIT && command !== UsbipCommand.CMD_UNLINK) {
    if (command >>> 16 === USBIP_VERSION) return "management request after import";
    return `unknown command 0x${command.toString(16)}`;
  }
  const direction = u32(b, UrbField.DIRECTION);
  if (direction > 1) return `direction ${direction} is neither 0 nor 1`;
  if (command === UsbipCommand.CMD_UNLINK) return null;
  const length = s32(b, UrbField.TRANSFER_BUFFER_LENGTH);
  if (length < 0 || length > MAX_TRANSFER_LENGTH) {
    return `transfer_buffer_length ${length} is outside [0, ${MAX_TRANSFER_LENGTH}]`;
  }
  const rawPackets = u32(b, UrbField.NUMBER_OF_PACKETS);
  const packets = rawPackets === NON_ISO_PACKETS ? 0 : rawPackets;
  if (packets > MAX_PACKETS) return `number_of_packets ${rawPackets} is above ${MAX_PACKETS}`;
  return null;
}

/** Decode the CMD_SUBMIT header at `b[0 .. 48)` (clientHeaderProblem found nothing) into `h`. */
export function decodeSubmitHeader(b: Uint8Array, h: SubmitHeader): void {
  const rawPackets = u32(b, UrbField.NUMBER_OF_PACKETS);
  const setup = UrbField.SETUP;
  h.seqnum = u32(b, UrbField.SEQNUM);
  h.devid = u32(b, UrbField.DEVID);
  h.directionIn = u32(b, UrbField.DIRECTION) === 1;
  h.ep = u32(b, UrbField.EP);
  h.transferFlags = u32(b, UrbField.TRANSFER_FLAGS);
  h.transferBufferLength = s32(b, UrbField.TRANSFER_BUFFER_LENGTH);
  h.startFrame = s32(b, UrbField.START_FRAME);
  h.packets = rawPackets === NON_ISO_PACKETS ? 0 : rawPackets;
  h.rawPackets = rawPackets | 0;
  h.interval = s32(b, UrbField.INTERVAL);
  h.bmRequestType = b[setup]!;
  h.bRequest = b[setup + 1]!;
  h.wValue = b[setup + 2]! | (b[setup + 3]! << 8);
  h.wIndex = b[setup + 4]! | (b[setup + 5]! << 8);
  h.wLength = b[setup + 6]! | (b[setup + 7]! << 8);
}

/** The CMD_UNLINK header at `b[0 .. 48)`: its seqnum, devid and the seqnum it unlinks. */
export function decodeUnlinkHeader(b: Uint8Array): { seqnum: number; devid: number; unlinkSeqnum: number } {
  return {
    seqnum: u32(b, UrbField.SEQNUM),
    devid: u32(b, UrbField.DEVID),
    unlinkSeqnum: u32(b, UrbField.UNLINK_SEQNUM),
  };
}

/** A reply header's fields (RET_SUBMIT; RET_UNLINK uses command, seqnum and status). */
export interface ReplyHeader {
  command: number;
  seqnum: number;
  status: number;
  actualLength: number;
  startFrame: number;
  numberOfPackets: number;
  errorCount: number;
}

/** Write a RET_SUBMIT or RET_UNLINK header at `out[at ..]`; devid, direction and ep are 0, as Linux's stub_tx sends them. */
export function writeReplyHeader(out: Buffer, at: number, r: ReplyHeader): void {
  out.writeUInt32BE(r.command, at + UrbField.COMMAND);
  out.writeUInt32BE(r.seqnum >>> 0, at + UrbField.SEQNUM);
  out.fill(0, at + UrbField.DEVID, at + UrbField.STATUS);
  out.writeInt32BE(r.status | 0, at + UrbField.STATUS);
  if (r.command === UsbipCommand.RET_SUBMIT) {
    out.writeInt32BE(r.actualLength | 0, at + UrbField.ACTUAL_LENGTH);
    out.writeInt32BE(r.startFrame | 0, at + UrbField.START_FRAME);
    out.writeInt32BE(r.numberOfPackets | 0, at + UrbField.NUMBER_OF_PACKETS);
    out.writeInt32BE(r.errorCount | 0, at + UrbField.ERROR_COUNT);
    out.fill(0, at + UrbField.SETUP, at + URB_HEADER_SIZE);
  } else {
    out.fill(0, at + UrbField.ACTUAL_LENGTH, at + URB_HEADER_SIZE);
  }
}
