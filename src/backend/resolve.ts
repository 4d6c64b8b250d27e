/**
 * The backend's one gate at the guest boundary: a copied URB slot in, a
 * fully resolved request or a rejection out. Everything after it trusts
 * what it returns and never reads guest memory that the guest can still
 * change (Firecracker's `Request::parse`, xen-usb.c's `usbback_get_request`
 * and its mapping, done in one place).
 *
 * Checks run in this order, and the first failure is the answer (each with
 * the status the backend has always answered it with):
 *   1 the parse gate (src/urb/parse.ts, its own ordered checks)   its reason, -EINVAL / -EMSGSIZE
 *   2 the id is not in flight already                            duplicate-id, -EINVAL
 *   (an unlink is resolved here: the target is looked up by the backend)
 *   3 the port has a device that is not detaching                port-not-attached, -ENODEV
 *   4 SET_ADDRESS (virtualised): sent to the current address,    wrong-device-address, -ENODEV
 *     new address 1..127                                         set-address-out-of-range, -EINVAL
 *   5 the device address is the port's (a port reset excepted)  wrong-device-address, -ENODEV
 *   6 the indirect segment page: pinned, copied, unpinned, parsed   grant-fault, -EINVAL / its parse reason
 *   7 each data segment pinned for the transfer's access         grant-fault, -EINVAL
 *   8 iso: the descriptor array pinned (writable: results go back there), copied privately and checked
 *                                                                grant-fault, -EINVAL / its parse reason
 * A rejection leaves nothing pinned. A resolved transfer holds its pins until
 * the backend unpins them at completion.
 *
 * What it resolves: the branded id, port and device address, the port's
 * link, the data segments as pinned (region, offset, length) locations in
 * guest memory, and the iso packets as a private copy. The transfer object
 * is reused for every request (no allocation per URB): it is valid until the
 * next `resolveRequest`.
 */
import type { GrantMapper } from "../dma-map/grant-mapper.js";
import { type DomId, FRAME_SIZE, type GrantRef } from "../dma-map/types.js";
import {
  MAX_PORT_SEGMENTS,
  PORT_FLAG_ISO_ASAP,
  PORT_FLAG_SHORT_NOT_OK,
  PORT_FLAG_ZERO_PACKET,
  type PortSubmit,
} from "../port/port-wire.js";
import { type IsoPacket, parseIsoPacketDescriptors } from "../urb/iso.js";
import { ISO_FRAME_DESCRIPTOR_SIZE, SEGMENT_SIZE } from "../urb/layout.js";
import { MAX_ISO_PACKETS } from "../urb/limits.js";
import { parseIndirectSegments, parseRequest } from "../urb/parse.js";
import type { ParseReason } from "../urb/reasons.js";
import { EINVAL, ENODEV, type UrbStatus } from "../urb/status.js";
import {
  type DataUrb,
  DEFAULT_DEV_ADDR,
  type DevAddr,
  Direction,
  type EndpointNum,
  isDevAddr,
  MIN_PORT,
  type PortNum,
  pipeTypeOf,
  type Segment,
  TransferType,
  type UnlinkUrb,
  type UrbId,
} from "../urb/types.js";
import { isPortReset, isSetAddress, type SetupPacket } from "../usb/index.js";
import type { PortLink } from "./port-link.js";

/** Why the gate refused a request: the parse gate's reasons plus the backend's own. */
export type GateReason =
  | ParseReason
  | "duplicate-id"
  | "port-not-attached"
  | "wrong-device-address"
  | "set-address-out-of-range"
  | "grant-fault";

export interface GateRejection {
  readonly ok: false;
  /** The request's id, or null when the slot was too short to hold one. */
  readonly id: UrbId | null;
  readonly status: UrbStatus;
  readonly reason: GateReason;
}

/** An unlink with a unique id; the backend looks its target up among the URBs in flight. */
export interface ResolvedUnlink {
  readonly ok: true;
  readonly kind: "unlink";
  readonly req: UnlinkUrb;
}

/** A SET_ADDRESS the backend answers itself: the port's device takes `address`. */
export interface ResolvedSetAddress {
  readonly ok: true;
  readonly kind: "set-address";
  readonly id: UrbId;
  readonly port: PortNum;
  readonly address: DevAddr;
}

const NO_ISO_PACKETS: readonly IsoPacket[] = Object.freeze([]);

/** A transfer for a port's device, fully resolved (see the header). One object, reused. */
export class ResolvedTransfer implements PortSubmit {
  readonly ok = true;
  readonly kind = "transfer";
  id = 0 as UrbId;
  port = MIN_PORT as PortNum;
  device = DEFAULT_DEV_ADDR;
  /** The port's link (attached, not closing, when resolved). */
  link!: PortLink;
  /** A port reset (CLEAR/SET_FEATURE(PORT_RESET) to the device): the address goes back to 0 when it succeeds. */
  isPortReset = false;
  type: TransferType = TransferType.Bulk;
  endpoint = 0 as EndpointNum;
  directionIn = false;
  flags = 0;
  bufferLength = 0;
  setup: SetupPacket | null = null;
  interval = 0;
  /** The data segments as pinned guest memory: (region, offset, length) triples. */
  readonly segments = new Uint32Array(MAX_PORT_SEGMENTS * 3);
  segmentCount = 0;
  /** Iso: the packets, copied out of guest memory and checked against the buffer. */
  isoPackets: readonly IsoPacket[] = NO_ISO_PACKETS;
  isoPacketCount = 0;
  /** Iso: where the guest's descriptor array is pinned (written, never read, downstream). */
  isoRegion = 0;
  isoOffset = 0;
  startFrame = 0;
  streamId = 0;
  /** Grants pinned for this transfer; the backend swaps this array into its in-flight record. */
  pins: GrantRef[] = [];
}

export type Resolution = GateRejection | ResolvedUnlink | ResolvedSetAddress | ResolvedTransfer;

/** What the gate needs to know of one port: its link and the device address the guest set. */
export interface GatePort {
  readonly link: PortLink | null;
  readonly address: DevAddr;
}

/** The backend's state the gate reads (never writes, but for the counters). */
export interface GateState {
  /** Ports by number; index 0 is unused. */
  readonly ports: readonly GatePort[];
  /** Guest ids in flight. */
  readonly inFlight: ReadonlyMap<UrbId, unknown>;
}

export interface GateCounters {
  grantFaults: number;
  setAddress: number;
}

const NO_SEGMENTS: readonly Segment[] = Object.freeze([]);

function rejection(id: UrbId | null, status: UrbStatus, reason: GateReason): GateRejection {
  return { ok: false, id, status, reason };
}

export class RequestGate {
  private readonly transfer = new ResolvedTransfer();
  private readonly pageCopy = new Uint8Array(FRAME_SIZE); // the indirect page: one frame
  private readonly isoCopy = new Uint8Array(MAX_ISO_PACKETS * ISO_FRAME_DESCRIPTOR_SIZE);
  /** Why the last segmentsOf returned null. */
  private pageRejection: GateRejection | null = null;

  constructor(
    private readonly mapper: GrantMapper,
    private readonly domid: DomId,
    private readonly counters: GateCounters,
  ) {}

  /** The one gate: `copied` is the backend's private copy of a URB ring slot. Never throws. */
  resolveRequest(copied: Uint8Array, state: GateState): Resolution {
    const parsed = parseRequest(copied);
    if (!parsed.ok) return parsed;
    const req = parsed.req;
    // Ids must be unique in flight, or an unlink would be ambiguous.
    if (state.inFlight.has(req.id)) return rejection(req.id, EINVAL, "duplicate-id");
    if (req.kind === "unlink") return { ok: true, kind: "unlink", req };
    const port = state.ports[req.port];
    const link = port?.link ?? null;
    if (port === undefined || link === null || link.closing)
      return rejection(req.id, ENODEV, "port-not-attached");
    if (req.kind === "control" && isSetAddress(req.setup)) {
      this.counters.setAddress++;
      if (req.device !== port.address) return rejection(req.id, ENODEV, "wrong-device-address");
      const value = req.setup.wValue;
      if (value < 1 || !isDevAddr(value)) return rejection(req.id, EINVAL, "set-address-out-of-range");
      return { ok: true, kind: "set-address", id: req.id, port: req.port, address: value };
    }
    const reset = req.kind === "control" && isPortReset(req.setup);
    if (!reset && req.device !== port.address) return rejection(req.id, ENODEV, "wrong-device-address");
    return this.resolveTransfer(req, link, reset);
  }

  /** Steps 6–8: pin and copy what the transfer points at. */
  private resolveTransfer(req: DataUrb, link: PortLink, reset: boolean): Resolution {
    const t = this.transfer;
    t.id = req.id;
    t.port = req.port;
    t.device = req.device;
    t.link = link;
    t.isPortReset = reset;
    t.type = pipeTypeOf(req.kind);
    t.endpoint = req.endpoint;
    t.directionIn = req.direction === Direction.In;
    let flags = req.shortNotOk ? PORT_FLAG_SHORT_NOT_OK : 0;
    if ((req.kind === "bulk" || req.kind === "interrupt") && req.zeroPacket) flags |= PORT_FLAG_ZERO_PACKET;
    if (req.kind === "isochronous" && req.isoAsap) flags |= PORT_FLAG_ISO_ASAP;
    t.flags = flags;
    t.bufferLength = req.bufferLength;
    t.setup = req.kind === "control" ? req.setup : null;
    t.interval = req.kind === "interrupt" || req.kind === "isochronous" ? req.interval : 0;
    t.segmentCount = 0;
    t.isoPackets = NO_ISO_PACKETS;
    t.isoPacketCount = 0;
    t.isoRegion = 0;
    t.isoOffset = 0;
    t.startFrame = 0;
    t.streamId = req.kind === "bulk" ? req.streamId : 0;
    const pins = t.pins;
    if (pins.length !== 0) pins.length = 0;

    const segments = this.segmentsOf(req);
    if (segments === null) return this.fail(t, this.pageRejection!);
    const access = t.directionIn ? "write" : "read";
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i]!;
      if (this.mapper.pin(seg.ref, this.domid, access, seg.offset, seg.length) !== 0) {
        this.counters.grantFaults++;
        return this.fail(t, rejection(req.id, EINVAL, "grant-fault"));
      }
      pins.push(seg.ref);
      const at = i * 3;
      t.segments[at] = this.mapper.pinnedRegion;
      t.segments[at + 1] = this.mapper.pinnedRegionOffset;
      t.segments[at + 2] = seg.length;
      t.segmentCount = i + 1;
    }
    if (req.kind === "isochronous") {
      const iso = this.resolveIso(t, req);
      if (iso !== null) return this.fail(t, iso);
    }
    return t;
  }

  /** The request's data segments, or null (and `pageRejection` says why) when the indirect page is bad. */
  private segmentsOf(req: DataUrb): readonly Segment[] | null {
    const b = req.buffer;
    if (b.kind === "none") return NO_SEGMENTS;
    if (b.kind === "inline") return b.segments;
    this.pageRejection = null;
    // Indirect: pin the page, copy it (the guest may rewrite it), unpin, then parse the copy.
    const length = b.count * SEGMENT_SIZE;
    const view = this.mapper.map(b.page.ref, this.domid, "read", b.page.offset, length);
    if (typeof view === "number") {
      this.counters.grantFaults++;
      this.pageRejection = rejection(req.id, EINVAL, "grant-fault");
      return null;
    }
    const copy = this.pageCopy.subarray(0, length);
    copy.set(view);
    this.mapper.unmap(b.page.ref);
    const parsed = parseIndirectSegments(copy, b.count, req.bufferLength);
    if (parsed.ok) return parsed.segments;
    this.pageRejection = rejection(req.id, parsed.status, parsed.reason);
    return null;
  }

  /** Pin the descriptor array, copy it privately and check the copy; null when resolved. */
  private resolveIso(
    t: ResolvedTransfer,
    req: Extract<DataUrb, { kind: "isochronous" }>,
  ): GateRejection | null {
    const d = req.frameDescriptors;
    const length = req.numberOfPackets * ISO_FRAME_DESCRIPTOR_SIZE;
    if (this.mapper.pin(d.ref, this.domid, "write", d.offset, length) !== 0) {
      this.counters.grantFaults++;
      return rejection(req.id, EINVAL, "grant-fault");
    }
    t.pins.push(d.ref);
    const region = this.mapper.pinnedRegion;
    const offset = this.mapper.pinnedRegionOffset;
    // Copy, then check the copy: the guest may rewrite its array at any time; downstream uses only the copy.
    const copy = this.isoCopy.subarray(0, length);
    copy.set(new Uint8Array(this.mapper.memory.regions[region]!, offset, length));
    const parsed = parseIsoPacketDescriptors(copy, req.numberOfPackets, req.bufferLength);
    if (!parsed.ok) return rejection(req.id, parsed.status, parsed.reason);
    t.isoPackets = parsed.packets;
    t.isoPacketCount = req.numberOfPackets;
    t.isoRegion = region;
    t.isoOffset = offset;
    t.startFrame = req.startFrame;
    return null;
  }

  /** Undo the transfer's pins and answer `r`. */
  private fail(t: ResolvedTransfer, r: GateRejection): GateRejection {
    for (const ref of t.pins) this.mapper.unmap(ref);
    t.pins.length = 0;
    t.segmentCount = 0;
    return r;
  }
}
