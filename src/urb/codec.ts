/**
 * URB wire codec: writes typed requests and responses into ring slots (the frontend and the mock guest
 * use these) and reads responses back. The octet layout, after Xen usbif.h with usbvirt's wider fields,
 * is drawn in layout.ts. Requests are *read* only by the parse gate (parse.ts), never here.
 *
 * Hot path: nothing here allocates except `decodeResponse`'s result. Writers take the target bytes and an
 * offset, so a ring can pass its shared slot array directly.
 */
import { encodeSetupInto } from "../usb/index.js";
import { InvalidOptionError } from "../util/errors.js";
import { readS32, readU32, writeU16, writeU32 } from "./bytes.js";
import {
  FLAG_INDIRECT,
  FLAG_ISO_ASAP,
  FLAG_SHORT_NOT_OK,
  FLAG_ZERO_PACKET,
  kBulkStreamId,
  kCtrlSetup,
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
  kRspActualLength,
  kRspErrorCount,
  kRspId,
  kRspStartFrame,
  kRspStatus,
  kSegLength,
  kSegOffset,
  kSegRef,
  kUnlinkId,
  SEGMENT_SIZE,
  URB_RESPONSE_SIZE,
  URB_SLOT_SIZE,
} from "./layout.js";
import { MAX_INDIRECT_SEGMENTS, MAX_INLINE_SEGMENTS } from "./limits.js";
import { pipeWord } from "./pipe.js";
import { statusFromPeer } from "./status.js";
import type { Segment, UrbRequest, UrbResponse } from "./types.js";
import { transferTypeOf } from "./types.js";

function checkRoom(target: Uint8Array, offset: number, size: number, what: string): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + size > target.length) {
    throw new InvalidOptionError(
      `${what} needs ${size} bytes at offset ${offset}; target has ${target.length}`,
    );
  }
}

function writeSegment(target: Uint8Array, at: number, segment: Segment): void {
  writeU32(target, at + kSegRef, segment.ref);
  writeU32(target, at + kSegOffset, segment.offset);
  writeU32(target, at + kSegLength, segment.length);
}

function transferFlagsOf(req: UrbRequest): number {
  if (req.kind === "unlink") return 0;
  let flags = req.shortNotOk ? FLAG_SHORT_NOT_OK : 0;
  if (req.buffer.kind === "indirect") flags |= FLAG_INDIRECT;
  if ((req.kind === "bulk" || req.kind === "interrupt") && req.zeroPacket) flags |= FLAG_ZERO_PACKET;
  if (req.kind === "isochronous" && req.isoAsap) flags |= FLAG_ISO_ASAP;
  return flags;
}

/**
 * Write `req` into the 128-byte slot at `target[offset]`. The whole slot is written, unused octets as
 * zero, so stale bytes from an earlier request never reach the peer. Fields are written as given (masked
 * to their widths); the encoder does not validate — the backend's parse gate does. Throws only when the
 * target is too small or the segment list cannot fit (caller bugs, not peer input).
 */
export function encodeRequest(req: UrbRequest, target: Uint8Array, offset = 0): void {
  checkRoom(target, offset, URB_SLOT_SIZE, "a URB request");
  target.fill(0, offset, offset + URB_SLOT_SIZE);
  writeU32(target, offset + kReqId, req.id);
  writeU32(
    target,
    offset + kReqPipe,
    pipeWord(req.port, req.kind === "unlink", req.direction, req.device, req.endpoint, transferTypeOf(req)),
  );
  writeU16(target, offset + kReqTransferFlags, transferFlagsOf(req));

  if (req.kind === "unlink") {
    writeU32(target, offset + kUnlinkId, req.unlinkId);
    return;
  }

  writeU32(target, offset + kReqBufferLength, req.bufferLength);
  const buffer = req.buffer;
  if (buffer.kind === "inline") {
    if (buffer.segments.length > MAX_INLINE_SEGMENTS) {
      throw new InvalidOptionError(
        `at most ${MAX_INLINE_SEGMENTS} inline segments, got ${buffer.segments.length}`,
      );
    }
    writeU16(target, offset + kReqNrSegs, buffer.segments.length);
    for (let i = 0; i < buffer.segments.length; i++) {
      writeSegment(target, offset + kReqSegments + i * SEGMENT_SIZE, buffer.segments[i]!);
    }
  } else if (buffer.kind === "indirect") {
    writeU16(target, offset + kReqNrSegs, buffer.count);
    writeSegment(target, offset + kReqSegments, buffer.page);
  }

  switch (req.kind) {
    case "control":
      encodeSetupInto(req.setup, target, offset + kCtrlSetup);
      break;
    case "interrupt":
      writeU32(target, offset + kIntInterval, req.interval);
      break;
    case "isochronous":
      writeU16(target, offset + kIsoInterval, req.interval);
      writeU16(target, offset + kIsoNumberOfPackets, req.numberOfPackets);
      writeU32(target, offset + kIsoStartFrame, req.startFrame);
      writeU32(target, offset + kIsoDescRef, req.frameDescriptors.ref);
      writeU32(target, offset + kIsoDescOffset, req.frameDescriptors.offset);
      break;
    case "bulk":
      writeU32(target, offset + kBulkStreamId, req.streamId);
      break;
  }
}

/**
 * Write the segment list of an indirect URB into the page bytes at `target[offset]` (12 bytes per
 * segment). The frontend then grants that page and describes it in inline seg[0]. `count` writes only
 * `segments[0..count)`, so a caller may pass a reused array longer than this URB's list.
 */
export function encodeIndirectSegments(
  segments: readonly Segment[],
  target: Uint8Array,
  offset = 0,
  count = segments.length,
): void {
  if (!Number.isInteger(count) || count < 0 || count > segments.length) {
    throw new InvalidOptionError(`count must be an integer in [0, ${segments.length}], got ${count}`);
  }
  if (count > MAX_INDIRECT_SEGMENTS) {
    throw new InvalidOptionError(`at most ${MAX_INDIRECT_SEGMENTS} indirect segments, got ${count}`);
  }
  checkRoom(target, offset, count * SEGMENT_SIZE, "an indirect segment page");
  for (let i = 0; i < count; i++) {
    writeSegment(target, offset + i * SEGMENT_SIZE, segments[i]!);
  }
}

/** Write a response into the first 20 bytes of the slot at `target[offset]`; the rest is not touched. */
export function encodeResponse(rsp: UrbResponse, target: Uint8Array, offset = 0): void {
  checkRoom(target, offset, URB_RESPONSE_SIZE, "a URB response");
  writeU32(target, offset + kRspId, rsp.id);
  writeU32(target, offset + kRspStatus, rsp.status);
  writeU32(target, offset + kRspActualLength, rsp.actualLength);
  writeU32(target, offset + kRspStartFrame, rsp.startFrame);
  writeU32(target, offset + kRspErrorCount, rsp.errorCount);
}

/**
 * Read a response as the backend wrote it. The status goes through `statusFromPeer` (an unknown value
 * becomes -ESHUTDOWN, as in xen-hcd). `actualLength` is returned as written: the frontend clamps it to
 * the request's buffer_length, which only it knows.
 */
export function decodeResponse(source: Uint8Array, offset = 0): UrbResponse {
  checkRoom(source, offset, URB_RESPONSE_SIZE, "a URB response");
  return {
    id: readU32(source, offset + kRspId) as UrbResponse["id"],
    status: statusFromPeer(readS32(source, offset + kRspStatus)),
    actualLength: readU32(source, offset + kRspActualLength),
    startFrame: readU32(source, offset + kRspStartFrame),
    errorCount: readU32(source, offset + kRspErrorCount),
  };
}
