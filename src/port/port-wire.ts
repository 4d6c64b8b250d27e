/**
 * The port ring: backend worker → port worker. The backend has already
 * parsed the guest's URB, routed it and pinned its grants; what crosses this
 * ring is trusted host-side state, so the port worker decodes without a
 * gate (it still bounds every count by the slot). Buffers travel as
 * (guest-memory region, byte offset, length) segments: the port worker builds
 * views over the same SharedArrayBuffers, so data is never copied unless the
 * guest scattered it (then the port worker bounces privately, and counts it).
 *
 * Request (one 4 KiB slot), little-endian:
 *   0  id u32            port-ring id (the backend maps it back to the guest's URB id)
 *   4  op u8             1 submit, 2 cancel
 *   5  kind u8           usbif transfer type: 0 iso, 1 interrupt, 2 control, 3 bulk
 *   6  endpoint u8       0..15
 *   7  directionIn u8    1 = IN
 *   8  flags u16         bit0 SHORT_NOT_OK, bit1 ZERO_PACKET, bit2 ISO_ASAP
 *  10  nSegs u16         ≤ MAX_PORT_SEGMENTS
 *  12  length u32        total buffer length
 *  16  setup[8]          control only
 *  24  interval u32
 *  28  target u32        cancel: the port-ring id to cancel
 *  32  isoPackets u32    iso: packet count
 *  36  isoRegion u32     iso: guest-memory region of the pinned descriptor array (results are written there)
 *  40  isoOffset u32     iso: byte offset of it in that region
 *  44  startFrame u32
 *  48  streamId u32      bulk: the stream (0: none)
 *  52  reserved to 64
 *  64  seg[nSegs] × 12   { region u32, offset u32, length u32 }
 *
 * Iso packets (offset, length), as the backend's gate copied and checked them, do not fit a slot (up to
 * MAX_ISO_PACKETS × 8 bytes): they travel in the port's iso table, a SharedArrayBuffer beside the ring
 * with one MAX_ISO_PACKETS × { offset u32, length u32 } entry per port-ring id. It is host memory: the
 * port service never reads the guest's descriptor array, it only writes each packet's result into it.
 * (Untouched pages of a SharedArrayBuffer cost no memory: a port that never sees iso costs nothing.)
 *
 * Response (20 bytes; the URB response's fields, src/urb/layout.ts), read and written only through
 * readPortResponse / writePortResponse:
 *   0  id u32   4  status s32   8  actualLength u32   12  startFrame u32   16  errorCount u32
 */

import type { RingGeometry } from "../rings/layout.js";
import { readS32, readU16, readU32, writeU16, writeU32 } from "../urb/bytes.js";
import { MAX_INDIRECT_SEGMENTS, MAX_ISO_PACKETS } from "../urb/limits.js";
import type { UrbStatus } from "../urb/status.js";
import type { TransferType } from "../urb/types.js";
import {
  decodeSetupInto,
  emptySetup,
  encodeSetupInto,
  type MutableSetupPacket,
  SETUP_PACKET_SIZE,
  type SetupPacket,
} from "../usb/index.js";

export const PORT_SLOT_SIZE = 4096;
/** 512 slots: up to 256 transfers (the URB ring's bound) plus a cancel for each. */
export const PORT_RING_GEOMETRY: RingGeometry = { slots: 512, slotSize: PORT_SLOT_SIZE };
export const PORT_HEADER_SIZE = 64;
/** A port-ring answer: id, status, actual length, start frame, error count (u32 each). */
export const PORT_RESPONSE_SIZE = 20;
export const PORT_SEGMENT_SIZE = 12;
export const MAX_PORT_SEGMENTS = MAX_INDIRECT_SEGMENTS;
if (PORT_HEADER_SIZE + MAX_PORT_SEGMENTS * PORT_SEGMENT_SIZE > PORT_SLOT_SIZE) {
  throw new Error("port ring slot too small for MAX_PORT_SEGMENTS");
}

export const PortOp = { SUBMIT: 1, CANCEL: 2 } as const;
export type PortOp = (typeof PortOp)[keyof typeof PortOp];

export const PORT_FLAG_SHORT_NOT_OK = 1 << 0;
export const PORT_FLAG_ZERO_PACKET = 1 << 1;
export const PORT_FLAG_ISO_ASAP = 1 << 2;

/** u32 words per port-ring id in the iso table: offset and length of up to MAX_ISO_PACKETS packets. */
const ISO_TABLE_ENTRY_WORDS = MAX_ISO_PACKETS * 2;

/** The port's iso table (see the header): shared by the backend (writes) and the port service (reads). */
export function createPortIsoTable(): SharedArrayBuffer {
  return new SharedArrayBuffer(PORT_RING_GEOMETRY.slots * ISO_TABLE_ENTRY_WORDS * 4);
}

const kId = 0;
const kOp = 4;
const kKind = 5;
const kEndpoint = 6;
const kDirIn = 7;
const kFlags = 8;
const kNSegs = 10;
const kLength = 12;
const kSetup = 16;
const kInterval = 24;
const kTarget = 28;
const kIsoPackets = 32;
const kIsoRegion = 36;
const kIsoOffset = 40;
const kStartFrame = 44;
const kStreamId = 48;

const kRspId = 0;
const kRspStatus = 4;
const kRspActualLength = 8;
const kRspStartFrame = 12;
const kRspErrorCount = 16;

/** A decoded port request; one object reused by the port worker for every slot. */
export class PortRequest {
  id = 0;
  op: number = PortOp.SUBMIT;
  kind = 0;
  endpoint = 0;
  directionIn = false;
  flags = 0;
  nSegs = 0;
  length = 0;
  /**
   * Overwritten by every decode (no object per request): valid until the next one. A transfer that keeps
   * the setup packet beyond that (a device may hold its request until done) takes a copy.
   */
  readonly setup: MutableSetupPacket = emptySetup();
  interval = 0;
  target = 0;
  isoPackets = 0;
  isoRegion = 0;
  isoOffset = 0;
  startFrame = 0;
  streamId = 0;
  /** Segments as flat triples: region, offset, length. */
  readonly segs = new Uint32Array(MAX_PORT_SEGMENTS * 3);

  decode(b: Uint8Array): void {
    this.id = readU32(b, kId);
    this.op = b[kOp]!;
    this.kind = b[kKind]!;
    this.endpoint = b[kEndpoint]!;
    this.directionIn = b[kDirIn] === 1;
    this.flags = readU16(b, kFlags);
    this.nSegs = Math.min(readU16(b, kNSegs), MAX_PORT_SEGMENTS);
    this.length = readU32(b, kLength);
    decodeSetupInto(b, kSetup, this.setup);
    this.interval = readU32(b, kInterval);
    this.target = readU32(b, kTarget);
    this.isoPackets = Math.min(readU32(b, kIsoPackets), MAX_ISO_PACKETS);
    this.isoRegion = readU32(b, kIsoRegion);
    this.isoOffset = readU32(b, kIsoOffset);
    this.startFrame = readU32(b, kStartFrame);
    this.streamId = readU32(b, kStreamId);
    for (let i = 0; i < this.nSegs * 3; i++) this.segs[i] = readU32(b, PORT_HEADER_SIZE + i * 4);
  }
}

/**
 * What a submit carries: the backend's resolved request has these fields (src/backend/resolve.ts), and
 * tests build one by hand. `segments` holds `segmentCount` (region, offset, length) triples of pinned
 * guest memory.
 */
export interface PortSubmit {
  readonly type: TransferType;
  readonly endpoint: number;
  readonly directionIn: boolean;
  /** PORT_FLAG_* bits. */
  readonly flags: number;
  readonly bufferLength: number;
  readonly setup: SetupPacket | null;
  readonly interval: number;
  readonly segments: Uint32Array;
  readonly segmentCount: number;
  /** Iso only (0 otherwise): the packet count and where the guest's descriptor array is pinned. */
  readonly isoPacketCount: number;
  readonly isoRegion: number;
  readonly isoOffset: number;
  readonly startFrame: number;
  /** Bulk only (0 otherwise): the stream, already checked against MAX_STREAM_ID by the gate. */
  readonly streamId: number;
}

const NO_PORT_SEGMENTS = new Uint32Array(0);

/** A submit with no segments, no setup and no iso fields, `over` set: for tests and tools that build one by hand. */
export function portSubmit(
  over: Partial<PortSubmit> & Pick<PortSubmit, "type" | "endpoint" | "directionIn">,
): PortSubmit {
  return {
    flags: 0,
    bufferLength: 0,
    setup: null,
    interval: 0,
    segments: NO_PORT_SEGMENTS,
    segmentCount: 0,
    isoPacketCount: 0,
    isoRegion: 0,
    isoOffset: 0,
    startFrame: 0,
    streamId: 0,
    ...over,
  };
}

/** Backend side: write a whole submit request (fixed part and segments) into a port-ring slot. */
export function writePortSubmit(b: Uint8Array, id: number, s: PortSubmit): void {
  writeU32(b, kId, id);
  b[kOp] = PortOp.SUBMIT;
  b[kKind] = s.type;
  b[kEndpoint] = s.endpoint;
  b[kDirIn] = s.directionIn ? 1 : 0;
  writeU16(b, kFlags, s.flags);
  writeU32(b, kLength, s.bufferLength);
  if (s.setup !== null) {
    encodeSetupInto(s.setup, b, kSetup);
  } else {
    b.fill(0, kSetup, kSetup + SETUP_PACKET_SIZE);
  }
  writeU32(b, kInterval, s.interval);
  writeU32(b, kTarget, 0);
  writeU32(b, kIsoPackets, s.isoPacketCount);
  writeU32(b, kIsoRegion, s.isoRegion);
  writeU32(b, kIsoOffset, s.isoOffset);
  writeU32(b, kStartFrame, s.startFrame);
  writeU32(b, kStreamId, s.streamId);
  const count = Math.min(s.segmentCount, MAX_PORT_SEGMENTS);
  writeU16(b, kNSegs, count);
  for (let i = 0; i < count * 3; i++) writeU32(b, PORT_HEADER_SIZE + i * 4, s.segments[i]!);
}

/** Backend side: the iso packets of port-ring id `id`, as (offset, length) pairs, into the iso table. */
export function writePortIsoPackets(
  table: Uint32Array,
  id: number,
  packets: readonly { readonly offset: number; readonly length: number }[],
): void {
  const base = id * ISO_TABLE_ENTRY_WORDS;
  const n = Math.min(packets.length, MAX_ISO_PACKETS);
  for (let i = 0; i < n; i++) {
    table[base + i * 2] = packets[i]!.offset;
    table[base + i * 2 + 1] = packets[i]!.length;
  }
}

/** Port side: packet `index` of port-ring id `id` in the iso table. */
export function portIsoPacketOffset(table: Uint32Array, id: number, index: number): number {
  return table[id * ISO_TABLE_ENTRY_WORDS + index * 2]!;
}
export function portIsoPacketLength(table: Uint32Array, id: number, index: number): number {
  return table[id * ISO_TABLE_ENTRY_WORDS + index * 2 + 1]!;
}

export function writePortCancel(b: Uint8Array, id: number, target: number): void {
  writeU32(b, kId, id);
  b[kOp] = PortOp.CANCEL;
  writeU32(b, kTarget, target);
  writeU16(b, kNSegs, 0);
}

/** A decoded port response; the backend reuses one for every answer. */
export class PortResponse {
  id = 0;
  status = 0 as UrbStatus;
  actualLength = 0;
  startFrame = 0;
  errorCount = 0;
}

/** Port side: write an answer into a response slot. */
export function writePortResponse(
  b: Uint8Array,
  id: number,
  status: number,
  actualLength: number,
  startFrame: number,
  errorCount: number,
): void {
  writeU32(b, kRspId, id);
  writeU32(b, kRspStatus, status);
  writeU32(b, kRspActualLength, actualLength);
  writeU32(b, kRspStartFrame, startFrame);
  writeU32(b, kRspErrorCount, errorCount);
}

/**
 * Backend side: decode an answer (copied out of the ring) into `into`. The status is passed on as the
 * port service wrote it: the port service is host-side and trusted (the frontend checks it again).
 */
export function readPortResponse(b: Uint8Array, into: PortResponse): PortResponse {
  into.id = readU32(b, kRspId);
  into.status = readS32(b, kRspStatus) as UrbStatus;
  into.actualLength = readU32(b, kRspActualLength);
  into.startFrame = readU32(b, kRspStartFrame);
  into.errorCount = readU32(b, kRspErrorCount);
  return into;
}
