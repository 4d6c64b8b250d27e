/**
 * The backend's end of a ring (Xen io/ring.h BACK_RING): consumes requests,
 * produces responses. It trusts nothing the frontend wrote: reqProd is
 * checked against the slots the frontend may use (RING_REQUEST_PROD_OVERFLOW),
 * every request is copied out of its slot before it is parsed
 * (RING_COPY_REQUEST), and the shared words the frontend could scribble on
 * (rspProd, reqEvent) are never read back.
 */
import { RingFault } from "./faults.js";
import { kError, kReqEvent, kReqProd, kRspEvent, kRspProd, type RingGeometry, RingViews } from "./layout.js";
import { asRingIdx, type RingIdx, ringAdvance, ringDistance } from "./ring-index.js";

export class BackRing {
  private readonly v: RingViews;
  private readonly h: Int32Array;
  private reqCons = 0 as RingIdx;
  /** reqProd as last read and checked; consumption up to it needs no atomic load. */
  private reqProdSeen = 0 as RingIdx;
  private rspProdPvt = 0 as RingIdx;
  private rspProdPushed = 0 as RingIdx;
  private faultCode: RingFault = RingFault.NONE;

  constructor(sab: SharedArrayBuffer, geometry: RingGeometry) {
    this.v = new RingViews(sab, geometry);
    this.h = this.v.header;
    this.attach();
  }

  /**
   * BACK_RING_ATTACH: start at the shared rspProd. A lying frontend can only
   * choose where counting starts; every later index is checked against it.
   */
  private attach(): void {
    const start = asRingIdx(Atomics.load(this.h, kRspProd));
    this.reqCons = this.reqProdSeen = this.rspProdPvt = this.rspProdPushed = start;
    this.faultCode = RingFault.NONE;
  }

  get geometry(): RingGeometry {
    return this.v.geometry;
  }

  get fault(): RingFault {
    return this.faultCode;
  }

  /** Requests consumed and not yet answered. */
  get unanswered(): number {
    return ringDistance(this.reqCons, this.rspProdPvt);
  }

  /** Requests ready to take; 0 when faulted (check `fault`). */
  unconsumedRequests(): number {
    if (this.faultCode !== RingFault.NONE) return 0;
    const prod = asRingIdx(Atomics.load(this.h, kReqProd));
    // The frontend may fill only slots we have answered: reqProd must lie in
    // [reqCons, rspProdPvt + slots]. Anything else is a lie; stop trusting it.
    const ahead = ringDistance(prod, this.rspProdPvt);
    if (ahead > this.v.geometry.slots || ringDistance(this.reqCons, this.rspProdPvt) > ahead) {
      this.latch(RingFault.REQUEST_PROD_OVERFLOW);
      return 0;
    }
    this.reqProdSeen = prod;
    return ringDistance(prod, this.reqCons);
  }

  /**
   * Copy the next request into `into` (at least slotSize bytes, private
   * memory). False when there is none or the ring is faulted.
   */
  takeRequest(into: Uint8Array): boolean {
    if (this.reqCons === this.reqProdSeen && this.unconsumedRequests() === 0) return false;
    if (this.faultCode !== RingFault.NONE) return false;
    // RING_COPY_REQUEST: a local copy the frontend cannot change under us.
    into.set(this.v.slotViews[this.reqCons & this.v.mask]!);
    this.reqCons = ringAdvance(this.reqCons, 1);
    return true;
  }

  /**
   * Take the next request without copying it: the shared slot itself, or
   * null. Only for a producer this end trusts (the port ring, whose producer
   * is the backend of this same process): an untrusted one could change the
   * slot while it is read, so the URB ring always copies (takeRequest). The
   * slot holds the request until the caller's next response is committed
   * (requests and responses share slots): read it first, answer after.
   */
  takeRequestInPlace(): Uint8Array | null {
    if (this.reqCons === this.reqProdSeen && this.unconsumedRequests() === 0) return null;
    if (this.faultCode !== RingFault.NONE) return null;
    const slot = this.v.slotViews[this.reqCons & this.v.mask]!;
    this.reqCons = ringAdvance(this.reqCons, 1);
    return slot;
  }

  /**
   * The slot for the next response, to be filled in place; commitResponse()
   * once written. Only a consumed request can be answered: responses never
   * overwrite a slot the backend has not copied.
   */
  responseSlot(): Uint8Array {
    if (this.unanswered === 0) throw new Error("BackRing.responseSlot: no consumed request left to answer");
    return this.v.slotViews[this.rspProdPvt & this.v.mask]!;
  }

  commitResponse(): void {
    if (this.unanswered === 0) throw new Error("BackRing.commitResponse: no consumed request left to answer");
    this.rspProdPvt = ringAdvance(this.rspProdPvt, 1);
  }

  /**
   * Publish committed responses (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY).
   * Returns true when the frontend asked to be woken for them.
   */
  pushResponses(): boolean {
    const old = this.rspProdPushed;
    const next = this.rspProdPvt;
    if (old === next) return false;
    this.rspProdPushed = next;
    // Publish: slot bytes written before this seq-cst store are visible to a
    // frontend that loads the new rspProd.
    Atomics.store(this.h, kRspProd, next | 0);
    const event = asRingIdx(Atomics.load(this.h, kRspEvent));
    return ringDistance(next, event) < ringDistance(next, old);
  }

  /** Cheap check for a waiter: requests ready, or a fault to report. */
  hasPending(): boolean {
    return (
      this.faultCode !== RingFault.NONE || this.reqCons !== this.reqProdSeen || this.unconsumedRequests() > 0
    );
  }

  /**
   * RING_FINAL_CHECK_FOR_REQUESTS: ask to be notified of the next request,
   * then look once more. True means do not sleep.
   */
  armAndCheck(): boolean {
    if (this.hasPending()) return true;
    Atomics.store(this.h, kReqEvent, ringAdvance(this.reqCons, 1) | 0);
    return this.hasPending();
  }

  latch(fault: RingFault): void {
    if (this.faultCode !== RingFault.NONE) return;
    this.faultCode = fault;
    Atomics.compareExchange(this.h, kError, 0, fault);
  }

  sharedFault(): number {
    return Atomics.load(this.h, kError);
  }

  /** Re-attach after the owner reset the shared header (FrontRing.reset). */
  reset(): void {
    this.attach();
  }
}
