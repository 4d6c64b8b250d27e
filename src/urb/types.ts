/**
 * Typed URB requests and responses: what the parse gate hands downstream and what the encoders take.
 * Field meanings follow Xen usbif.h (`usbif_urb_request` / `usbif_urb_response`) and Linux `struct urb`;
 * the wire layout is in layout.ts.
 *
 * A request is a discriminated union by `kind`, and each kind carries only the fields and flags that
 * mean something for it (ZERO_PACKET only on bulk/interrupt, ISO_ASAP only on iso, no buffer on unlink).
 */
import type { GrantSegment } from "../dma-map/grant-mapper.js";
import type { GrantRef } from "../dma-map/types.js";
import type { SetupPacket, TransferKind } from "../usb/index.js";
import type { Brand } from "../util/brand.js";
import { InvalidOptionError } from "../util/errors.js";
import type { UrbStatus } from "./status.js";

/** Frontend-chosen request id, echoed in the response; unique among in-flight URBs. */
export type UrbId = Brand<number, "UrbId">;
/** Root-hub port, 1..31 (usbif pipe bits 0..4; 0 is not a port). */
export type PortNum = Brand<number, "PortNum">;
/** USB device address, 0..127 (0 is the default address during enumeration). */
export type DevAddr = Brand<number, "DevAddr">;
/** Endpoint number without the direction bit, 0..15. */
export type EndpointNum = Brand<number, "EndpointNum">;

export const MIN_PORT = 1;
export const MAX_PORT = 31;
export const MAX_DEV_ADDR = 127;
export const MAX_ENDPOINT = 15;
/** The address every device answers on until SET_ADDRESS (and again after a port reset). */
export const DEFAULT_DEV_ADDR = 0 as DevAddr;

/** usbif pipe type numbering (bits 30..31). */
export enum TransferType {
  Isochronous = 0,
  Interrupt = 1,
  Control = 2,
  Bulk = 3,
}

/**
 * The engine's transfer kind ↔ usbif's pipe type number: the one conversion at the ring's boundary (the
 * frontend and the URB encoder go one way, the port service the other).
 */
const PIPE_TYPE_BY_KIND: Readonly<Record<TransferKind, TransferType>> = {
  control: TransferType.Control,
  bulk: TransferType.Bulk,
  interrupt: TransferType.Interrupt,
  isochronous: TransferType.Isochronous,
};
const KIND_BY_PIPE_TYPE: readonly TransferKind[] = ["isochronous", "interrupt", "control", "bulk"];

export function pipeTypeOf(kind: TransferKind): TransferType {
  return PIPE_TYPE_BY_KIND[kind];
}

/** The kind a pipe type number names; undefined for a number that is not one (only 0..3 are). */
export function transferKindOfPipeType(type: number): TransferKind | undefined {
  return KIND_BY_PIPE_TYPE[type];
}

/** Data direction as seen from the host; usbif pipe bit 7. */
export enum Direction {
  Out = 0,
  In = 1,
}

function isUint(value: number, max: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= max;
}

export function isUrbId(value: number): value is UrbId {
  return isUint(value, 0xffff_ffff);
}
export function isPortNum(value: number): value is PortNum {
  return isUint(value, MAX_PORT) && value >= MIN_PORT;
}
export function isDevAddr(value: number): value is DevAddr {
  return isUint(value, MAX_DEV_ADDR);
}
export function isEndpointNum(value: number): value is EndpointNum {
  return isUint(value, MAX_ENDPOINT);
}

/** Brand a trusted number (host-side code, tests); throws InvalidOptionError when out of range. */
export function urbId(value: number): UrbId {
  if (!isUrbId(value)) throw new InvalidOptionError(`URB id must be a u32, got ${value}`);
  return value;
}
export function portNum(value: number): PortNum {
  if (!isPortNum(value)) throw new InvalidOptionError(`port must be ${MIN_PORT}..${MAX_PORT}, got ${value}`);
  return value;
}
export function devAddr(value: number): DevAddr {
  if (!isDevAddr(value))
    throw new InvalidOptionError(`device address must be 0..${MAX_DEV_ADDR}, got ${value}`);
  return value;
}
export function endpointNum(value: number): EndpointNum {
  if (!isEndpointNum(value))
    throw new InvalidOptionError(`endpoint must be 0..${MAX_ENDPOINT}, got ${value}`);
  return value;
}

/**
 * A byte range inside one grant: `length` bytes from `offset` of the grant `ref`. Never zero-length. The
 * mapper's own name for it is GrantSegment (src/dma-map/grant-mapper.ts): one shape, one definition.
 */
export type Segment = GrantSegment;

/** Where the transfer buffer lives. */
export type UrbBuffer =
  /** buffer_length is 0. */
  | { readonly kind: "none" }
  /** Up to 8 segments in the slot; their lengths add up to buffer_length. */
  | { readonly kind: "inline"; readonly segments: readonly Segment[] }
  /**
   * `count` segments in an indirect segment page described by `page` (page.length = count × 12). The
   * backend maps and copies the page, then runs `parseIndirectSegments`.
   */
  | { readonly kind: "indirect"; readonly page: Segment; readonly count: number };

/** The one "no buffer" value (shared: the gate does not allocate one per URB). */
export const NO_BUFFER: UrbBuffer = Object.freeze({ kind: "none" });

/** Fields every request has: the id and the decoded pipe (the unlink bit is the `kind`). */
interface UrbTarget {
  readonly id: UrbId;
  readonly port: PortNum;
  readonly device: DevAddr;
  readonly endpoint: EndpointNum;
  readonly direction: Direction;
}

/** Fields of a request that moves data. */
interface DataUrbFields extends UrbTarget {
  readonly bufferLength: number;
  readonly buffer: UrbBuffer;
  /** SHORT_NOT_OK: a short IN completes with -EREMOTEIO (ignored for OUT, as in Linux). */
  readonly shortNotOk: boolean;
}

export interface ControlUrb extends DataUrbFields {
  readonly kind: "control";
  readonly setup: SetupPacket;
}

export interface BulkUrb extends DataUrbFields {
  readonly kind: "bulk";
  /** ZERO_PACKET (OUT only): end a transfer that is a multiple of the packet size with a zero-length packet. */
  readonly zeroPacket: boolean;
  /** Bulk stream 1..MAX_STREAM_ID on a SuperSpeed endpoint with streams allocated; 0: none. */
  readonly streamId: number;
}

export interface InterruptUrb extends DataUrbFields {
  readonly kind: "interrupt";
  readonly zeroPacket: boolean;
  /** Polling interval in (micro)frames, ≥ 1. */
  readonly interval: number;
}

export interface IsoUrb extends DataUrbFields {
  readonly kind: "isochronous";
  /** ISO_ASAP: start at the next possible frame, ignoring `startFrame`. */
  readonly isoAsap: boolean;
  readonly interval: number;
  readonly numberOfPackets: number;
  readonly startFrame: number;
  /** Where the numberOfPackets × 16-byte frame descriptor array lives (a writable grant). */
  readonly frameDescriptors: { readonly ref: GrantRef; readonly offset: number };
}

/** Cancel the in-flight URB `unlinkId`. Carries the target's pipe (as xen-hcd sends it), no buffer. */
export interface UnlinkUrb extends UrbTarget {
  readonly kind: "unlink";
  /** Transfer type bits of the pipe: the type of the URB being cancelled. */
  readonly targetType: TransferType;
  readonly unlinkId: UrbId;
}

export type UrbRequest = ControlUrb | BulkUrb | InterruptUrb | IsoUrb | UnlinkUrb;
export type UrbKind = UrbRequest["kind"];
export type DataUrb = Exclude<UrbRequest, UnlinkUrb>;

export interface UrbResponse {
  readonly id: UrbId;
  readonly status: UrbStatus;
  /** Bytes transferred; the frontend clamps it to [0, buffer_length] (it comes from the peer). */
  readonly actualLength: number;
  readonly startFrame: number;
  /** Iso packets that completed with an error. */
  readonly errorCount: number;
}

/** The transfer type a request's pipe carries. */
export function transferTypeOf(req: UrbRequest): TransferType {
  return req.kind === "unlink" ? req.targetType : pipeTypeOf(req.kind);
}
