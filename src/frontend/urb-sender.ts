/**
 * The submit path's ring writer (xen-hcd's xenhcd_do_request): puts one
 * record on the URB ring. For a data URB: keep UNLINK_RESERVED_SLOTS free,
 * take a slot, an id, grants (one extent per buffer segment, read-only for
 * OUT, writable for IN) and scratch frames (an indirect segment page, an iso
 * descriptor array), fill the request scratch objects and encode them into the
 * slot; for an unlink: its target's ring id. All or nothing: a record that
 * cannot go takes nothing and stays where it is (the pending queue). Nothing
 * is allocated per URB (RequestScratch holds the objects encoded).
 */
import type { GrantTableOwner } from "../dma-map/grant-table.js";
import type { GuestMemory } from "../dma-map/guest-memory.js";
import {
  type DomId,
  framesSpanned,
  type GuestFrame,
  offsetInFrame,
  offsetToFrame,
} from "../dma-map/types.js";
import type { FrontRing } from "../rings/front-ring.js";
import type { IdPool } from "../rings/id-pool.js";
import { encodeIndirectSegments, encodeRequest } from "../urb/codec.js";
import { writeIsoPacket } from "../urb/iso.js";
import { SEGMENT_SIZE } from "../urb/layout.js";
import { MAX_INLINE_SEGMENTS } from "../urb/limits.js";
import { ENOENT } from "../urb/status.js";
import { Direction, pipeTypeOf, type UrbBuffer, type UrbId } from "../urb/types.js";
import { RequestScratch, type ScratchDataRequest } from "./request-scratch.js";
import type { ScratchFrames } from "./scratch.js";
import type { BufferSegment } from "./types.js";
import { Phase, type UrbRecord } from "./urb-record.js";
import { grantsNeeded, isoDescriptorFrames } from "./validate.js";

/**
 * URB ring slots data URBs may not take: kept for unlinks. Without them a ring full of URBs the device
 * never completes (interrupt INs on an idle keyboard) could never be cancelled: the unlink needs a slot.
 */
export const UNLINK_RESERVED_SLOTS = 8;

/** A URB without a buffer reads as this (shared: no empty array per URB). */
const NO_SEGMENTS: readonly BufferSegment[] = Object.freeze([]);

export interface UrbSenderParts {
  readonly ring: FrontRing;
  readonly ids: IdPool;
  readonly grants: GrantTableOwner;
  readonly memory: GuestMemory;
  readonly scratch: ScratchFrames;
  readonly backendDomid: DomId;
  /** Ring id → the record holding it: the sender fills it, the completion path and backend loss empty it. */
  readonly inFlight: (UrbRecord | undefined)[];
}

export class UrbSender {
  private readonly ring: FrontRing;
  private readonly ids: IdPool;
  private readonly grants: GrantTableOwner;
  private readonly memory: GuestMemory;
  private readonly scratch: ScratchFrames;
  private readonly backendDomid: DomId;
  private readonly inFlight: (UrbRecord | undefined)[];
  /** The request objects trySend fills and encodes (none allocated per URB). */
  private readonly request = new RequestScratch();
  /** Statistics: unlink requests put on the ring. */
  unlinksSent = 0;

  constructor(parts: UrbSenderParts) {
    this.ring = parts.ring;
    this.ids = parts.ids;
    this.grants = parts.grants;
    this.memory = parts.memory;
    this.scratch = parts.scratch;
    this.backendDomid = parts.backendDomid;
    this.inFlight = parts.inFlight;
  }

  /**
   * Put one record on the ring, or return false (nothing taken) when a slot,
   * an id, grants or scratch frames are missing. Unlinks whose target is no
   * longer on the ring are answered -ENOENT here and count as sent.
   */
  trySend(record: UrbRecord): boolean {
    const urb = record.urb;
    if (urb === null) return this.trySendUnlink(record);
    if (this.ring.freeRequests <= UNLINK_RESERVED_SLOTS) return false;
    const slot = this.ring.requestSlot();
    if (slot === null) return false;
    const segments = urb.buffer ?? NO_SEGMENTS;
    const count = segments.length;
    if (this.grants.freeCount < grantsNeeded(urb)) return false;
    let indirectFrame: GuestFrame | -1 = -1;
    if (count > MAX_INLINE_SEGMENTS) {
      indirectFrame = this.scratch.allocate(1);
      if (indirectFrame === -1) return false;
    }
    let isoFrame: GuestFrame | -1 = -1;
    let isoFrames = 0;
    if (urb.type === "isochronous") {
      isoFrames = isoDescriptorFrames(urb.iso.packets.length);
      isoFrame = this.scratch.allocate(isoFrames);
      if (isoFrame === -1) {
        if (indirectFrame !== -1) this.scratch.release(indirectFrame, 1);
        return false;
      }
    }
    const id = this.ids.allocate();
    if (id < 0) {
      // Cannot happen while every ring request holds an id; stay correct anyway.
      if (indirectFrame !== -1) this.scratch.release(indirectFrame, 1);
      if (isoFrame !== -1) this.scratch.release(isoFrame, isoFrames);
      return false;
    }

    // Grant each segment: one extent over the frames it spans; the wire offset is within the first frame.
    const readonly = !urb.directionIn;
    const scratch = this.request;
    const wire = scratch.segments;
    for (let i = 0; i < count; i++) {
      const { offset, length } = segments[i]!;
      const ref = this.grants.grant(
        this.backendDomid,
        offsetToFrame(offset),
        framesSpanned(offset, length),
        readonly,
      );
      record.grants.push(ref);
      const w = wire[i]!;
      w.ref = ref;
      w.offset = offsetInFrame(offset);
      w.length = length;
    }
    let buffer: UrbBuffer;
    if (indirectFrame === -1) {
      buffer = scratch.inlineBuffer(count); // NO_BUFFER when count is 0
    } else {
      encodeIndirectSegments(wire, this.memory.frameView(indirectFrame), 0, count);
      // The backend only reads the segment list.
      const pageRef = this.grants.grant(this.backendDomid, indirectFrame, 1, true);
      record.grants.push(pageRef);
      buffer = scratch.indirectBuffer(pageRef, count, count * SEGMENT_SIZE);
    }
    record.indirectFrame = indirectFrame;

    let request: ScratchDataRequest;
    switch (urb.type) {
      case "control":
        request = scratch.control;
        request.setup = urb.setup;
        break;
      case "bulk":
        request = scratch.bulk;
        request.zeroPacket = urb.zeroPacket === true;
        request.streamId = urb.streamId ?? 0;
        break;
      case "interrupt":
        request = scratch.interrupt;
        request.zeroPacket = urb.zeroPacket === true;
        request.interval = urb.interval;
        break;
      case "isochronous": {
        const descriptors = this.memory.frameView(isoFrame as GuestFrame, isoFrames);
        const packets = urb.iso.packets;
        for (let i = 0; i < packets.length; i++) writeIsoPacket(descriptors, i, packets[i]!);
        // Writable: the backend writes each packet's status and actual length back.
        const descRef = this.grants.grant(this.backendDomid, isoFrame as GuestFrame, isoFrames, false);
        record.grants.push(descRef);
        record.isoFrame = isoFrame;
        record.isoFrames = isoFrames;
        const iso = scratch.iso;
        iso.isoAsap = urb.iso.asap;
        iso.interval = urb.interval;
        iso.numberOfPackets = packets.length;
        iso.startFrame = urb.iso.startFrame ?? 0;
        iso.frameDescriptors.ref = descRef;
        iso.frameDescriptors.offset = 0;
        request = iso;
        break;
      }
    }
    request.id = id as UrbId;
    request.port = urb.port;
    request.device = urb.device;
    request.endpoint = urb.endpoint;
    request.direction = urb.directionIn ? Direction.In : Direction.Out;
    request.bufferLength = record.bufferLength;
    request.buffer = buffer;
    request.shortNotOk = urb.shortNotOk === true;
    encodeRequest(request, slot);
    this.ring.commitRequest();
    record.id = id;
    record.phase = Phase.IN_FLIGHT;
    this.inFlight[id] = record;
    return true;
  }

  trySendUnlink(record: UrbRecord): boolean {
    const target = record.target!;
    // A target record reused by a later submit of its URB means this unlink's submission is over.
    if (
      target.generation !== record.targetGeneration ||
      target.phase !== Phase.IN_FLIGHT ||
      target.delivered
    ) {
      // Finished (or failed locally) before the unlink could go: nothing to cancel.
      record.phase = Phase.OFF;
      const done = record.unlinkDone!;
      queueMicrotask(() => done(ENOENT));
      return true;
    }
    const slot = this.ring.requestSlot();
    if (slot === null) return false;
    const id = this.ids.allocate();
    if (id < 0) return false;
    const t = target.urb!;
    encodeRequest(
      {
        kind: "unlink",
        id: id as UrbId,
        port: t.port,
        device: t.device,
        endpoint: t.endpoint,
        direction: t.directionIn ? Direction.In : Direction.Out,
        targetType: pipeTypeOf(t.type),
        unlinkId: target.id as UrbId,
      },
      slot,
    );
    this.ring.commitRequest();
    record.id = id;
    record.phase = Phase.IN_FLIGHT;
    this.inFlight[id] = record;
    this.unlinksSent++;
    return true;
  }
}
