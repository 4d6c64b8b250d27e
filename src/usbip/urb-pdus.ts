/**
 * The USB/IP URB phase (after a successful import, on the same connection): the 48-byte header and the
 * four PDUs, their encoders, and a frame reader for each side. The header itself is decoded and written by
 * urb-header.ts, which the server's gate (src/usbip-server/urb-reader.ts) uses too; these readers serve
 * the client, tests and fuzzers.
 *
 *    0 command u32  4 seqnum u32  8 devid u32  12 direction u32 (0 out, 1 in)  16 ep u32
 *   CMD_SUBMIT 1   20 transfer_flags u32  24 transfer_buffer_length s32  28 start_frame s32
 *                  32 number_of_packets s32  36 interval s32  40 setup[8]
 *                  then OUT data (transfer_buffer_length bytes), then number_of_packets iso descriptors
 *   RET_SUBMIT 3   20 status s32  24 actual_length s32  28 start_frame s32  32 number_of_packets s32
 *                  36 error_count s32  40 padding[8]
 *                  then IN data (actual_length bytes; iso: the packets' data compacted), then iso descriptors
 *   CMD_UNLINK 2   20 unlink_seqnum u32, padding[24]
 *   RET_UNLINK 4   20 status s32, padding[24]
 *
 *   iso descriptor, 16 bytes: 0 offset u32  4 length u32  8 actual_length u32  12 status s32
 */
import type { ByteQueue } from "../util/byte-queue.js";
import {
  ISO_DESCRIPTOR_SIZE,
  MAX_PACKETS,
  NON_ISO_PACKETS,
  URB_HEADER_SIZE,
  UsbipCommand,
} from "./protocol.js";
import { malformed, NEED, type ReadResult } from "./read-result.js";
import {
  clientHeaderProblem,
  decodeSubmitHeader,
  decodeUnlinkHeader,
  emptySubmitHeader,
  headerCommand,
  UrbField,
} from "./urb-header.js";
import { view } from "./wire-fields.js";

export interface IsoDescriptor {
  readonly offset: number;
  readonly length: number;
  readonly actualLength: number;
  readonly status: number;
}

interface UrbHeaderBase {
  readonly seqnum: number;
  readonly devid: number;
  /** Direction field: true for 1 (in). */
  readonly directionIn: boolean;
  readonly ep: number;
}

export interface CmdSubmit extends UrbHeaderBase {
  readonly command: "submit";
  readonly transferFlags: number;
  readonly transferBufferLength: number;
  readonly startFrame: number;
  /** -1 (0xffffffff on the wire) or 0 for a non-iso URB; 1..MAX_PACKETS for iso. */
  readonly numberOfPackets: number;
  readonly interval: number;
  /** The 8 setup bytes as sent (meaningful for endpoint 0). */
  readonly setup: Uint8Array;
  /** OUT data, transfer_buffer_length bytes; empty for IN. */
  readonly data: Uint8Array;
  readonly iso: readonly IsoDescriptor[];
}

export interface CmdUnlink extends UrbHeaderBase {
  readonly command: "unlink";
  readonly unlinkSeqnum: number;
}

export interface RetSubmit extends UrbHeaderBase {
  readonly command: "ret-submit";
  readonly status: number;
  readonly actualLength: number;
  readonly startFrame: number;
  readonly numberOfPackets: number;
  readonly errorCount: number;
  /** IN data: actual_length bytes (iso: packets compacted). */
  readonly data: Uint8Array;
  readonly iso: readonly IsoDescriptor[];
}

export interface RetUnlink extends UrbHeaderBase {
  readonly command: "ret-unlink";
  readonly status: number;
}

export type ClientPdu = CmdSubmit | CmdUnlink;
export type ServerPdu = RetSubmit | RetUnlink;

function isoPacketCount(raw: number): number {
  return raw === NON_ISO_PACKETS || raw === 0 ? 0 : raw;
}

function writeBase(v: DataView, command: number, h: UrbHeaderBase): void {
  v.setUint32(0, command);
  v.setUint32(4, h.seqnum >>> 0);
  v.setUint32(8, h.devid >>> 0);
  v.setUint32(12, h.directionIn ? 1 : 0);
  v.setUint32(16, h.ep >>> 0);
}

function writeIso(v: DataView, at: number, iso: readonly IsoDescriptor[]): void {
  for (let i = 0; i < iso.length; i++) {
    const d = iso[i]!;
    const p = at + i * ISO_DESCRIPTOR_SIZE;
    v.setUint32(p, d.offset >>> 0);
    v.setUint32(p + 4, d.length >>> 0);
    v.setUint32(p + 8, d.actualLength >>> 0);
    v.setInt32(p + 12, d.status | 0);
  }
}

function readIso(bytes: Uint8Array, at: number, count: number): IsoDescriptor[] {
  const v = view(bytes);
  const out: IsoDescriptor[] = [];
  for (let i = 0; i < count; i++) {
    const p = at + i * ISO_DESCRIPTOR_SIZE;
    out.push({
      offset: v.getUint32(p),
      length: v.getUint32(p + 4),
      actualLength: v.getUint32(p + 8),
      status: v.getInt32(p + 12),
    });
  }
  return out;
}

/** CMD_SUBMIT with its OUT data and iso descriptors, as one buffer. */
export function encodeCmdSubmit(c: Omit<CmdSubmit, "command">): Uint8Array {
  const data = c.directionIn ? new Uint8Array(0) : c.data;
  const out = new Uint8Array(URB_HEADER_SIZE + data.length + c.iso.length * ISO_DESCRIPTOR_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.CMD_SUBMIT, c);
  v.setUint32(20, c.transferFlags >>> 0);
  v.setInt32(24, c.transferBufferLength | 0);
  v.setInt32(28, c.startFrame | 0);
  v.setInt32(32, c.iso.length > 0 ? c.iso.length : c.numberOfPackets | 0);
  v.setInt32(36, c.interval | 0);
  out.set(c.setup.subarray(0, 8), 40);
  out.set(data, URB_HEADER_SIZE);
  writeIso(v, URB_HEADER_SIZE + data.length, c.iso);
  return out;
}

export function encodeCmdUnlink(c: Omit<CmdUnlink, "command">): Uint8Array {
  const out = new Uint8Array(URB_HEADER_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.CMD_UNLINK, c);
  v.setUint32(20, c.unlinkSeqnum >>> 0);
  return out;
}

/** RET_SUBMIT header followed by `data` (already compacted for iso) and the iso descriptors. */
export function encodeRetSubmit(r: Omit<RetSubmit, "command">): Uint8Array {
  const out = new Uint8Array(URB_HEADER_SIZE + r.data.length + r.iso.length * ISO_DESCRIPTOR_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.RET_SUBMIT, r);
  v.setInt32(20, r.status | 0);
  v.setInt32(24, r.actualLength | 0);
  v.setInt32(28, r.startFrame | 0);
  v.setInt32(32, r.iso.length);
  v.setInt32(36, r.errorCount | 0);
  out.set(r.data, URB_HEADER_SIZE);
  writeIso(v, URB_HEADER_SIZE + r.data.length, r.iso);
  return out;
}

export function encodeRetUnlink(r: Omit<RetUnlink, "command">): Uint8Array {
  const out = new Uint8Array(URB_HEADER_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.RET_UNLINK, r);
  v.setInt32(20, r.status | 0);
  return out;
}

/** Server side, URB phase: CMD_SUBMIT (with its OUT data and iso descriptors) or CMD_UNLINK. */
export function readClientPdu(q: ByteQueue): ReadResult<ClientPdu> {
  if (q.length < URB_HEADER_SIZE) return NEED;
  const head = q.peek(URB_HEADER_SIZE);
  const problem = clientHeaderProblem(head);
  if (problem !== null) return malformed(problem);
  if (headerCommand(head) === UsbipCommand.CMD_UNLINK) {
    const u = decodeUnlinkHeader(head);
    const directionIn = view(head).getUint32(UrbField.DIRECTION) === 1;
    const ep = view(head).getUint32(UrbField.EP);
    q.take(URB_HEADER_SIZE);
    return {
      kind: "frame",
      frame: {
        command: "unlink",
        seqnum: u.seqnum,
        devid: u.devid,
        directionIn,
        ep,
        unlinkSeqnum: u.unlinkSeqnum,
      },
    };
  }
  const h = emptySubmitHeader();
  decodeSubmitHeader(head, h);
  const dataLength = h.directionIn ? 0 : h.transferBufferLength;
  const total = URB_HEADER_SIZE + dataLength + h.packets * ISO_DESCRIPTOR_SIZE;
  if (q.length < total) return NEED;
  const bytes = q.take(total);
  return {
    kind: "frame",
    frame: {
      command: "submit",
      seqnum: h.seqnum,
      devid: h.devid,
      directionIn: h.directionIn,
      ep: h.ep,
      transferFlags: h.transferFlags,
      transferBufferLength: h.transferBufferLength,
      startFrame: h.startFrame,
      numberOfPackets: h.packets === 0 ? h.rawPackets : h.packets,
      interval: h.interval,
      setup: bytes.slice(UrbField.SETUP, URB_HEADER_SIZE),
      data: bytes.subarray(URB_HEADER_SIZE, URB_HEADER_SIZE + dataLength),
      iso: readIso(bytes, URB_HEADER_SIZE + dataLength, h.packets),
    },
  };
}

/** What the client knows of a request it sent, to frame the reply (RET_SUBMIT carries no direction). */
export interface SentSubmit {
  readonly directionIn: boolean;
  readonly transferBufferLength: number;
}

/** Client side, URB phase. An unknown seqnum or an IN reply longer than asked is malformed (vhci drops too). */
export function readServerPdu(
  q: ByteQueue,
  lookup: (seqnum: number) => SentSubmit | undefined,
): ReadResult<ServerPdu> {
  if (q.length < URB_HEADER_SIZE) return NEED;
  const head = q.peek(URB_HEADER_SIZE);
  const h = view(head);
  const command = h.getUint32(0);
  const base = {
    seqnum: h.getUint32(4),
    devid: h.getUint32(8),
    directionIn: h.getUint32(12) === 1,
    ep: h.getUint32(16),
  };
  if (command === UsbipCommand.RET_UNLINK) {
    q.take(URB_HEADER_SIZE);
    return { kind: "frame", frame: { command: "ret-unlink", ...base, status: h.getInt32(20) } };
  }
  if (command !== UsbipCommand.RET_SUBMIT) return malformed(`unknown command 0x${command.toString(16)}`);
  const sent = lookup(base.seqnum);
  if (sent === undefined) return malformed(`RET_SUBMIT for seqnum ${base.seqnum}, which is not in flight`);
  const actual = h.getInt32(24);
  if (actual < 0 || actual > sent.transferBufferLength) {
    return malformed(
      `actual_length ${actual} outside [0, ${sent.transferBufferLength}] for seqnum ${base.seqnum}`,
    );
  }
  const rawPackets = h.getUint32(32);
  const packets = isoPacketCount(rawPackets);
  if (packets > MAX_PACKETS) return malformed(`number_of_packets ${rawPackets} is above ${MAX_PACKETS}`);
  const dataLength = sent.directionIn ? actual : 0;
  const total = URB_HEADER_SIZE + dataLength + packets * ISO_DESCRIPTOR_SIZE;
  if (q.length < total) return NEED;
  const bytes = q.take(total);
  return {
    kind: "frame",
    frame: {
      command: "ret-submit",
      ...base,
      status: h.getInt32(20),
      actualLength: actual,
      startFrame: h.getInt32(28),
      numberOfPackets: packets,
      errorCount: h.getInt32(36),
      data: bytes.subarray(URB_HEADER_SIZE, URB_HEADER_SIZE + dataLength),
      iso: readIso(bytes, URB_HEADER_SIZE + dataLength, packets),
    },
  };
}
