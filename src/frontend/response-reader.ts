/**
 * The completion path's ring reader (xen-hcd's xenhcd_urb_request_done):
 * takes one response off the URB ring into a private copy
 * (RING_COPY_RESPONSE), finds its record by ring id, revokes every grant the
 * record holds (a grant the backend still maps is a protocol error: the ring
 * is latched), releases its scratch frames, reads iso results and clamps
 * lengths to what was asked. What the owner is told (and the root hub's
 * update) is the controller's: take() leaves the record and its completion
 * in `record` / `completion` until the next take. No allocation per URB but
 * the completion object the owner receives.
 */
import type { GrantTableOwner } from "../dma-map/grant-table.js";
import type { GuestMemory } from "../dma-map/guest-memory.js";
import type { GuestFrame } from "../dma-map/types.js";
import { RingFault } from "../rings/faults.js";
import type { FrontRing } from "../rings/front-ring.js";
import { readS32, readU32 } from "../urb/bytes.js";
import { readIsoPacketResult } from "../urb/iso.js";
import {
  kRspActualLength,
  kRspErrorCount,
  kRspId,
  kRspStartFrame,
  kRspStatus,
  URB_RESPONSE_SIZE,
} from "../urb/layout.js";
import { statusFromPeer, type UrbStatus } from "../urb/status.js";
import type { ScratchFrames } from "./scratch.js";
import type { IsoPacketResult, Urb, UrbCompletion } from "./types.js";
import { Phase, type UrbRecord } from "./urb-record.js";

/** What one take() found. */
export const Taken = {
  /** No response on the ring (or the ring is latched). */
  NONE: 0,
  /** A response that tells nobody (an unlink's answer, passed to its waiter; a late answer; a violation). */
  HANDLED: 1,
  /** A URB completed: tell `record`'s owner `completion`. */
  COMPLETED: 2,
} as const;
export type Taken = (typeof Taken)[keyof typeof Taken];

/** A completion that carries only a status (refused, failed locally, disconnected, backend lost). */
export function failure(status: UrbStatus, detail?: string): UrbCompletion {
  return detail === undefined
    ? { status, actualLength: 0, startFrame: 0, errorCount: 0 }
    : { status, actualLength: 0, startFrame: 0, errorCount: 0, detail };
}

export interface ResponseReaderParts {
  readonly ring: FrontRing;
  readonly grants: GrantTableOwner;
  readonly memory: GuestMemory;
  readonly scratch: ScratchFrames;
  /** Ring id → the record holding it (filled by the sender). */
  readonly inFlight: (UrbRecord | undefined)[];
}

export class ResponseReader {
  private readonly ring: FrontRing;
  private readonly grants: GrantTableOwner;
  private readonly memory: GuestMemory;
  private readonly scratch: ScratchFrames;
  private readonly inFlight: (UrbRecord | undefined)[];
  /** Private copy of each response slot (RING_COPY_RESPONSE). */
  private readonly copy = new Uint8Array(URB_RESPONSE_SIZE);
  /** After a take() that returned COMPLETED: whose URB completed, and how. */
  record: UrbRecord | null = null;
  completion: UrbCompletion | null = null;

  constructor(parts: ResponseReaderParts) {
    this.ring = parts.ring;
    this.grants = parts.grants;
    this.memory = parts.memory;
    this.scratch = parts.scratch;
    this.inFlight = parts.inFlight;
  }

  /** Take the next response; its id was checked in flight by FrontRing. */
  take(): Taken {
    this.record = null;
    this.completion = null;
    const copy = this.copy;
    if (!this.ring.takeResponse(copy)) return Taken.NONE;
    const id = readU32(copy, kRspId);
    const record = this.inFlight[id];
    if (record === undefined) {
      // The id pool said in flight but we hold no record: never trust this ring again.
      this.ring.latch(RingFault.PEER_PROTOCOL_VIOLATION);
      return Taken.HANDLED;
    }
    const status = statusFromPeer(readS32(copy, kRspStatus));
    if (record.urb === null) {
      this.inFlight[id] = undefined;
      record.phase = Phase.OFF;
      record.id = -1;
      record.unlinkDone!(status);
      return Taken.HANDLED;
    }
    // The backend must have unmapped everything before answering (xen-hcd: a grant still in use is a protocol error).
    if (!this.revokeGrants(record)) {
      this.ring.latch(RingFault.PEER_PROTOCOL_VIOLATION);
      return Taken.HANDLED;
    }
    this.inFlight[id] = undefined;
    record.phase = Phase.OFF;
    record.id = -1;
    let isoPackets: IsoPacketResult[] | undefined;
    if (record.isoFrame !== -1) {
      if (!record.delivered) isoPackets = this.readIsoResults(record);
      this.scratch.release(record.isoFrame, record.isoFrames);
      record.isoFrame = -1;
    }
    if (record.indirectFrame !== -1) {
      this.scratch.release(record.indirectFrame, 1);
      record.indirectFrame = -1;
    }
    if (record.delivered) {
      // Completed early (port disconnect); the answer only freed its resources. Nothing holds it now.
      record.reusable = true;
      return Taken.HANDLED;
    }

    const actual = Math.min(readU32(copy, kRspActualLength), record.bufferLength);
    const startFrame = readU32(copy, kRspStartFrame);
    const errorCount =
      isoPackets === undefined
        ? readU32(copy, kRspErrorCount)
        : Math.min(readU32(copy, kRspErrorCount), isoPackets.length);
    this.completion =
      isoPackets === undefined
        ? { status, actualLength: actual, startFrame, errorCount }
        : { status, actualLength: actual, startFrame, errorCount, isoPackets };
    this.record = record;
    return Taken.COMPLETED;
  }

  private readIsoResults(record: UrbRecord): IsoPacketResult[] {
    const urb = record.urb as Extract<Urb, { type: "isochronous" }>;
    const packets = urb.iso.packets;
    const view = this.memory.frameView(record.isoFrame as GuestFrame, record.isoFrames);
    const results: IsoPacketResult[] = [];
    for (let i = 0; i < packets.length; i++) {
      const r = readIsoPacketResult(view, i);
      results.push({ status: r.status, actualLength: Math.min(r.actualLength, packets[i]!.length) });
    }
    return results;
  }

  /** Revoke a record's grants; false (the rest kept for force-revoke) when the backend still maps one. */
  private revokeGrants(record: UrbRecord): boolean {
    const grants = record.grants;
    while (grants.length > 0) {
      if (!this.grants.tryRevoke(grants[grants.length - 1]!)) return false;
      grants.pop();
    }
    return true;
  }
}
