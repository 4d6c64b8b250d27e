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
 *  36  isoRegion u32     iso: guest-memory region of the pinned descriptor array
 *  40  isoOffset u32     iso: byte offset of it in that region
 *  44  startFrame u32
 *  48  reserved to 64
 *  64  seg[nSegs] × 12   { region u32, offset u32, length u32 }
 *
 * Response: the URB response layout (src/urb/layout.ts): id, status,
 * actual_length, start_frame, error_count.
 */

import type { RingGeometry } from "../rings/layout.js";
import { readS32, readU16, readU32, writeU16, writeU32 } from "../urb/bytes.js";
import { MAX_INDIRECT_SEGMENTS } from "../urb/limits.js";
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
    this.isoPackets = readU32(b, kIsoPackets);
    this.isoRegion = readU32(b, kIsoRegion);
    this.isoOffset = readU32(b, kIsoOffset);
    this.startFrame = readU32(b, kStartFrame);
    for (let i = 0; i < this.nSegs * 3; i++) this.segs[i] = readU32(b, PORT_HEADER_SIZE + i * 4);
  }
}

/** Backend side: write a submit request's fixed part; segments follow with writePortSegment. */
export function writePortSubmit(
  b: Uint8Array,
  id: number,
  kind: number,
  endpoint: number,
  directionIn: boolean,
  flags: number,
  length: number,
  setup: SetupPacket | null,
  interval: number,
): void {
  writeU32(b, kId, id);
  b[kOp] = PortOp.SUBMIT;
  b[kKind] = kind;
  b[kEndpoint] = endpoint;
  b[kDirIn] = directionIn ? 1 : 0;
  writeU16(b, kFlags, flags);
  writeU16(b, kNSegs, 0);
  writeU32(b, kLength, length);
  if (setup !== null) {
    encodeSetupInto(setup, b, kSetup);
  } else {
    b.fill(0, kSetup, kSetup + SETUP_PACKET_SIZE);
  }
  writeU32(b, kInterval, interval);
  writeU32(b, kTarget, 0);
  writeU32(b, kIsoPackets, 0);
  writeU32(b, kIsoRegion, 0);
  writeU32(b, kIsoOffset, 0);
  writeU32(b, kStartFrame, 0);
}

export function writePortIso(
  b: Uint8Array,
  packets: number,
  region: number,
  offset: number,
  startFrame: number,
): void {
  writeU32(b, kIsoPackets, packets);
  writeU32(b, kIsoRegion, region);
  writeU32(b, kIsoOffset, offset);
  writeU32(b, kStartFrame, startFrame);
}

/** Append segment `index` (the caller keeps the count and bounds it by MAX_PORT_SEGMENTS). */
export function writePortSegment(
  b: Uint8Array,
  index: number,
  region: number,
  offset: number,
  length: number,
): void {
  const at = PORT_HEADER_SIZE + index * PORT_SEGMENT_SIZE;
  writeU32(b, at, region);
  writeU32(b, at + 4, offset);
  writeU32(b, at + 8, length);
  writeU16(b, kNSegs, index + 1);
}

export function writePortCancel(b: Uint8Array, id: number, target: number): void {
  writeU32(b, kId, id);
  b[kOp] = PortOp.CANCEL;
  writeU32(b, kTarget, target);
  writeU16(b, kNSegs, 0);
}

/** Read the id and status of a port response without allocating. */
export function portResponseId(b: Uint8Array): number {
  return readU32(b, 0);
}
export function portResponseStatus(b: Uint8Array): number {
  return readS32(b, 4);
}
