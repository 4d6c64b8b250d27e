/**
 * The frontend's private per-request record (xen-hcd.c's urb_priv + shadow):
 * where a request is (pending queue, on the ring, neither), what it holds
 * (ring id, grants, scratch frames) and whether its owner has been told.
 * Holding and telling are separate on purpose: a URB on a port that
 * disconnects is completed at once (-ENODEV) but keeps its id and grants
 * until the backend answers it, so each URB completes exactly once and no
 * grant is revoked while the backend may still have it mapped.
 */
import type { GrantRef, GuestFrame } from "../dma-map/types.js";
import type { UrbStatus } from "../urb/status.js";
import type { Urb, UrbCallback } from "./types.js";

export const Phase = { PENDING: 0, IN_FLIGHT: 1, OFF: 2 } as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

export class UrbRecord {
  phase: Phase = Phase.OFF;
  /** Ring id while IN_FLIGHT, else -1. */
  id = -1;
  /** Grants to revoke when the backend answers. */
  readonly grants: GrantRef[] = [];
  indirectFrame: GuestFrame | -1 = -1;
  isoFrame: GuestFrame | -1 = -1;
  isoFrames = 0;
  /** The callback has been called (or is queued to be): never again. */
  delivered = false;

  private constructor(
    /** The URB, or null for an unlink request. */
    readonly urb: Urb | null,
    readonly callback: UrbCallback | null,
    readonly bufferLength: number,
    /** Unlink requests: the URB to cancel and who waits for the answer. */
    readonly target: UrbRecord | null,
    readonly unlinkDone: ((status: UrbStatus) => void) | null,
  ) {}

  static data(urb: Urb, callback: UrbCallback, bufferLength: number): UrbRecord {
    return new UrbRecord(urb, callback, bufferLength, null, null);
  }

  static unlink(target: UrbRecord, done: (status: UrbStatus) => void): UrbRecord {
    return new UrbRecord(null, null, 0, target, done);
  }
}
