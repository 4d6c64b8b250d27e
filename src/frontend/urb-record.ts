/**
 * The frontend's private per-request record (xen-hcd.c's urb_priv + shadow):
 * where a request is (pending queue, on the ring, neither), what it holds
 * (ring id, grants, scratch frames) and whether its owner has been told.
 * Holding and telling are separate on purpose: a URB on a port that
 * disconnects is completed at once (-ENODEV) but keeps its id and grants
 * until the backend answers it, so each URB completes exactly once and no
 * grant is revoked while the backend may still have it mapped.
 *
 * A data record stays bound to its URB object, and a resubmit of the same
 * object reuses it once it is `reusable` (hot path: no record per URB). Each
 * reuse starts a new `generation`, so an unlink aimed at an earlier
 * submission never cancels a later one.
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
  /**
   * Delivered, answered by the backend and out of every ring and queue: nothing refers to it but its URB's
   * binding, so a resubmit of that URB may take it over. Set only by the response path.
   */
  reusable = false;
  /** Which submission of `urb` this record currently carries (bumped by reuse). */
  generation = 0;

  private constructor(
    /** The URB, or null for an unlink request. */
    readonly urb: Urb | null,
    public callback: UrbCallback | null,
    public bufferLength: number,
    /** Unlink requests: the URB to cancel, the submission of it meant, and who waits for the answer. */
    readonly target: UrbRecord | null,
    readonly targetGeneration: number,
    readonly unlinkDone: ((status: UrbStatus) => void) | null,
  ) {}

  static data(urb: Urb, callback: UrbCallback, bufferLength: number): UrbRecord {
    return new UrbRecord(urb, callback, bufferLength, null, 0, null);
  }

  static unlink(target: UrbRecord, done: (status: UrbStatus) => void): UrbRecord {
    return new UrbRecord(null, null, 0, target, target.generation, done);
  }

  /** Start the next submission of the same URB on this (reusable) record. */
  reuse(callback: UrbCallback, bufferLength: number): void {
    this.generation++;
    this.callback = callback;
    this.bufferLength = bufferLength;
    this.delivered = false;
    this.reusable = false;
    // Left so by the response path: OFF, id -1, no grants, no scratch frames.
  }
}
