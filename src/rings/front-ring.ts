/**
 * The frontend's end of a ring (Xen io/ring.h FRONT_RING): produces requests,
 * consumes responses. Private cursors (reqProdPvt, rspCons) never live in
 * shared memory. Responses are copied out of the slot before anyone reads
 * them (the peer could change the slot under us), and the peer's rspProd is
 * checked before it is trusted.
 */

import { InvalidOptionError } from "../util/errors.js";
import { RingFault } from "./faults.js";
import { type IdPool, slotId } from "./id-pool.js";
import {
  initRingHeader,
  kError,
  kGeneration,
  kReqEvent,
  kReqProd,
  kRspEvent,
  kRspProd,
  type RingGeometry,
  RingViews,
} from "./layout.js";
import { asRingIdx, type RingIdx, ringAdvance, ringDistance } from "./ring-index.js";

export interface FrontRingOptions {
  /** When given, every response's id (u32 at offset 0) must be in flight in this pool. */
  readonly ids?: IdPool;
  /**
   * Bytes of a response slot that takeResponse copies (default the whole
   * slot): the port ring's 4 KiB slots carry 20-byte answers.
   */
  readonly responseBytes?: number;
}

export class FrontRing {
  private readonly v: RingViews;
  private readonly h: Int32Array;
  private readonly ids: IdPool | undefined;
  /** What takeResponse copies of each slot (pre-made: no view per response). */
  private readonly responseViews: readonly Uint8Array[];
  private reqProdPvt = 0 as RingIdx;
  /** The reqProd we last published: the peer cannot have answered past it. */
  private reqProdPushed = 0 as RingIdx;
  private rspCons = 0 as RingIdx;
  /** rspProd as last read and checked; consumption up to it needs no atomic load. */
  private rspProdSeen = 0 as RingIdx;
  private faultCode: RingFault = RingFault.NONE;

  constructor(sab: SharedArrayBuffer, geometry: RingGeometry, options: FrontRingOptions = {}) {
    this.v = new RingViews(sab, geometry);
    this.h = this.v.header;
    this.ids = options.ids;
    const bytes = options.responseBytes ?? geometry.slotSize;
    if (!Number.isInteger(bytes) || bytes < 4 || bytes > geometry.slotSize) {
      throw new InvalidOptionError(
        `responseBytes must be an integer in [4, ${geometry.slotSize}], got ${String(options.responseBytes)}`,
      );
    }
    this.responseViews =
      bytes === geometry.slotSize
        ? this.v.slotViews
        : this.v.slotViews.map((v) => new Uint8Array(v.buffer, v.byteOffset, bytes));
    this.attach();
  }

  /**
   * FRONT_RING_ATTACH: start the private cursors where the shared header is
   * (a fresh ring is empty, so reqProd and rspProd agree).
   */
  private attach(): void {
    const start = asRingIdx(Atomics.load(this.h, kRspProd));
    this.reqProdPvt = this.reqProdPushed = this.rspCons = this.rspProdSeen = start;
    this.faultCode = RingFault.NONE;
  }

  get geometry(): RingGeometry {
    return this.v.geometry;
  }

  /** The sticky fault this end latched, or NONE. */
  get fault(): RingFault {
    return this.faultCode;
  }

  /** Requests published or being written and not yet answered and consumed. */
  get inFlight(): number {
    return ringDistance(this.reqProdPvt, this.rspCons);
  }

  /** Slots free for new requests. */
  get freeRequests(): number {
    return this.v.geometry.slots - this.inFlight;
  }

  /**
   * The slot for the next request, to be filled in place, or null when the
   * ring is full or faulted. Call commitRequest() once it is written.
   */
  requestSlot(): Uint8Array | null {
    if (this.faultCode !== RingFault.NONE || this.freeRequests === 0) return null;
    return this.v.slotViews[this.reqProdPvt & this.v.mask]!;
  }

  commitRequest(): void {
    if (this.freeRequests === 0)
      throw new Error("FrontRing.commitRequest: ring is full (requestSlot() returned null)");
    this.reqProdPvt = ringAdvance(this.reqProdPvt, 1);
  }

  /**
   * Publish committed requests (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY).
   * Returns true when the backend asked to be woken for them.
   */
  pushRequests(): boolean {
    const old = this.reqProdPushed;
    const next = this.reqProdPvt;
    if (old === next) return false;
    this.reqProdPushed = next;
    // Publish: the slot bytes written before this seq-cst store are visible to
    // a backend that loads the new reqProd.
    Atomics.store(this.h, kReqProd, next | 0);
    // Seq-cst load after the store: either the backend sees the new reqProd in
    // its final check, or we see the event it set and notify.
    const event = asRingIdx(Atomics.load(this.h, kReqEvent));
    return ringDistance(next, event) < ringDistance(next, old);
  }

  /** Responses ready to take; 0 when faulted (check `fault`). */
  unconsumedResponses(): number {
    if (this.faultCode !== RingFault.NONE) return 0;
    const prod = asRingIdx(Atomics.load(this.h, kRspProd));
    // The backend can answer only what we published: rspProd must lie in [rspCons, reqProdPushed].
    if (ringDistance(prod, this.rspCons) > ringDistance(this.reqProdPushed, this.rspCons)) {
      this.latch(RingFault.RESPONSE_PROD_OVERFLOW);
      return 0;
    }
    this.rspProdSeen = prod;
    return ringDistance(prod, this.rspCons);
  }

  /**
   * Copy the next response into `into` (at least slotSize bytes, private
   * memory). False when there is none or the ring is faulted.
   */
  takeResponse(into: Uint8Array): boolean {
    if (this.rspCons === this.rspProdSeen && this.unconsumedResponses() === 0) return false;
    if (this.faultCode !== RingFault.NONE) return false;
    // RING_COPY_RESPONSE: nothing reads the shared slot after this copy.
    into.set(this.responseViews[this.rspCons & this.v.mask]!);
    this.rspCons = ringAdvance(this.rspCons, 1);
    if (this.ids !== undefined && !this.ids.complete(slotId(into))) {
      this.latch(RingFault.RESPONSE_ID_NOT_IN_FLIGHT);
      return false;
    }
    return true;
  }

  /** Cheap check for a waiter: responses ready, or a fault to report. */
  hasPending(): boolean {
    return (
      this.faultCode !== RingFault.NONE || this.rspCons !== this.rspProdSeen || this.unconsumedResponses() > 0
    );
  }

  /**
   * RING_FINAL_CHECK_FOR_RESPONSES: ask to be notified of the next response,
   * then look once more. True means do not sleep.
   */
  armAndCheck(): boolean {
    if (this.hasPending()) return true;
    Atomics.store(this.h, kRspEvent, ringAdvance(this.rspCons, 1) | 0);
    return this.hasPending();
  }

  /** Latch a fault found by a layer above (e.g. an impossible conn-ring event). */
  latch(fault: RingFault): void {
    if (this.faultCode !== RingFault.NONE) return;
    this.faultCode = fault;
    Atomics.compareExchange(this.h, kError, 0, fault);
  }

  /** The fault either end latched in shared memory. */
  sharedFault(): number {
    return Atomics.load(this.h, kError);
  }

  get generation(): number {
    return Atomics.load(this.h, kGeneration);
  }

  /**
   * Start the ring afresh (the owner's recovery after a fault or a backend
   * restart). The backend must be stopped or reset too; in-flight ids are
   * forgotten and returned so the caller can fail their URBs.
   */
  reset(initialIndex = 0): number[] {
    initRingHeader(this.h, initialIndex);
    Atomics.add(this.h, kGeneration, 1);
    this.attach();
    return this.ids?.reset() ?? [];
  }
}
