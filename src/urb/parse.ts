/**
 * The parse gate: the only place a URB request is read from bytes. The backend copies the ring slot into
 * private memory first (Xen `RING_COPY_REQUEST`), then calls `parseRequest`; everything downstream trusts
 * the typed result and never reads the shared slot again (Firecracker block `Request::parse` style).
 *
 * Rules come from Xen usbif.h (pipe and flags), Linux `usb_submit_urb` (per-type checks), and usbvirt's
 * own layout (layout.ts). The gate never throws and allocates only its result. Every loop is bounded by a
 * constant (8 inline segments, MAX_INDIRECT_SEGMENTS, the 128-byte slot), not by a peer's count.
 *
 * Checks run in this order, and the first failure is reported (tests rely on the order):
 *   1 slot size                     bad-slot-size
 *   2 pipe reserved bits            pipe-reserved-bits
 *   3 transfer_flags reserved bits  flags-reserved-bits
 *   4 port 1..31                    port-out-of-range
 *   5 unlink requests: no flags, no buffer, not itself, rest zero   (then done)
 *   6 buffer_length ≤ MAX_BUFFER_LENGTH                           buffer-too-long
 *   7 segment count (inline ≤ 8; indirect 1..256)                 too-many-segments, indirect-empty
 *   8 buffer_length 0 ⇔ no segments                               segments-without-buffer, buffer-without-segments
 *   9 inline: each segment non-empty and in u32 range, sum = buffer_length
 *     indirect: page descriptor length = count × 12, within one frame
 *  10 per type: endpoint, flags, control buffer ≤ 0xffff and setup, interval, iso packets
 *  11 unused octets zero                                          reserved-bytes-nonzero
 *
 * Control rules (decided here, after Linux usb_submit_urb and USB 2.0 §9.3): when wLength > 0 the pipe
 * direction must equal bmRequestType bit 7; when wLength is 0 there is no data stage and either pipe
 * direction is accepted. Control IN needs buffer_length ≥ wLength (Linux drivers such as usbhid pad IN
 * buffers to the packet size, and the device never sends more than wLength); control OUT needs
 * buffer_length = wLength exactly, because libusb rebuilds wLength from the OUT data length. No control
 * buffer may exceed MAX_CONTROL_BUFFER_LENGTH (a u16 wLength bounds every data stage). Control is
 * allowed on any endpoint 0..15 (legal USB, if rare); bulk, interrupt and iso are not allowed on 0.
 */

import { FRAME_SIZE, type GrantRef } from "../dma-map/types.js";
import { requestIsIn } from "../usb/index.js";
import { readU16, readU32 } from "./bytes.js";
import {
  FLAG_INDIRECT,
  FLAG_ISO_ASAP,
  FLAG_SHORT_NOT_OK,
  FLAG_ZERO_PACKET,
  INLINE_SEGMENT_SLOTS,
  ISO_FRAME_DESCRIPTOR_SIZE,
  kBulkStreamId,
  kCtrlIndex,
  kCtrlLength,
  kCtrlRequest,
  kCtrlRequestType,
  kCtrlValue,
  kIntInterval,
  kIsoDescOffset,
  kIsoDescRef,
  kIsoInterval,
  kIsoNumberOfPackets,
  kIsoStartFrame,
  kReqBufferLength,
  kReqId,
  kReqNrSegs,
  kReqPipe,
  kReqSegments,
  kReqTransferFlags,
  kSegLength,
  kSegOffset,
  kSegRef,
  kUnlinkId,
  SEGMENT_SIZE,
  TRANSFER_FLAGS_RESERVED_MASK,
  URB_SLOT_SIZE,
} from "./layout.js";
import {
  MAX_BUFFER_LENGTH,
  MAX_CONTROL_BUFFER_LENGTH,
  MAX_INDIRECT_SEGMENTS,
  MAX_INLINE_SEGMENTS,
  MAX_ISO_PACKETS,
  MAX_STREAM_ID,
} from "./limits.js";
import {
  pipeDevice,
  pipeDirection,
  pipeEndpoint,
  pipeIsUnlink,
  pipePort,
  pipeReservedBits,
  pipeType,
} from "./pipe.js";
import { PARSE_REJECTIONS, type ParseReason } from "./reasons.js";
import type { UrbStatus } from "./status.js";
import {
  Direction,
  MIN_PORT,
  NO_BUFFER,
  type PortNum,
  type Segment,
  TransferType,
  type UrbBuffer,
  type UrbId,
  type UrbRequest,
} from "./types.js";

/** A rejected request: answer `id` with `status`; `reason` says why (stable, see reasons.ts). */
export interface ParseRejection {
  readonly ok: false;
  /** The request's id, or null when the slot was too short to hold one (nothing can be answered). */
  readonly id: UrbId | null;
  readonly status: UrbStatus;
  readonly reason: ParseReason;
}

export type ParseResult = { readonly ok: true; readonly req: UrbRequest } | ParseRejection;

export type IndirectParseResult =
  | { readonly ok: true; readonly segments: readonly Segment[] }
  | { readonly ok: false; readonly status: UrbStatus; readonly reason: ParseReason };

const U32_LIMIT = 2 ** 32;

function reject(id: UrbId | null, reason: ParseReason): ParseRejection {
  return { ok: false, id, status: PARSE_REJECTIONS[reason].status, reason };
}

/** True when every octet in [from, to) is zero. `to` ≤ the slot size, so the loop is bounded. */
function allZero(bytes: Uint8Array, from: number, to: number): boolean {
  // OR them all, branch once: the reserved tail of a slot is most of its 128 octets on every URB.
  let any = 0;
  for (let i = from; i < to; i++) any |= bytes[i]!;
  return any === 0;
}

function readSegment(bytes: Uint8Array, at: number): Segment {
  return {
    ref: readU32(bytes, at + kSegRef) as GrantRef,
    offset: readU32(bytes, at + kSegOffset),
    length: readU32(bytes, at + kSegLength),
  };
}

/** Per-segment rule shared by inline segments and indirect pages. */
function segmentProblem(segment: Segment): ParseReason | null {
  if (segment.length === 0) return "zero-length-segment";
  if (segment.offset + segment.length > U32_LIMIT) return "segment-range-overflow";
  return null;
}

/**
 * Turn a privately copied 128-byte slot into a typed request, or say which status to answer it with.
 * Never throws; `copied` must not be shared memory the peer can still write.
 */
export function parseRequest(copied: Uint8Array): ParseResult {
  if (copied.length !== URB_SLOT_SIZE) {
    return reject(copied.length >= 4 ? (readU32(copied, kReqId) as UrbId) : null, "bad-slot-size");
  }
  const id = readU32(copied, kReqId) as UrbId;
  const pipe = readU32(copied, kReqPipe);
  const flags = readU16(copied, kReqTransferFlags);
  const nrSegs = readU16(copied, kReqNrSegs);
  const bufferLength = readU32(copied, kReqBufferLength);

  if (pipeReservedBits(pipe) !== 0) return reject(id, "pipe-reserved-bits");
  if ((flags & TRANSFER_FLAGS_RESERVED_MASK) !== 0) return reject(id, "flags-reserved-bits");
  // The port field is 5 bits wide, so only 0 is out of range (a "port 32" shows up as 0 + unlink bit).
  if (pipePort(pipe) < MIN_PORT) return reject(id, "port-out-of-range");

  const port = pipePort(pipe) as PortNum;
  const device = pipeDevice(pipe);
  const endpoint = pipeEndpoint(pipe);
  const direction = pipeDirection(pipe);
  const type = pipeType(pipe);

  if (pipeIsUnlink(pipe)) {
    if (flags !== 0) return reject(id, "flag-not-valid-for-transfer");
    if (bufferLength !== 0 || nrSegs !== 0) return reject(id, "unlink-with-buffer");
    const unlinkId = readU32(copied, kUnlinkId) as UrbId;
    if (unlinkId === id) return reject(id, "unlink-targets-itself");
    if (!allZero(copied, kUnlinkId + 4, URB_SLOT_SIZE)) return reject(id, "reserved-bytes-nonzero");
    return {
      ok: true,
      req: { kind: "unlink", id, port, device, endpoint, direction, targetType: type, unlinkId },
    };
  }

  if (bufferLength > MAX_BUFFER_LENGTH) return reject(id, "buffer-too-long");

  const indirect = (flags & FLAG_INDIRECT) !== 0;
  if (indirect) {
    if (nrSegs === 0) return reject(id, "indirect-empty");
    if (nrSegs > MAX_INDIRECT_SEGMENTS) return reject(id, "too-many-segments");
  } else if (nrSegs > MAX_INLINE_SEGMENTS) {
    return reject(id, "too-many-segments");
  }
  if (bufferLength === 0 && nrSegs !== 0) return reject(id, "segments-without-buffer");
  if (bufferLength !== 0 && nrSegs === 0) return reject(id, "buffer-without-segments");

  let buffer: UrbBuffer = NO_BUFFER;
  let inlineSlotsUsed = 0;
  if (indirect) {
    const page = readSegment(copied, kReqSegments);
    if (page.length !== nrSegs * SEGMENT_SIZE) return reject(id, "indirect-descriptor-length");
    // The backend copies the list out of one mapped frame; a list straddling frames is refused.
    if (page.offset + page.length > FRAME_SIZE) return reject(id, "indirect-page-crosses-frame");
    buffer = { kind: "indirect", page, count: nrSegs };
    inlineSlotsUsed = 1;
  } else if (nrSegs > 0) {
    const segments: Segment[] = [];
    let total = 0;
    for (let i = 0; i < INLINE_SEGMENT_SLOTS && i < nrSegs; i++) {
      const segment = readSegment(copied, kReqSegments + i * SEGMENT_SIZE);
      const problem = segmentProblem(segment);
      if (problem !== null) return reject(id, problem);
      total += segment.length;
      segments.push(segment);
    }
    if (total !== bufferLength) return reject(id, "segment-length-mismatch");
    buffer = { kind: "inline", segments };
    inlineSlotsUsed = nrSegs;
  }

  const shortNotOk = (flags & FLAG_SHORT_NOT_OK) !== 0;
  const zeroPacket = (flags & FLAG_ZERO_PACKET) !== 0;
  const isoAsap = (flags & FLAG_ISO_ASAP) !== 0;
  let req: UrbRequest;
  let unionEnd: number;

  switch (type) {
    case TransferType.Control: {
      if (zeroPacket || isoAsap) return reject(id, "flag-not-valid-for-transfer");
      if (bufferLength > MAX_CONTROL_BUFFER_LENGTH) return reject(id, "control-buffer-too-long");
      const bmRequestType = copied[kCtrlRequestType]!;
      const wLength = readU16(copied, kCtrlLength);
      const setupIn = requestIsIn(bmRequestType);
      if (wLength > 0 && setupIn !== (direction === Direction.In))
        return reject(id, "control-direction-mismatch");
      if (direction === Direction.In) {
        if (wLength > bufferLength) return reject(id, "control-wlength-exceeds-buffer");
      } else if (wLength !== bufferLength) {
        return reject(id, "control-out-length-mismatch");
      }
      const setup = {
        bmRequestType,
        bRequest: copied[kCtrlRequest]!,
        wValue: readU16(copied, kCtrlValue),
        wIndex: readU16(copied, kCtrlIndex),
        wLength,
      };
      req = {
        kind: "control",
        id,
        port,
        device,
        endpoint,
        direction,
        bufferLength,
        buffer,
        shortNotOk,
        setup,
      };
      unionEnd = kCtrlLength + 2;
      break;
    }
    case TransferType.Bulk: {
      if (endpoint === 0) return reject(id, "endpoint-zero-not-control");
      if (isoAsap || (zeroPacket && direction === Direction.In))
        return reject(id, "flag-not-valid-for-transfer");
      const streamId = readU32(copied, kBulkStreamId);
      if (streamId > MAX_STREAM_ID) return reject(id, "stream-id-out-of-range");
      req = {
        kind: "bulk",
        id,
        port,
        device,
        endpoint,
        direction,
        bufferLength,
        buffer,
        shortNotOk,
        zeroPacket,
        streamId,
      };
      unionEnd = kBulkStreamId + 4;
      break;
    }
    case TransferType.Interrupt: {
      if (endpoint === 0) return reject(id, "endpoint-zero-not-control");
      if (isoAsap || (zeroPacket && direction === Direction.In))
        return reject(id, "flag-not-valid-for-transfer");
      const interval = readU32(copied, kIntInterval);
      if (interval === 0) return reject(id, "zero-interval");
      req = {
        kind: "interrupt",
        id,
        port,
        device,
        endpoint,
        direction,
        bufferLength,
        buffer,
        shortNotOk,
        zeroPacket,
        interval,
      };
      unionEnd = kIntInterval + 4;
      break;
    }
    case TransferType.Isochronous: {
      if (endpoint === 0) return reject(id, "endpoint-zero-not-control");
      if (zeroPacket) return reject(id, "flag-not-valid-for-transfer");
      const interval = readU16(copied, kIsoInterval);
      if (interval === 0) return reject(id, "zero-interval");
      const numberOfPackets = readU16(copied, kIsoNumberOfPackets);
      if (numberOfPackets === 0) return reject(id, "iso-no-packets");
      if (numberOfPackets > MAX_ISO_PACKETS) return reject(id, "too-many-iso-packets");
      const descOffset = readU32(copied, kIsoDescOffset);
      if (descOffset + numberOfPackets * ISO_FRAME_DESCRIPTOR_SIZE > U32_LIMIT) {
        return reject(id, "iso-descriptor-range-overflow");
      }
      req = {
        kind: "isochronous",
        id,
        port,
        device,
        endpoint,
        direction,
        bufferLength,
        buffer,
        shortNotOk,
        isoAsap,
        interval,
        numberOfPackets,
        startFrame: readU32(copied, kIsoStartFrame),
        frameDescriptors: { ref: readU32(copied, kIsoDescRef) as GrantRef, offset: descOffset },
      };
      unionEnd = kIsoDescOffset + 4;
      break;
    }
  }

  if (!allZero(copied, unionEnd, kReqSegments)) return reject(id, "reserved-bytes-nonzero");
  if (!allZero(copied, kReqSegments + inlineSlotsUsed * SEGMENT_SIZE, URB_SLOT_SIZE)) {
    return reject(id, "reserved-bytes-nonzero");
  }
  return { ok: true, req };
}

/**
 * Second gate for indirect URBs: read `count` segments from a private copy of the indirect page (the
 * backend maps the page descriptor of the parsed request and copies it first), check each one, and
 * check that they add up to `bufferLength`. Octets after `count × 12` are ignored. Never throws.
 */
export function parseIndirectSegments(
  copiedPage: Uint8Array,
  count: number,
  bufferLength: number,
): IndirectParseResult {
  if (!Number.isInteger(count) || count < 1) return indirectReject("indirect-empty");
  if (count > MAX_INDIRECT_SEGMENTS) return indirectReject("too-many-segments");
  if (!(bufferLength <= MAX_BUFFER_LENGTH)) return indirectReject("buffer-too-long");
  if (copiedPage.length < count * SEGMENT_SIZE) return indirectReject("truncated-indirect-page");
  const segments: Segment[] = [];
  let total = 0;
  for (let i = 0; i < MAX_INDIRECT_SEGMENTS && i < count; i++) {
    const segment = readSegment(copiedPage, i * SEGMENT_SIZE);
    const problem = segmentProblem(segment);
    if (problem !== null) return indirectReject(problem);
    total += segment.length;
    segments.push(segment);
  }
  if (total !== bufferLength) return indirectReject("segment-length-mismatch");
  return { ok: true, segments };
}

function indirectReject(reason: ParseReason): IndirectParseResult {
  return { ok: false, status: PARSE_REJECTIONS[reason].status, reason };
}
