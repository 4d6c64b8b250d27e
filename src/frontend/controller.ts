/**
 * VirtualHostController: the guest-facing virtual USB host controller, the
 * usbfront half of Xen pvUSB (Linux drivers/usb/host/xen-hcd.c) on a
 * SharedArrayBuffer ring. It owns the frontend ends of the URB ring and the
 * conn ring, the grant table and the scratch frames; it runs on whichever
 * thread builds it from ControllerHandles (the VMM's main thread or a worker).
 *
 * Submit: validate → (pending FIFO while the ring, ids, grants or scratch run
 * out) → grant each buffer segment (read-only for OUT, writable for IN), write
 * an indirect segment page and/or iso descriptor array into scratch frames →
 * encode into the slot → publish, ring the backend only when it asked.
 * Complete: copy the slot (FrontRing), revoke every grant (a grant the backend
 * still holds is a protocol error), read iso results, clamp lengths, update
 * the root hub (SET_ADDRESS, port reset), call back exactly once.
 * Backend loss (control plane or a latched ring fault): everything outstanding
 * completes with -ESHUTDOWN, grants are force-revoked, ports disconnect; then
 * backendReady() resets the rings and the same object carries on.
 *
 * Ring initialisation: only the frontend initialises shared ring state. It
 * does so when the old backend is known dead: in backendLost() (the control
 * plane's word), so a new backend can attach at once; or, when the loss was a
 * fault the controller found itself (the faulty backend may still run), only
 * once backendLost() or backendReady() is called.
 *
 * This file is the controller's public face and its orchestration; the parts
 * live beside it, one seam each: urb-sender.ts (the submit path's ring
 * writer), pending-queue.ts (the FIFO behind it), response-reader.ts (the
 * completion path's ring reader), backend-loss.ts (what loss takes back),
 * root-hub.ts, listeners.ts (events), controller-errors.ts; the service loop
 * is the shared one in src/rings/service-loop.ts.
 */

import { type ControllerHandles, spinLimiterOf, URB_RING_GEOMETRY } from "../connection/handles.js";
import { GrantTableOwner } from "../dma-map/grant-table.js";
import { GuestMemory } from "../dma-map/guest-memory.js";
import { type DomId, domId } from "../dma-map/types.js";
import { CONN_RING_SLOTS, ConnFront } from "../rings/conn-ring.js";
import { Doorbell, type Waitable } from "../rings/doorbell.js";
import { FrontRing } from "../rings/front-ring.js";
import { IdPool } from "../rings/id-pool.js";
import { ServiceLoop } from "../rings/service-loop.js";
import { AdaptiveSpin } from "../rings/spin.js";
import { URB_RESPONSE_SIZE } from "../urb/layout.js";
import { MAX_STREAM_ID } from "../urb/limits.js";
import {
  describeStatus,
  ECONNRESET,
  EINVAL,
  ENODEV,
  ENOENT,
  ESHUTDOWN,
  OK,
  type UrbStatus,
} from "../urb/status.js";
import type { DevAddr, PortNum, UrbId } from "../urb/types.js";
import {
  allocStreamsSetup,
  ENDPOINT_DIR_IN,
  ENDPOINT_NUMBER_MASK,
  freeStreamsSetup,
  isSetAddress,
  portResetSetup,
  type SetupPacket,
} from "../usb/index.js";
import { InvalidOptionError } from "../util/errors.js";
import { forceRevokeAll, ringFaultReason, takeAllInFlight } from "./backend-loss.js";
import { ControllerStateError, PortResetError } from "./controller-errors.js";
import { ControllerListeners } from "./listeners.js";
import { PendingQueue } from "./pending-queue.js";
import { failure, ResponseReader, Taken } from "./response-reader.js";
import { RootHub } from "./root-hub.js";
import { ScratchFrames } from "./scratch.js";
import type {
  BackendLossReason,
  ControllerEventName,
  ControllerEvents,
  ControllerOptions,
  ControllerStats,
  PortChange,
  PortStatus,
  UnlinkTarget,
  Urb,
  UrbCallback,
  UrbCompletion,
} from "./types.js";
import { Phase, UrbRecord } from "./urb-record.js";
import { UrbSender } from "./urb-sender.js";
import { bufferLengthOf, checkUrb, type UrbLimits } from "./validate.js";

export { ControllerStateError, PortResetError } from "./controller-errors.js";
export { UNLINK_RESERVED_SLOTS } from "./urb-sender.js";

/** The keep-alive timer of a started controller fires this rarely (it only holds the thread open). */
const KEEP_ALIVE_INTERVAL_MS = 1 << 30;

export class VirtualHostController {
  readonly memory: GuestMemory;
  readonly grants: GrantTableOwner;
  readonly ports: number;
  private readonly backendDomid: DomId;
  private readonly ring: FrontRing;
  private readonly ids: IdPool;
  private readonly conn: ConnFront;
  private readonly frontendBell: Doorbell;
  private readonly backendBell: Doorbell;
  private readonly hub: RootHub;
  private readonly scratch: ScratchFrames;
  private readonly limits: UrbLimits;
  /** Ring id → the record holding it: the sender fills it, the reader and backend loss empty it. */
  private readonly inFlight: (UrbRecord | undefined)[];
  /** The submit path's ring writer. */
  private readonly sender: UrbSender;
  /** The completion path's ring reader. */
  private readonly reader: ResponseReader;
  /**
   * URB object → its latest record, for unlink by handle and the double-submit check. Never deleted: the
   * record's `delivered` says whether the URB is outstanding, and a resubmit of the same object reuses the
   * record (no record and no map insert per URB on the hot path; a dropped URB takes its entry with it).
   */
  private readonly records = new WeakMap<Urb, UrbRecord>();
  /** URBs and unlinks waiting for the ring, ids, grants or scratch frames (FIFO). */
  private readonly pending = new PendingQueue();
  private connected = true;
  /** Set at backend loss: the shared rings hold the dead backend's state until re-initialised. */
  private ringsNeedReset = false;
  private polling = false;
  /** Depth of batch() calls: requests committed inside one are published when the outermost ends. */
  private batching = 0;
  /** Requests committed during a poll or batch, published once at its end (one push and at most one ring). */
  private publishDeferred = false;
  private readonly listeners = new ControllerListeners();

  // Service loop (src/rings/service-loop.ts) and what it serves: this controller's two rings.
  private readonly serviceLoop: ServiceLoop;
  private loop: Promise<void> | null = null;
  private keepAlive: NodeJS.Timeout | undefined;

  // Statistics.
  private submitted = 0;
  private completed = 0;
  private bytes = 0;
  private backendLosses = 0;
  private readonly errorCounts = new Map<number, number>();

  constructor(handles: ControllerHandles, options: ControllerOptions = {}) {
    if (typeof handles !== "object" || handles === null) {
      throw new InvalidOptionError("VirtualHostController needs the ControllerHandles of a connection");
    }
    this.hub = new RootHub(handles.ports);
    this.ports = handles.ports;
    domId(handles.frontendDomid);
    this.backendDomid = domId(handles.backendDomid);
    this.memory = new GuestMemory({ regions: handles.memory });
    this.grants = new GrantTableOwner({ storage: handles.grantTable, memory: this.memory });
    this.scratch = new ScratchFrames(this.memory, handles.scratchFirstFrame, handles.scratchFrames);
    this.frontendBell = new Doorbell(handles.frontendBell);
    this.backendBell = new Doorbell(handles.backendBell);
    // Geometry comes from the connection's definition, never from shared memory; FrontRing checks the size.
    const slots = URB_RING_GEOMETRY.slots;
    this.ids = new IdPool(slots);
    this.ring = new FrontRing(handles.urbRing, URB_RING_GEOMETRY, {
      ids: this.ids,
      responseBytes: URB_RESPONSE_SIZE,
    });
    this.conn = new ConnFront(handles.connRing, handles.ports);
    this.inFlight = new Array<UrbRecord | undefined>(slots).fill(undefined);
    const parts = {
      ring: this.ring,
      ids: this.ids,
      grants: this.grants,
      memory: this.memory,
      scratch: this.scratch,
      backendDomid: this.backendDomid,
      inFlight: this.inFlight,
    };
    this.sender = new UrbSender(parts);
    this.reader = new ResponseReader(parts);
    this.limits = {
      ports: handles.ports,
      memory: this.memory,
      scratch: this.scratch,
      grantEntries: this.grants.entries,
    };

    const pollsPerYield = options.pollsPerYield ?? 32;
    if (!Number.isInteger(pollsPerYield) || pollsPerYield < 1) {
      throw new InvalidOptionError(
        `options.pollsPerYield must be a positive integer, got ${String(pollsPerYield)}`,
      );
    }
    const limiter = options.spinLimiter ?? spinLimiterOf(handles);
    const spin = new AdaptiveSpin({
      maxSpinMicros: options.maxSpinMicros ?? 50,
      ...(limiter === undefined ? {} : { limiter }),
      ...(handles.contendedSpinMicros === undefined
        ? {}
        : { contendedSpinMicros: handles.contendedSpinMicros }),
    });
    const waitable: Waitable = {
      hasPending: () => this.connected && this.ringsHaveWork(),
      armAndCheck: () => {
        if (!this.connected) return false;
        // Arm both rings before deciding, so an answer on either wakes us.
        let work = this.ring.armAndCheck();
        work = this.conn.ring.armAndCheck() || work;
        return work || this.ring.sharedFault() !== 0 || this.conn.ring.sharedFault() !== 0;
      },
    };
    // Spin between turns of the event loop, never in a tight loop: this thread is the VMM's, and the work
    // that ends the wait may come from its own microtasks and timers as well as from the backend.
    this.serviceLoop = new ServiceLoop({
      // Looked up on each call: a VMM (or a test) may wrap poll.
      poll: () => this.poll(),
      waitable,
      bell: this.frontendBell,
      spin,
      pollsPerYield,
      turning: () => true,
    });

    // The rings were initialised by whoever created the handles; post the conn ring's requests.
    if (this.conn.postAll()) this.backendBell.ring();
  }

  // ---------------------------------------------------------------- events

  on<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): this {
    this.listeners.on(event, listener);
    return this;
  }

  /** Like `on`, for the next event only: the listener is removed before it runs (`off` removes it too). */
  once<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): this {
    this.listeners.once(event, listener);
    return this;
  }

  off<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): this {
    this.listeners.off(event, listener);
    return this;
  }

  // ---------------------------------------------------------------- root hub

  portStatus(port: number): PortStatus {
    return this.hub.status(this.hub.checkPort(port));
  }

  clearPortChange(port: number, which: PortChange): void {
    if (which !== "connection" && which !== "enable" && which !== "reset") {
      throw new InvalidOptionError(`which must be connection, enable or reset, got ${String(which)}`);
    }
    this.hub.clearChange(this.hub.checkPort(port), which);
  }

  /** ClearPortFeature(PORT_ENABLE): local to the root hub, nothing goes on the wire. */
  disablePort(port: number): void {
    const p = this.hub.checkPort(port);
    if (this.hub.disable(p)) this.emitPort(p);
  }

  /**
   * SetPortFeature(PORT_RESET), sent as USB/IP does: a control OUT URB
   * {0x23, SET_FEATURE, PORT_RESET, wIndex = port, wLength 0} to endpoint 0
   * at the port's current address. Resolves when it completes with 0 (port
   * enabled, address 0, C_RESET set); rejects with PortResetError otherwise.
   */
  resetPort(port: number): Promise<void> {
    const p = this.hub.checkPort(port);
    const urb: Urb = {
      type: "control",
      port: p,
      device: this.hub.address(p),
      endpoint: 0 as Urb["endpoint"],
      directionIn: false,
      setup: portResetSetup(p),
    };
    this.hub.resetStarted(p);
    this.emitPort(p);
    return new Promise((resolve, reject) => {
      this.submitWithCallback(urb, (completion) => {
        // Runs once on every path (answered, disconnected, backend lost, refused).
        this.hub.resetCompleted(p, completion.status === OK);
        this.emitPort(p);
        if (completion.status === OK) resolve();
        else reject(new PortResetError(p, completion.status));
      });
    });
  }

  /**
   * Give bulk endpoint `endpointAddress` of the device on `port` stream ids 1..`streams` (what an xHCI does
   * with its stream contexts; usbredir's alloc_bulk_streams). Sent as usbvirt's ALLOC_STREAMS port request
   * (src/usb/requests.ts StreamsRequest); resolves with its status: OK, or -EINVAL when the endpoint offers
   * fewer streams or the device has none.
   */
  async allocStreams(port: number, endpointAddress: number, streams: number): Promise<UrbStatus> {
    if (!Number.isInteger(streams) || streams < 1 || streams > MAX_STREAM_ID)
      throw new InvalidOptionError(`streams must be an integer 1..${MAX_STREAM_ID}, got ${streams}`);
    return this.streamsRequest(port, allocStreamsSetup(checkEndpointAddress(endpointAddress), streams));
  }

  /** The streams of `endpointAddress` go (usbredir's free_bulk_streams); transfers queued on them end. */
  async freeStreams(port: number, endpointAddress: number): Promise<UrbStatus> {
    return this.streamsRequest(port, freeStreamsSetup(checkEndpointAddress(endpointAddress)));
  }

  private async streamsRequest(port: number, setup: SetupPacket): Promise<UrbStatus> {
    const p = this.hub.checkPort(port);
    const completion = await this.submit({
      type: "control",
      port: p,
      device: this.hub.address(p),
      endpoint: 0 as Urb["endpoint"],
      directionIn: false,
      setup,
    });
    return completion.status;
  }

  private emitPort(port: PortNum): void {
    if (this.listeners.has("portChange")) this.listeners.emit("portChange", this.hub.status(port));
  }

  // ---------------------------------------------------------------- submit

  /** Submit a URB; resolves with its completion (never rejects: USB outcomes are values). */
  submit(urb: Urb): Promise<UrbCompletion> {
    return new Promise((resolve) => this.submitWithCallback(urb, resolve));
  }

  /**
   * Submit a URB; `callback` runs exactly once with its completion, never
   * synchronously inside this call. Allocates no promise (hot path).
   */
  submitWithCallback(urb: Urb, callback: UrbCallback): void {
    this.submitted++;
    if (typeof callback !== "function") throw new InvalidOptionError("submitWithCallback needs a callback");
    // A non-object urb finds nothing here (WeakMap.get) and checkUrb refuses it.
    const previous = this.records.get(urb);
    const refusal =
      previous !== undefined && !previous.delivered
        ? { status: EINVAL, detail: "this URB object is already submitted and not yet completed" }
        : checkUrb(urb, this.limits);
    if (refusal !== null) {
      this.invokeLater(callback, failure(refusal.status, refusal.detail));
      return;
    }
    if (!this.connected) {
      this.invokeLater(callback, failure(ESHUTDOWN, "the backend is gone"));
      return;
    }
    let record: UrbRecord;
    if (previous?.reusable === true) {
      record = previous;
      record.reuse(callback, bufferLengthOf(urb));
    } else {
      // First submit of this object, or its last record is still held (early completion awaiting its answer).
      record = UrbRecord.data(urb, callback, bufferLengthOf(urb));
      this.records.set(urb, record);
    }
    this.enqueueOrSend(record);
  }

  /**
   * Cancel a URB (by its object or its ring id). Resolves with the unlink
   * request's answer: 0 when the target was cancelled or had just finished
   * (its own completion comes first, exactly once), -ENOENT when it was not
   * outstanding, -ESHUTDOWN when the backend went away. A URB still in the
   * pending queue never reaches the ring: it completes at once with
   * -ECONNRESET and this resolves 0.
   */
  unlink(target: UnlinkTarget): Promise<UrbStatus> {
    const record =
      typeof target === "number"
        ? Number.isInteger(target) && target >= 0 && target < this.inFlight.length
          ? this.inFlight[target]
          : undefined
        : this.records.get(target);
    if (record === undefined || record.urb === null || record.delivered || !this.connected) {
      return Promise.resolve(ENOENT);
    }
    if (record.phase === Phase.PENDING) {
      this.pending.withdraw(record);
      this.deliverLater(record, failure(ECONNRESET, "unlinked while waiting in the pending queue"));
      return Promise.resolve(OK);
    }
    return new Promise((resolve) => this.enqueueOrSend(UrbRecord.unlink(record, resolve)));
  }

  /** The ring id a submitted URB currently holds, if it is on the ring. */
  idOf(urb: Urb): UrbId | undefined {
    const record = this.records.get(urb);
    return record !== undefined && !record.delivered && record.phase === Phase.IN_FLIGHT
      ? (record.id as UrbId)
      : undefined;
  }

  private enqueueOrSend(record: UrbRecord): void {
    // FIFO: no data URB overtakes one already waiting. An unlink may (its target is already on the ring),
    // into the slots kept for unlinks.
    if ((this.pending.live === 0 || record.urb === null) && this.sender.trySend(record)) {
      this.publish();
      return;
    }
    this.pending.push(record);
  }

  /**
   * Run `submits` (any submitWithCallback / unlink calls) and publish what they committed to the
   * backend once at the end, with at most one doorbell: a network server hands the engine every PDU
   * one socket read brought this way. Nothing is delayed past the call's return.
   */
  batch(submits: () => void): void {
    this.batching++;
    try {
      submits();
    } finally {
      this.batching--;
      if (this.batching === 0 && !this.polling && this.publishDeferred) {
        this.publishDeferred = false;
        if (this.connected) this.publish();
      }
    }
  }

  private publish(): void {
    // Inside poll() (completion callbacks resubmitting) or batch(): publish once when it is done.
    if (this.polling || this.batching > 0) {
      this.publishDeferred = true;
      return;
    }
    if (this.ring.pushRequests()) this.backendBell.ring();
  }

  // ---------------------------------------------------------------- service

  /**
   * Drain responses and conn events, then send what the pending queue can.
   * Returns the number of responses and events handled. For VMMs that drive
   * the controller themselves (start() calls it from its loop).
   */
  poll(): number {
    if (!this.connected || this.polling) return 0;
    this.polling = true;
    try {
      return this.pollOnce();
    } finally {
      this.polling = false;
      if (this.publishDeferred && this.batching === 0) {
        this.publishDeferred = false;
        if (this.connected) this.publish();
      }
    }
  }

  private pollOnce(): number {
    let handled = 0;
    const slots = this.inFlight.length;
    // Bounded: at most one ring's worth per poll (rspProd is checked against what we published).
    const reader = this.reader;
    for (let n = 0; n < slots && this.connected; n++) {
      const taken = reader.take();
      if (taken === Taken.NONE) break;
      handled++;
      if (taken === Taken.COMPLETED) this.onCompleted(reader.record!, reader.completion!);
    }
    if (!this.connected || this.checkFaults()) return handled;

    let events = 0;
    for (; events < CONN_RING_SLOTS && this.connected; events++) {
      const event = this.conn.takeEvent();
      if (event === null) break;
      this.onConnEvent(event.port as PortNum, event.speed);
    }
    handled += events;
    if (!this.connected || this.checkFaults()) return handled;
    // Give the backend its conn-ring requests back (xen-hcd re-posts each consumed one).
    if (events > 0 && this.conn.postAll()) this.backendBell.ring();
    if (this.pending.flush(this.sender)) this.publish();
    return handled;
  }

  private ringsHaveWork(): boolean {
    return (
      this.ring.hasPending() ||
      this.conn.ring.hasPending() ||
      this.ring.sharedFault() !== 0 ||
      this.conn.ring.sharedFault() !== 0
    );
  }

  /** A latched fault on either ring (ours or the backend's) ends the connection. */
  private checkFaults(): boolean {
    const reason = ringFaultReason(this.ring, this.conn.ring);
    if (reason === null) return false;
    this.listeners.emit("fault", reason);
    this.loseBackend(reason);
    return true;
  }

  /** A URB completed on the ring (ResponseReader freed what it held): update the root hub, tell the owner. */
  private onCompleted(record: UrbRecord, completion: UrbCompletion): void {
    const urb = record.urb!;
    if (completion.status === OK && urb.type === "control") this.noteControlSuccess(urb);
    // Off the ring with nothing held: the callback may resubmit its URB on this same record.
    record.reusable = true;
    this.deliver(record, completion);
  }

  /** SET_ADDRESS is virtualised by the backend; the frontend learns the port's new address from its success. */
  private noteControlSuccess(urb: Extract<Urb, { type: "control" }>): void {
    const { setup } = urb;
    if (isSetAddress(setup)) {
      this.hub.setAddress(urb.port, (setup.wValue & 0x7f) as DevAddr);
      this.emitPort(urb.port);
    }
  }

  private onConnEvent(port: PortNum, speed: number): void {
    const kind = this.hub.connEvent(port, speed);
    if (kind === "disconnect") this.failPort(port, ENODEV, "the device on this port disconnected");
    if (kind !== "unchanged") this.emitPort(port);
  }

  /**
   * Complete every URB of `port` now. Pending ones leave the queue; ones on
   * the ring keep their id and grants until the backend answers them.
   */
  private failPort(port: PortNum, status: UrbStatus, detail: string): void {
    // Collect first: callbacks may submit, and what they submit now is not part of this disconnect.
    const victims: UrbRecord[] = [];
    this.pending.withdrawPort(port, victims);
    for (let id = 0; id < this.inFlight.length; id++) {
      const record = this.inFlight[id];
      if (record?.urb != null && record.urb.port === port && !record.delivered) victims.push(record);
    }
    for (const record of victims) this.deliver(record, failure(status, detail));
  }

  // ---------------------------------------------------------------- backend lifecycle

  /** True between construction/backendReady() and backend loss. */
  get isConnected(): boolean {
    return this.connected;
  }

  /**
   * The control plane says the backend is gone and will not touch shared
   * memory again (worker exited or terminated). Every in-flight and pending
   * URB completes with -ESHUTDOWN exactly once, every grant is force-revoked,
   * every port disconnects, and both rings are re-initialised so that a new
   * backend may attach to them. Idempotent.
   */
  backendLost(reason: string | { readonly message: string; readonly cause?: string } = "backend lost"): void {
    const message = typeof reason === "string" ? reason : String(reason?.message);
    this.loseBackend({ cause: "control-plane", message });
    // Only now is the old backend known dead: a fault found by the controller leaves the rings alone until then.
    if (this.ringsNeedReset) this.resetRings();
  }

  private loseBackend(reason: BackendLossReason): void {
    if (!this.connected) return;
    this.connected = false;
    this.ringsNeedReset = true;
    this.backendLosses++;
    const victims: UrbRecord[] = [];
    const unlinks: ((status: UrbStatus) => void)[] = [];
    takeAllInFlight(this.inFlight, victims, unlinks);
    this.pending.withdrawAll(victims, unlinks);
    forceRevokeAll(this.grants);
    this.scratch.releaseAll();
    const ports = this.hub.disconnectAll();

    // State is consistent now; callbacks may re-enter (their submits get -ESHUTDOWN).
    for (const port of ports) this.emitPort(port);
    for (const record of victims) this.deliver(record, failure(ESHUTDOWN, reason.message));
    for (const done of unlinks) done(ESHUTDOWN);
    this.listeners.emit("backendLost", reason);
  }

  /**
   * A new backend is running: re-post the conn ring and accept URBs again,
   * on this same object. The rings were re-initialised by backendLost(); if
   * the control plane skipped that (the loss was a fault the controller
   * found), they are re-initialised here and the backend must attach after
   * this returns (xenbus order: the frontend initialises, then "Initialised").
   */
  backendReady(): void {
    if (this.connected) {
      throw new ControllerStateError("backendReady() while connected: call backendLost() first");
    }
    if (this.ringsNeedReset) this.resetRings();
    this.connected = true;
    if (this.conn.postAll()) this.backendBell.ring();
    // Wake our own loop so it re-arms on the fresh rings.
    this.frontendBell.ring();
    this.listeners.emit("backendReady");
  }

  /** Re-initialise both shared rings (only the frontend does this) and forget their in-flight ids. */
  private resetRings(): void {
    this.ring.reset();
    this.conn.ring.reset();
    this.ringsNeedReset = false;
  }

  /**
   * Run the service loop on this thread (src/rings/service-loop.ts: poll, spin
   * between turns of the event loop, then park in Atomics.waitAsync on the
   * frontend doorbell). The event loop keeps running (it yields every
   * `pollsPerYield` busy polls). Idempotent.
   */
  start(): void {
    if (this.loop !== null) return;
    // A thread parked in Atomics.waitAsync is not kept alive by it: hold the
    // thread (a VMM's device-model worker, say) open until stop(), as a
    // listening socket would, so pending URBs can complete.
    this.keepAlive = setInterval(() => {}, KEEP_ALIVE_INTERVAL_MS);
    this.loop = this.serviceLoop.start().finally(() => {
      this.loop = null;
      clearInterval(this.keepAlive);
      this.keepAlive = undefined;
    });
  }

  /** True between start() and stop(): the service loop takes responses and port events. */
  get isRunning(): boolean {
    return this.loop !== null && this.serviceLoop.isRunning;
  }

  /** End the service loop; resolves once it has returned. */
  stop(): Promise<void> {
    const loop = this.loop;
    if (loop === null) return Promise.resolve();
    void this.serviceLoop.stop();
    return loop;
  }

  // ---------------------------------------------------------------- completion

  /** Tell the owner once; synchronous (called from poll, never from inside submit). */
  private deliver(record: UrbRecord, completion: UrbCompletion): void {
    if (record.delivered) return;
    record.delivered = true;
    const callback = record.callback!;
    // The record outlives the completion (bound to its URB): do not keep the owner's callback alive.
    record.callback = null;
    this.invoke(callback, completion);
  }

  /** Like deliver, but the callback runs in a microtask (the caller is inside a public API call). */
  private deliverLater(record: UrbRecord, completion: UrbCompletion): void {
    if (record.delivered) return;
    record.delivered = true;
    const callback = record.callback!;
    record.callback = null;
    this.invokeLater(callback, completion);
  }

  /**
   * invoke() in a microtask. Its own method so that no hot caller holds a closure: a function with one
   * allocates a context object on every call, whether or not the closure is made.
   */
  private invokeLater(callback: UrbCallback, completion: UrbCompletion): void {
    queueMicrotask(() => this.invoke(callback, completion));
  }

  private invoke(callback: UrbCallback, completion: UrbCompletion): void {
    this.completed++;
    this.bytes += completion.actualLength;
    if (completion.status !== OK) {
      this.errorCounts.set(completion.status, (this.errorCounts.get(completion.status) ?? 0) + 1);
    }
    try {
      callback(completion);
    } catch (error) {
      this.listeners.reportCallbackError(error);
    }
  }

  stats(): ControllerStats {
    const errors: Record<string, number> = {};
    for (const [status, count] of this.errorCounts) {
      errors[describeStatus(status)?.name ?? String(status)] = count;
    }
    return {
      submitted: this.submitted,
      completed: this.completed,
      errors,
      pending: this.pending.live,
      inFlight: this.connected ? this.ring.inFlight : 0,
      bytes: this.bytes,
      unlinksSent: this.sender.unlinksSent,
      backendLosses: this.backendLosses,
    };
  }
}

/** A bulk endpoint address: number 1..15, bit 7 for IN, nothing else. */
function checkEndpointAddress(address: number): number {
  const number = address & ENDPOINT_NUMBER_MASK;
  if (
    !Number.isInteger(address) ||
    (address & ~(ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK)) !== 0 ||
    number === 0
  )
    throw new InvalidOptionError(`endpointAddress must be 0x01..0x0f or 0x81..0x8f, got ${address}`);
  return address;
}
