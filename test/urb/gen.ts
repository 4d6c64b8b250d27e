/**
 * fast-check generators for URB request slots, each case paired with the verdict the parse gate must give
 * (Firecracker-style: input *with* the expected answer). Valid requests are built as typed objects and
 * encoded; corrupted ones start from a valid encoding and break exactly one rule, so the expected reason
 * is known. The expected statuses are written out here, not read from src/urb/reasons.ts, so a wrong
 * entry in that table is caught. Garbage cases only have a partial oracle (see `Verdict`).
 */
import fc from "fast-check";
import type { GrantRef } from "../../src/dma-map/types.js";
import { encodeIndirectSegments, encodeRequest } from "../../src/urb/codec.js";
import {
  FLAG_INDIRECT,
  FLAG_ISO_ASAP,
  FLAG_SHORT_NOT_OK,
  FLAG_ZERO_PACKET,
  kBulkStreamId,
  kCtrlLength,
  kCtrlRequestType,
  kIntInterval,
  kIsoDescOffset,
  kIsoInterval,
  kIsoNumberOfPackets,
  kReqBufferLength,
  kReqNrSegs,
  kReqPipe,
  kReqSegments,
  kReqTransferFlags,
  kSegLength,
  kSegOffset,
  kUnlinkId,
  SEGMENT_SIZE,
  URB_SLOT_SIZE,
} from "../../src/urb/layout.js";
import {
  MAX_BUFFER_LENGTH,
  MAX_CONTROL_BUFFER_LENGTH,
  MAX_INDIRECT_SEGMENTS,
  MAX_INLINE_SEGMENTS,
  MAX_ISO_PACKETS,
  MAX_STREAM_ID,
} from "../../src/urb/limits.js";
import type { ParseReason } from "../../src/urb/reasons.js";
import { EINVAL, EMSGSIZE, type UrbStatus } from "../../src/urb/status.js";
import {
  type BulkUrb,
  type ControlUrb,
  type DataUrb,
  type DevAddr,
  Direction,
  type EndpointNum,
  type InterruptUrb,
  type IsoUrb,
  NO_BUFFER,
  type PortNum,
  type Segment,
  TransferType,
  type UnlinkUrb,
  type UrbBuffer,
  type UrbId,
  type UrbRequest,
} from "../../src/urb/types.js";

const U32_MAX = 0xffff_ffff;
const FRAME = 4096;

/** What the gate must answer. "unpredictable": no exact oracle; it must not throw, and an accepted
 * request must re-encode to the very same bytes (every unused octet is zero, so that is exact). */
export type Verdict =
  | { readonly ok: true; readonly req: UrbRequest }
  | {
      readonly ok: false;
      readonly id: UrbId | null;
      readonly status: UrbStatus;
      readonly reason: ParseReason;
    }
  | { readonly ok: "unpredictable" };

export interface GenCase {
  /** Which generator made it: "valid", a corruption name, or a garbage kind. */
  readonly label: string;
  readonly bytes: Uint8Array;
  readonly expected: Verdict;
}

// ---------------------------------------------------------------- little helpers on raw slots

function getU16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}
function getU32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}
function putU16(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
}
function putU32(b: Uint8Array, at: number, v: number): void {
  putU16(b, at, v & 0xffff);
  putU16(b, at + 2, (v >>> 16) & 0xffff);
}

export function encoded(req: UrbRequest): Uint8Array {
  const bytes = new Uint8Array(URB_SLOT_SIZE);
  encodeRequest(req, bytes);
  return bytes;
}

// ---------------------------------------------------------------- valid requests

const arbU32 = fc.integer({ min: 0, max: U32_MAX });
const arbU16 = fc.integer({ min: 0, max: 0xffff });
export const arbUrbId = arbU32.map((n) => n as UrbId);
const arbRef = arbU32.map((n) => n as GrantRef);
const arbPort = fc.integer({ min: 1, max: 31 }).map((n) => n as PortNum);
const arbDevice = fc.integer({ min: 0, max: 127 }).map((n) => n as DevAddr);
const arbAnyEndpoint = fc.integer({ min: 0, max: 15 }).map((n) => n as EndpointNum);
const arbDataEndpoint = fc.integer({ min: 1, max: 15 }).map((n) => n as EndpointNum);
const arbDirection = fc.constantFrom(Direction.In, Direction.Out);

/** A segment of exactly `length` bytes whose range stays inside u32. */
export function arbSegmentOfLength(length: number): fc.Arbitrary<Segment> {
  return fc.record({
    ref: arbRef,
    offset: fc.integer({ min: 0, max: 2 ** 32 - length }),
    length: fc.constant(length),
  });
}

/** 1..maxCount segments, each 1..maxEach bytes. */
export function arbSegmentList(maxCount: number, maxEach: number): fc.Arbitrary<Segment[]> {
  return fc
    .array(fc.integer({ min: 1, max: maxEach }), { minLength: 1, maxLength: maxCount })
    .chain((lengths) => fc.tuple(...lengths.map(arbSegmentOfLength)));
}

export type BufferChoice = "any" | "direct" | "inline" | "indirect";
interface BufferSpec {
  buffer: UrbBuffer;
  bufferLength: number;
}

/** A buffer of at most `maxTotal` bytes: none, inline segments, or an indirect page descriptor. */
function arbBuffer(choice: BufferChoice, maxTotal: number): fc.Arbitrary<BufferSpec> {
  const none = fc.constant<BufferSpec>({ buffer: NO_BUFFER, bufferLength: 0 });
  const inline = arbSegmentList(MAX_INLINE_SEGMENTS, Math.floor(maxTotal / MAX_INLINE_SEGMENTS)).map(
    (segments): BufferSpec => ({
      buffer: { kind: "inline", segments },
      bufferLength: segments.reduce((sum, s) => sum + s.length, 0),
    }),
  );
  const indirect = fc
    .integer({ min: 1, max: MAX_INDIRECT_SEGMENTS })
    .chain((count) =>
      fc.record({
        count: fc.constant(count),
        ref: arbRef,
        offset: fc.integer({ min: 0, max: FRAME - count * SEGMENT_SIZE }),
        bufferLength: fc.integer({ min: count, max: maxTotal }),
      }),
    )
    .map(
      ({ count, ref, offset, bufferLength }): BufferSpec => ({
        buffer: { kind: "indirect", page: { ref, offset, length: count * SEGMENT_SIZE }, count },
        bufferLength,
      }),
    );
  switch (choice) {
    case "inline":
      return inline;
    case "indirect":
      return indirect;
    case "direct":
      return fc.oneof(none, inline);
    case "any":
      return fc.oneof(
        { arbitrary: none, weight: 1 },
        { arbitrary: inline, weight: 4 },
        { arbitrary: indirect, weight: 1 },
      );
  }
}

const arbTarget = fc.record({ id: arbUrbId, port: arbPort, device: arbDevice });

export function arbControlUrb(
  choice: BufferChoice = "any",
  direction?: Direction,
  maxTotal = MAX_BUFFER_LENGTH,
): fc.Arbitrary<ControlUrb> {
  return fc
    .record({
      target: arbTarget,
      endpoint: arbAnyEndpoint,
      direction: direction === undefined ? arbDirection : fc.constant(direction),
      shortNotOk: fc.boolean(),
      bRequest: fc.integer({ min: 0, max: 255 }),
      wValue: arbU16,
      wIndex: arbU16,
      requestTypeLow: fc.integer({ min: 0, max: 0x7f }),
      zeroLengthDirIn: fc.boolean(),
    })
    .chain((base) =>
      // No control buffer exceeds a u16 (MAX_CONTROL_BUFFER_LENGTH); IN buffers may be padded beyond wLength.
      arbBuffer(choice, Math.min(MAX_CONTROL_BUFFER_LENGTH, maxTotal)).chain((spec) =>
        (base.direction === Direction.Out
          ? fc.constant(spec.bufferLength)
          : fc.integer({ min: 0, max: Math.min(spec.bufferLength, 0xffff) })
        ).map((wLength): ControlUrb => {
          // With a data stage bit 7 must match the pipe; without one (wLength 0) it may be anything.
          const dirIn = wLength > 0 ? base.direction === Direction.In : base.zeroLengthDirIn;
          return {
            kind: "control",
            ...base.target,
            endpoint: base.endpoint,
            direction: base.direction,
            shortNotOk: base.shortNotOk,
            ...spec,
            setup: {
              bmRequestType: base.requestTypeLow | (dirIn ? 0x80 : 0),
              bRequest: base.bRequest,
              wValue: base.wValue,
              wIndex: base.wIndex,
              wLength,
            },
          };
        }),
      ),
    );
}

export function arbBulkUrb(choice: BufferChoice = "any"): fc.Arbitrary<BulkUrb> {
  return fc
    .record({
      target: arbTarget,
      endpoint: arbDataEndpoint,
      direction: arbDirection,
      shortNotOk: fc.boolean(),
      zeroPacket: fc.boolean(),
      streamId: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: MAX_STREAM_ID })),
      spec: arbBuffer(choice, MAX_BUFFER_LENGTH),
    })
    .map(
      (r): BulkUrb => ({
        kind: "bulk",
        ...r.target,
        endpoint: r.endpoint,
        direction: r.direction,
        shortNotOk: r.shortNotOk,
        zeroPacket: r.zeroPacket && r.direction === Direction.Out,
        streamId: r.streamId,
        ...r.spec,
      }),
    );
}

export function arbInterruptUrb(choice: BufferChoice = "any"): fc.Arbitrary<InterruptUrb> {
  return fc
    .record({
      target: arbTarget,
      endpoint: arbDataEndpoint,
      direction: arbDirection,
      shortNotOk: fc.boolean(),
      zeroPacket: fc.boolean(),
      interval: fc.integer({ min: 1, max: U32_MAX }),
      spec: arbBuffer(choice, MAX_BUFFER_LENGTH),
    })
    .map(
      (r): InterruptUrb => ({
        kind: "interrupt",
        ...r.target,
        endpoint: r.endpoint,
        direction: r.direction,
        shortNotOk: r.shortNotOk,
        zeroPacket: r.zeroPacket && r.direction === Direction.Out,
        interval: r.interval,
        ...r.spec,
      }),
    );
}

export function arbIsoUrb(choice: BufferChoice = "any"): fc.Arbitrary<IsoUrb> {
  return fc
    .record({
      target: arbTarget,
      endpoint: arbDataEndpoint,
      direction: arbDirection,
      shortNotOk: fc.boolean(),
      isoAsap: fc.boolean(),
      interval: fc.integer({ min: 1, max: 0xffff }),
      numberOfPackets: fc.integer({ min: 1, max: MAX_ISO_PACKETS }),
      startFrame: arbU32,
      descRef: arbRef,
      spec: arbBuffer(choice, MAX_BUFFER_LENGTH),
    })
    .chain((r) =>
      fc.integer({ min: 0, max: 2 ** 32 - r.numberOfPackets * 16 }).map(
        (descOffset): IsoUrb => ({
          kind: "isochronous",
          ...r.target,
          endpoint: r.endpoint,
          direction: r.direction,
          shortNotOk: r.shortNotOk,
          isoAsap: r.isoAsap,
          interval: r.interval,
          numberOfPackets: r.numberOfPackets,
          startFrame: r.startFrame,
          frameDescriptors: { ref: r.descRef, offset: descOffset },
          ...r.spec,
        }),
      ),
    );
}

export function arbUnlinkUrb(): fc.Arbitrary<UnlinkUrb> {
  return fc
    .record({
      target: arbTarget,
      endpoint: arbAnyEndpoint,
      direction: arbDirection,
      targetType: fc.constantFrom(
        TransferType.Isochronous,
        TransferType.Interrupt,
        TransferType.Control,
        TransferType.Bulk,
      ),
      unlinkId: arbUrbId,
    })
    .filter((r) => r.unlinkId !== r.target.id)
    .map(
      (r): UnlinkUrb => ({
        kind: "unlink",
        ...r.target,
        endpoint: r.endpoint,
        direction: r.direction,
        targetType: r.targetType,
        unlinkId: r.unlinkId,
      }),
    );
}

export function arbDataUrb(choice: BufferChoice = "any"): fc.Arbitrary<DataUrb> {
  return fc.oneof(arbControlUrb(choice), arbBulkUrb(choice), arbInterruptUrb(choice), arbIsoUrb(choice));
}

export function arbValidUrb(): fc.Arbitrary<UrbRequest> {
  return fc.oneof({ arbitrary: arbDataUrb(), weight: 4 }, { arbitrary: arbUnlinkUrb(), weight: 1 });
}

// ---------------------------------------------------------------- corruptions, one rule broken each

/** Start from `base`, draw a parameter, mutate the encoded slot, expect `reason` with `status`. */
function corruption<R extends UrbRequest, P>(
  label: string,
  base: fc.Arbitrary<R>,
  param: (req: R) => fc.Arbitrary<P>,
  mutate: (bytes: Uint8Array, req: R, p: P) => void,
  reason: ParseReason,
  status: UrbStatus,
): fc.Arbitrary<GenCase> {
  return base.chain((req) =>
    param(req).map((p): GenCase => {
      const bytes = encoded(req);
      mutate(bytes, req, p);
      return { label, bytes, expected: { ok: false, id: req.id, status, reason } };
    }),
  );
}

const none = () => fc.constant(undefined);

/** Octets of a valid data request's slot that must be zero: union padding and unused segment slots. */
export function reservedOctets(req: DataUrb): number[] {
  const unionEnd = { control: 24, interrupt: 20, isochronous: 32, bulk: kBulkStreamId + 4 }[req.kind];
  const slotsUsed =
    req.buffer.kind === "inline" ? req.buffer.segments.length : req.buffer.kind === "indirect" ? 1 : 0;
  const octets: number[] = [];
  for (let i = unionEnd; i < kReqSegments; i++) octets.push(i);
  for (let i = kReqSegments + slotsUsed * SEGMENT_SIZE; i < URB_SLOT_SIZE; i++) octets.push(i);
  return octets;
}

/** A flag the gate must refuse for this kind and direction. */
function invalidFlagsFor(req: DataUrb): number[] {
  const flags: number[] = [];
  if (req.kind !== "isochronous") flags.push(FLAG_ISO_ASAP);
  if (req.kind === "control" || req.kind === "isochronous" || req.direction === Direction.In)
    flags.push(FLAG_ZERO_PACKET);
  return flags;
}

const PIPE_RESERVED_BITS = [6, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29];
const inlineSegmentCount = (req: DataUrb) => (req.buffer.kind === "inline" ? req.buffer.segments.length : 0);

export const CORRUPTIONS: readonly fc.Arbitrary<GenCase>[] = [
  corruption(
    "pipe-reserved-bit",
    arbValidUrb(),
    () => fc.constantFrom(...PIPE_RESERVED_BITS),
    (b, _r, bit) => putU32(b, kReqPipe, (getU32(b, kReqPipe) | (1 << bit)) >>> 0),
    "pipe-reserved-bits",
    EINVAL,
  ),
  corruption(
    "flags-reserved-bit",
    arbValidUrb(),
    () => fc.integer({ min: 3, max: 14 }),
    (b, _r, bit) => putU16(b, kReqTransferFlags, getU16(b, kReqTransferFlags) | (1 << bit)),
    "flags-reserved-bits",
    EINVAL,
  ),
  corruption(
    "port-0",
    arbValidUrb(),
    none,
    (b) => putU32(b, kReqPipe, (getU32(b, kReqPipe) & ~0x1f) >>> 0),
    "port-out-of-range",
    EINVAL,
  ),
  corruption(
    // 32 does not fit the 5-bit port field: it lands as port 0 plus the unlink bit.
    "port-32",
    arbValidUrb(),
    none,
    (b) => putU32(b, kReqPipe, ((getU32(b, kReqPipe) & ~0x3f) | 32) >>> 0),
    "port-out-of-range",
    EINVAL,
  ),
  corruption(
    "unlink-with-flag",
    arbUnlinkUrb(),
    () => fc.constantFrom(FLAG_SHORT_NOT_OK, FLAG_ISO_ASAP, FLAG_ZERO_PACKET, FLAG_INDIRECT),
    (b, _r, flag) => putU16(b, kReqTransferFlags, flag),
    "flag-not-valid-for-transfer",
    EINVAL,
  ),
  corruption(
    "unlink-with-buffer-length",
    arbUnlinkUrb(),
    () => fc.integer({ min: 1, max: U32_MAX }),
    (b, _r, n) => putU32(b, kReqBufferLength, n),
    "unlink-with-buffer",
    EINVAL,
  ),
  corruption(
    "unlink-with-segments",
    arbUnlinkUrb(),
    () => fc.integer({ min: 1, max: 0xffff }),
    (b, _r, n) => putU16(b, kReqNrSegs, n),
    "unlink-with-buffer",
    EINVAL,
  ),
  corruption(
    "unlink-of-itself",
    arbUnlinkUrb(),
    none,
    (b, r) => putU32(b, kUnlinkId, r.id),
    "unlink-targets-itself",
    EINVAL,
  ),
  corruption(
    "unlink-reserved-octet",
    arbUnlinkUrb(),
    () =>
      fc.record({
        at: fc.integer({ min: kUnlinkId + 4, max: URB_SLOT_SIZE - 1 }),
        v: fc.integer({ min: 1, max: 255 }),
      }),
    (b, _r, { at, v }) => {
      b[at] = v;
    },
    "reserved-bytes-nonzero",
    EINVAL,
  ),
  corruption(
    "oversize-buffer",
    arbDataUrb(),
    () => fc.integer({ min: MAX_BUFFER_LENGTH + 1, max: U32_MAX }),
    (b, _r, n) => putU32(b, kReqBufferLength, n),
    "buffer-too-long",
    EMSGSIZE,
  ),
  corruption(
    "too-many-inline-segments",
    arbDataUrb("direct"),
    () => fc.integer({ min: MAX_INLINE_SEGMENTS + 1, max: 0xffff }),
    (b, _r, n) => putU16(b, kReqNrSegs, n),
    "too-many-segments",
    EMSGSIZE,
  ),
  corruption(
    "too-many-indirect-segments",
    arbDataUrb("indirect"),
    () => fc.integer({ min: MAX_INDIRECT_SEGMENTS + 1, max: 0xffff }),
    (b, _r, n) => putU16(b, kReqNrSegs, n),
    "too-many-segments",
    EMSGSIZE,
  ),
  corruption(
    "indirect-with-zero-count",
    arbDataUrb("indirect"),
    none,
    (b) => putU16(b, kReqNrSegs, 0),
    "indirect-empty",
    EINVAL,
  ),
  corruption(
    "segments-but-zero-length",
    fc.oneof(arbDataUrb("inline"), arbDataUrb("indirect")),
    none,
    (b) => putU32(b, kReqBufferLength, 0),
    "segments-without-buffer",
    EINVAL,
  ),
  corruption(
    "length-but-no-segments",
    arbDataUrb("inline"),
    none,
    (b) => putU16(b, kReqNrSegs, 0),
    "buffer-without-segments",
    EINVAL,
  ),
  corruption(
    "zero-length-segment",
    arbDataUrb("inline"),
    (r) => fc.integer({ min: 0, max: inlineSegmentCount(r) - 1 }),
    (b, _r, i) => putU32(b, kReqSegments + i * SEGMENT_SIZE + kSegLength, 0),
    "zero-length-segment",
    EINVAL,
  ),
  corruption(
    "segment-beyond-u32",
    arbDataUrb("inline").filter(
      (r) => r.buffer.kind === "inline" && r.buffer.segments.some((s) => s.length >= 2),
    ),
    (r) => {
      const segments = r.buffer.kind === "inline" ? r.buffer.segments : [];
      const candidates = segments.flatMap((s, i) => (s.length >= 2 ? [i] : []));
      return fc
        .constantFrom(...candidates)
        .chain((i) =>
          fc.record({ i: fc.constant(i), excess: fc.integer({ min: 1, max: segments[i]!.length - 1 }) }),
        );
    },
    (b, r, { i, excess }) => {
      const length = r.buffer.kind === "inline" ? r.buffer.segments[i]!.length : 0;
      putU32(b, kReqSegments + i * SEGMENT_SIZE + kSegOffset, 2 ** 32 - length + excess);
    },
    "segment-range-overflow",
    EINVAL,
  ),
  corruption(
    "segment-sum-mismatch",
    arbDataUrb("inline"),
    (r) => fc.integer({ min: 1, max: MAX_BUFFER_LENGTH }).filter((n) => n !== r.bufferLength),
    (b, _r, n) => putU32(b, kReqBufferLength, n),
    "segment-length-mismatch",
    EINVAL,
  ),
  corruption(
    "indirect-descriptor-wrong-length",
    arbDataUrb("indirect"),
    (r) => arbU32.filter((n) => r.buffer.kind === "indirect" && n !== r.buffer.count * SEGMENT_SIZE),
    (b, _r, n) => putU32(b, kReqSegments + kSegLength, n),
    "indirect-descriptor-length",
    EINVAL,
  ),
  corruption(
    "indirect-list-crosses-frame",
    arbDataUrb("indirect"),
    (r) =>
      fc.integer({
        min: FRAME - (r.buffer.kind === "indirect" ? r.buffer.page.length : 0) + 1,
        max: U32_MAX,
      }),
    (b, _r, offset) => putU32(b, kReqSegments + kSegOffset, offset),
    "indirect-page-crosses-frame",
    EINVAL,
  ),
  corruption(
    "data-on-endpoint-0",
    fc.oneof(arbBulkUrb(), arbInterruptUrb(), arbIsoUrb()),
    none,
    (b) => putU32(b, kReqPipe, (getU32(b, kReqPipe) & ~(0xf << 15)) >>> 0),
    "endpoint-zero-not-control",
    EINVAL,
  ),
  corruption(
    "control-setup-direction-flipped",
    arbControlUrb().filter((r) => r.setup.wLength > 0),
    none,
    (b) => {
      b[kCtrlRequestType] = b[kCtrlRequestType]! ^ 0x80;
    },
    "control-direction-mismatch",
    EINVAL,
  ),
  corruption(
    // Only an indirect buffer's length is free of its segments here (the page is read later).
    "control-buffer-above-u16",
    arbControlUrb("indirect", Direction.In),
    () => fc.integer({ min: MAX_CONTROL_BUFFER_LENGTH + 1, max: MAX_BUFFER_LENGTH }),
    (b, _r, n) => putU32(b, kReqBufferLength, n),
    "control-buffer-too-long",
    EINVAL,
  ),
  corruption(
    "control-in-wlength-above-buffer",
    arbControlUrb("any", Direction.In, 0xfffe),
    (r) => fc.integer({ min: r.bufferLength + 1, max: 0xffff }),
    (b, _r, wLength) => {
      putU16(b, kCtrlLength, wLength);
      b[kCtrlRequestType] = b[kCtrlRequestType]! | 0x80;
    },
    "control-wlength-exceeds-buffer",
    EINVAL,
  ),
  corruption(
    "control-out-wlength-differs",
    arbControlUrb("any", Direction.Out),
    (r) => arbU16.filter((n) => n !== r.bufferLength),
    (b, _r, wLength) => {
      putU16(b, kCtrlLength, wLength);
      b[kCtrlRequestType] = b[kCtrlRequestType]! & 0x7f;
    },
    "control-out-length-mismatch",
    EINVAL,
  ),
  corruption(
    "interrupt-interval-0",
    arbInterruptUrb(),
    none,
    (b) => putU32(b, kIntInterval, 0),
    "zero-interval",
    EINVAL,
  ),
  corruption("iso-interval-0", arbIsoUrb(), none, (b) => putU16(b, kIsoInterval, 0), "zero-interval", EINVAL),
  corruption(
    "iso-0-packets",
    arbIsoUrb(),
    none,
    (b) => putU16(b, kIsoNumberOfPackets, 0),
    "iso-no-packets",
    EINVAL,
  ),
  corruption(
    "iso-too-many-packets",
    arbIsoUrb(),
    () => fc.integer({ min: MAX_ISO_PACKETS + 1, max: 0xffff }),
    (b, _r, n) => putU16(b, kIsoNumberOfPackets, n),
    "too-many-iso-packets",
    EMSGSIZE,
  ),
  corruption(
    "iso-descriptors-beyond-u32",
    arbIsoUrb(),
    (r) => fc.integer({ min: 2 ** 32 - r.numberOfPackets * 16 + 1, max: U32_MAX }),
    (b, _r, offset) => putU32(b, kIsoDescOffset, offset),
    "iso-descriptor-range-overflow",
    EINVAL,
  ),
  corruption(
    "flag-not-for-this-transfer",
    arbDataUrb(),
    (r) => fc.constantFrom(...invalidFlagsFor(r)),
    (b, _r, flag) => putU16(b, kReqTransferFlags, getU16(b, kReqTransferFlags) | flag),
    "flag-not-valid-for-transfer",
    EINVAL,
  ),
  corruption(
    "bulk-stream-id-beyond-16-bits",
    arbBulkUrb(),
    () => fc.integer({ min: MAX_STREAM_ID + 1, max: U32_MAX }),
    (b, _r, streamId) => putU32(b, kBulkStreamId, streamId),
    "stream-id-out-of-range",
    EINVAL,
  ),
  corruption(
    "reserved-octet-set",
    arbDataUrb().filter((r) => reservedOctets(r).length > 0),
    (r) => fc.record({ at: fc.constantFrom(...reservedOctets(r)), v: fc.integer({ min: 1, max: 255 }) }),
    (b, _r, { at, v }) => {
      b[at] = v;
    },
    "reserved-bytes-nonzero",
    EINVAL,
  ),
];

/** A slot of the wrong size: the gate refuses it, with the id only if 4 bytes were there to read it. */
export const arbWrongSizeSlot: fc.Arbitrary<GenCase> = arbValidUrb().chain((req) =>
  fc
    .oneof(
      fc.integer({ min: 0, max: URB_SLOT_SIZE - 1 }),
      fc.integer({ min: URB_SLOT_SIZE + 1, max: 3 * URB_SLOT_SIZE }),
    )
    .map((size): GenCase => {
      const bytes = new Uint8Array(size);
      bytes.set(encoded(req).subarray(0, Math.min(size, URB_SLOT_SIZE)));
      return {
        label: size < URB_SLOT_SIZE ? "truncated-slot" : "oversized-slot",
        bytes,
        expected: { ok: false, id: size >= 4 ? req.id : null, status: EINVAL, reason: "bad-slot-size" },
      };
    }),
);

/** 128 random bytes. Exact oracle only when a reserved pipe bit is set (the gate's second check). */
export const arbGarbageSlot: fc.Arbitrary<GenCase> = fc
  .uint8Array({ minLength: URB_SLOT_SIZE, maxLength: URB_SLOT_SIZE })
  .map((bytes): GenCase => {
    const pipe = getU32(bytes, kReqPipe);
    const reservedSet = PIPE_RESERVED_BITS.some((bit) => (pipe & (1 << bit)) !== 0);
    return {
      label: "garbage",
      bytes,
      expected: reservedSet
        ? { ok: false, id: getU32(bytes, 0) as UrbId, status: EINVAL, reason: "pipe-reserved-bits" }
        : { ok: "unpredictable" },
    };
  });

/** A valid slot with a few random octets overwritten: mostly rejected for some reason, never a throw. */
export const arbScribbledSlot: fc.Arbitrary<GenCase> = arbValidUrb().chain((req) =>
  fc
    .array(
      fc.record({ at: fc.integer({ min: 0, max: URB_SLOT_SIZE - 1 }), v: fc.integer({ min: 0, max: 255 }) }),
      {
        minLength: 1,
        maxLength: 6,
      },
    )
    .map((writes): GenCase => {
      const bytes = encoded(req);
      for (const { at, v } of writes) bytes[at] = v;
      return { label: "scribbled", bytes, expected: { ok: "unpredictable" } };
    }),
);

export const arbValidCase: fc.Arbitrary<GenCase> = arbValidUrb().map(
  (req): GenCase => ({ label: "valid", bytes: encoded(req), expected: { ok: true, req } }),
);

/** Every case kind, so that one property run covers valid input and each way to break it. */
export const arbCase: fc.Arbitrary<GenCase> = fc.oneof(
  { arbitrary: arbValidCase, weight: 4 },
  ...CORRUPTIONS.map((arbitrary) => ({ arbitrary, weight: 1 })),
  { arbitrary: arbWrongSizeSlot, weight: 1 },
  { arbitrary: arbGarbageSlot, weight: 1 },
  { arbitrary: arbScribbledSlot, weight: 1 },
);

/** Labels `arbCase` can produce (the test checks each one is seen). */
export const CASE_LABELS: readonly string[] = [
  "valid",
  "pipe-reserved-bit",
  "flags-reserved-bit",
  "port-0",
  "port-32",
  "unlink-with-flag",
  "unlink-with-buffer-length",
  "unlink-with-segments",
  "unlink-of-itself",
  "unlink-reserved-octet",
  "oversize-buffer",
  "too-many-inline-segments",
  "too-many-indirect-segments",
  "indirect-with-zero-count",
  "segments-but-zero-length",
  "length-but-no-segments",
  "zero-length-segment",
  "segment-beyond-u32",
  "segment-sum-mismatch",
  "indirect-descriptor-wrong-length",
  "indirect-list-crosses-frame",
  "data-on-endpoint-0",
  "control-setup-direction-flipped",
  "control-buffer-above-u16",
  "control-in-wlength-above-buffer",
  "control-out-wlength-differs",
  "interrupt-interval-0",
  "iso-interval-0",
  "iso-0-packets",
  "iso-too-many-packets",
  "iso-descriptors-beyond-u32",
  "flag-not-for-this-transfer",
  "bulk-stream-id-beyond-16-bits",
  "reserved-octet-set",
  "truncated-slot",
  "oversized-slot",
  "garbage",
  "scribbled",
];

// ---------------------------------------------------------------- indirect segment pages

export interface IndirectCase {
  readonly label: string;
  readonly page: Uint8Array;
  readonly count: number;
  readonly bufferLength: number;
  readonly expected:
    | { readonly ok: true; readonly segments: readonly Segment[] }
    | { readonly ok: false; readonly status: UrbStatus; readonly reason: ParseReason };
}

/** A valid indirect page: the segment list, encoded, then maybe trailing bytes the gate must ignore. */
const arbIndirectList = fc.record({
  segments: arbSegmentList(MAX_INDIRECT_SEGMENTS, Math.floor(MAX_BUFFER_LENGTH / MAX_INDIRECT_SEGMENTS)),
  trailing: fc.uint8Array({ maxLength: 64 }),
});

function indirectPage(segments: readonly Segment[], trailing: Uint8Array): Uint8Array {
  const page = new Uint8Array(segments.length * SEGMENT_SIZE + trailing.length);
  encodeIndirectSegments(segments, page);
  page.set(trailing, segments.length * SEGMENT_SIZE);
  return page;
}

const total = (segments: readonly Segment[]) => segments.reduce((sum, s) => sum + s.length, 0);

export const arbIndirectCase: fc.Arbitrary<IndirectCase> = fc.oneof(
  arbIndirectList.map(
    ({ segments, trailing }): IndirectCase => ({
      label: "valid",
      page: indirectPage(segments, trailing),
      count: segments.length,
      bufferLength: total(segments),
      expected: { ok: true, segments },
    }),
  ),
  arbIndirectList.chain(({ segments, trailing }) =>
    fc.integer({ min: 0, max: segments.length - 1 }).map((i): IndirectCase => {
      const page = indirectPage(segments, trailing);
      putU32(page, i * SEGMENT_SIZE + kSegLength, 0);
      return {
        label: "zero-length-segment",
        page,
        count: segments.length,
        bufferLength: total(segments),
        expected: { ok: false, status: EINVAL, reason: "zero-length-segment" },
      };
    }),
  ),
  arbIndirectList.chain(({ segments, trailing }) =>
    fc.integer({ min: 0, max: segments.length - 1 }).map((i): IndirectCase => {
      const page = indirectPage(segments, trailing);
      putU32(page, i * SEGMENT_SIZE + kSegOffset, U32_MAX);
      // A 1-byte segment at offset 2^32-1 still fits; anything longer overflows.
      const overflows = segments[i]!.length > 1;
      const stillSums = {
        ok: true as const,
        segments: segments.map((s, j) => (j === i ? { ...s, offset: U32_MAX } : s)),
      };
      return {
        label: "segment-beyond-u32",
        page,
        count: segments.length,
        bufferLength: total(segments),
        expected: overflows ? { ok: false, status: EINVAL, reason: "segment-range-overflow" } : stillSums,
      };
    }),
  ),
  arbIndirectList.chain(({ segments, trailing }) =>
    fc
      .integer({ min: 0, max: MAX_BUFFER_LENGTH })
      .filter((n) => n !== total(segments))
      .map(
        (bufferLength): IndirectCase => ({
          label: "segment-sum-mismatch",
          page: indirectPage(segments, trailing),
          count: segments.length,
          bufferLength,
          expected: { ok: false, status: EINVAL, reason: "segment-length-mismatch" },
        }),
      ),
  ),
  arbIndirectList.chain(({ segments }) =>
    fc.integer({ min: 0, max: segments.length * SEGMENT_SIZE - 1 }).map(
      (size): IndirectCase => ({
        label: "truncated-page",
        page: indirectPage(segments, new Uint8Array(0)).subarray(0, size),
        count: segments.length,
        bufferLength: total(segments),
        expected: { ok: false, status: EINVAL, reason: "truncated-indirect-page" },
      }),
    ),
  ),
  arbIndirectList.chain(({ segments, trailing }) =>
    fc.integer({ min: MAX_INDIRECT_SEGMENTS + 1, max: 0xffff }).map(
      (count): IndirectCase => ({
        label: "count-too-large",
        page: indirectPage(segments, trailing),
        count,
        bufferLength: total(segments),
        expected: { ok: false, status: EMSGSIZE, reason: "too-many-segments" },
      }),
    ),
  ),
);

export const INDIRECT_CASE_LABELS: readonly string[] = [
  "valid",
  "zero-length-segment",
  "segment-beyond-u32",
  "segment-sum-mismatch",
  "truncated-page",
  "count-too-large",
];

// ---------------------------------------------------------------- iso frame descriptor arrays

export interface IsoDescriptorCase {
  readonly label: string;
  readonly copied: Uint8Array;
  readonly numberOfPackets: number;
  readonly bufferLength: number;
  readonly expected:
    | { readonly ok: true; readonly packets: readonly { offset: number; length: number }[] }
    | { readonly ok: false; readonly status: UrbStatus; readonly reason: ParseReason };
}

const MAX_ISO_PACKET = 3 * 16 * 1024;

/** Valid packets inside a buffer, with garbage in the status/actual_length fields the gate must ignore. */
const arbIsoArray = fc
  .record({
    bufferLength: fc.integer({ min: 0, max: MAX_BUFFER_LENGTH }),
    count: fc.integer({ min: 1, max: MAX_ISO_PACKETS }),
  })
  .chain(({ bufferLength, count }) =>
    fc.record({
      bufferLength: fc.constant(bufferLength),
      packets: fc.array(
        fc.integer({ min: 0, max: bufferLength }).chain((offset) =>
          fc.record({
            offset: fc.constant(offset),
            length: fc.integer({ min: 0, max: Math.min(MAX_ISO_PACKET, bufferLength - offset) }),
          }),
        ),
        { minLength: count, maxLength: count },
      ),
      noise: fc.uint8Array({ minLength: 8, maxLength: 8 }),
    }),
  );

function isoArrayBytes(
  packets: readonly { offset: number; length: number }[],
  noise: Uint8Array,
): Uint8Array {
  const bytes = new Uint8Array(packets.length * 16);
  packets.forEach((p, i) => {
    putU32(bytes, i * 16, p.offset);
    putU32(bytes, i * 16 + 4, p.length);
    bytes.set(noise, i * 16 + 8);
  });
  return bytes;
}

export const arbIsoDescriptorCase: fc.Arbitrary<IsoDescriptorCase> = fc.oneof(
  arbIsoArray.map(
    ({ bufferLength, packets, noise }): IsoDescriptorCase => ({
      label: "valid",
      copied: isoArrayBytes(packets, noise),
      numberOfPackets: packets.length,
      bufferLength,
      expected: { ok: true, packets },
    }),
  ),
  arbIsoArray.chain(({ bufferLength, packets, noise }) =>
    fc
      .record({
        i: fc.integer({ min: 0, max: packets.length - 1 }),
        excess: fc.integer({ min: 1, max: MAX_ISO_PACKET }),
      })
      .map(({ i, excess }): IsoDescriptorCase => {
        const copied = isoArrayBytes(packets, noise);
        // Push packet i past the end of the buffer while keeping its length legal.
        const length = Math.min(packets[i]!.length, MAX_ISO_PACKET);
        putU32(copied, i * 16, bufferLength - length + excess);
        return {
          label: "packet-outside-buffer",
          copied,
          numberOfPackets: packets.length,
          bufferLength,
          expected: { ok: false, status: EINVAL, reason: "iso-packet-outside-buffer" },
        };
      }),
  ),
  arbIsoArray.chain(({ bufferLength, packets, noise }) =>
    fc
      .record({
        i: fc.integer({ min: 0, max: packets.length - 1 }),
        length: fc.integer({ min: MAX_ISO_PACKET + 1, max: U32_MAX }),
      })
      .map(({ i, length }): IsoDescriptorCase => {
        const copied = isoArrayBytes(packets, noise);
        putU32(copied, i * 16 + 4, length);
        return {
          label: "packet-too-long",
          copied,
          numberOfPackets: packets.length,
          bufferLength,
          expected: { ok: false, status: EMSGSIZE, reason: "iso-packet-too-long" },
        };
      }),
  ),
  arbIsoArray.chain(({ bufferLength, packets, noise }) =>
    fc.integer({ min: 0, max: packets.length * 16 - 1 }).map(
      (size): IsoDescriptorCase => ({
        label: "truncated",
        copied: isoArrayBytes(packets, noise).subarray(0, size),
        numberOfPackets: packets.length,
        bufferLength,
        expected: { ok: false, status: EINVAL, reason: "truncated-iso-descriptors" },
      }),
    ),
  ),
);

export const ISO_DESCRIPTOR_CASE_LABELS: readonly string[] = [
  "valid",
  "packet-outside-buffer",
  "packet-too-long",
  "truncated",
];
