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
 */
import { GrantTableOwner } from "../dma-map/grant-table.js";
import { GuestMemory } from "../dma-map/guest-memory.js";
import { type DomId, domId, FRAME_SIZE, type GrantRef, type GuestFrame } from "../dma-map/types.js";
import { type ControllerHandles, spinLimiterOf, URB_RING_GEOMETRY } from "../engine/handles.js";
import { CONN_RING_SLOTS, ConnFront } from "../rings/conn-ring.js";
import { Doorbell } from "../rings/doorbell.js";
import { RingFault, ringFaultMessage } from "../rings/faults.js";
import { FrontRing } from "../rings/front-ring.js";
import { IdPool } from "../rings/id-pool.js";
import { ServiceLoop, type ServiceTarget } from "../rings/service-loop.js";
import { AdaptiveSpin } from "../rings/spin.js";
import { readS32, readU32 } from "../urb/bytes.js";
import { encodeIndirectSegments, encodeRequest } from "../urb/codec.js";
import { readIsoPacketResult, writeIsoPacket } from "../urb/iso.js";
import {
  kRspActualLength,
  kRspErrorCount,
  kRspId,
  kRspStartFrame,
  kRspStatus,
  SEGMENT_SIZE,
  URB_RESPONSE_SIZE,
} from "../urb/layout.js";
import { MAX_INLINE_SEGMENTS } from "../urb/limits.js";
import {
  describeStatus,
  ECONNRESET,
  EINVAL,
  ENODEV,
  ENOENT,
  ESHUTDOWN,
  OK,
  statusFromPeer,
  statusText,
  type UrbStatus,
} from "../urb/status.js";
import {
  type DevAddr,
  Direction,
  type PortNum,
  pipeTypeOf,
  type UrbBuffer,
  type UrbId,
} from "../urb/types.js";
import { isSetAddress, portResetSetup } from "../usb/index.js";
import { InvalidOptionError, registerErrorClass, UsbvirtError } from "../util/errors.js";
import { RequestScratch, type ScratchDataRequest } from "./request-scratch.js";
import { RootHub } from "./root-hub.js";
import { ScratchFrames } from "./scratch.js";
import type {
  BackendLossReason,
  BufferSegment,
  ControllerEventName,
  ControllerEvents,
  ControllerOptions,
  ControllerStats,
  IsoPacketResult,
  PortChange,
  PortStatus,
  UnlinkTarget,
  Urb,
  UrbCallback,
  UrbCompletion,
} from "./types.js";
import { Phase, UrbRecord } from "./urb-record.js";
import {
  bufferLengthOf,
  checkUrb,
  framesSpanned,
  grantsNeeded,
  isoDescriptorFrames,
  type UrbLimits,
} from "./validate.js";

/**
 * URB ring slots data URBs may not take: kept for unlinks. Without them a ring full of URBs the device
 * never completes (interrupt INs on an idle keyboard) could never be cancelled: the unlink needs a slot.
 */
export const UNLINK_RESERVED_SLOTS = 8;

/** Entries above this in the pending array trigger a compaction (amortised O(1) dequeue). */
const PENDING_COMPACT_AT = 1024;

/** A port reset that did not complete with status 0. */

/** The keep-alive timer of a started controller fires this rarely (it only holds the thread open). */
const KEEP_ALIVE_INTERVAL_MS = 1 << 30;
export class PortResetError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_PORT_RESET";
  constructor(
    readonly port: PortNum,
    readonly status: UrbStatus,
  ) {
    super("ERR_USBVIRT_PORT_RESET", `reset of port ${port} failed: ${statusText(status)}`);
  }
}
registerErrorClass(PortResetError);

/** A lifecycle call made in the wrong state (backendReady while connected, …). */
export class ControllerStateError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_CONTROLLER_STATE";
  constructor(message: string) {
    super("ERR_USBVIRT_CONTROLLER_STATE", message);
  }
}
registerErrorClass(ControllerStateError);

/** A URB without a buffer reads as this (shared: no empty array per URB). */
const NO_SEGMENTS: readonly BufferSegment[] = Object.freeze([]);

function failure(status: UrbStatus, detail?: string): UrbCompletion {
  return detail === undefined
    ? { status, actualLength: 0, startFrame: 0, errorCount: 0 }
    : { status, actualLength: 0, startFrame: 0, errorCount: 0, detail };
}

/** A listener registered with `once`, remembering the caller's function so `off` can find it. */
type OnceWrapper = ((...args: never[]) => void) & { readonly listener: (...args: never[]) => void };

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
  /** Private copy of each response slot (RING_COPY_RESPONSE). */
  private readonly copy: Uint8Array;
  /** Ring id → the record holding it. */
  private readonly inFlight: (UrbRecord | undefined)[];
  /**
   * URB object → its latest record, for unlink by handle and the double-submit check. Never deleted: the
   * record's `delivered` says whether the URB is outstanding, and a resubmit of the same object reuses the
   * record (no record and no map insert per URB on the hot path; a dropped URB takes its entry with it).
   */
  private readonly records = new WeakMap<Urb, UrbRecord>();
  /** The request objects trySend fills and encodes (none allocated per URB). */
  private readonly scratchRequest = new RequestScratch();
  /** FIFO pending queue; entries before `pendingHead` are done, entries not PENDING are skipped. */
  private pending: UrbRecord[] = [];
  private pendingHead = 0;
  private pendingLive = 0;
  private connected = true;
  /** Set at backend loss: the shared rings hold the dead backend's state until re-initialised. */
  private ringsNeedReset = false;
  private polling = false;
  /** Depth of batch() calls: requests committed inside one are published when the outermost ends. */
  private batching = 0;
  /** Requests committed during a poll or batch, published once at its end (one push and at most one ring). */
  private publishDeferred = false;
  private readonly listeners = new Map<ControllerEventName, Set<(...args: never[]) => void>>();

  // Service loop (src/rings/service-loop.ts) and what it serves: this controller's two rings.
  private readonly serviceLoop: ServiceLoop;
  private loop: Promise<void> | null = null;
  private keepAlive: NodeJS.Timeout | undefined;

  // Statistics.
  private submitted = 0;
  private completed = 0;
  private bytes = 0;
  private unlinksSent = 0;
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
    this.copy = new Uint8Array(URB_RESPONSE_SIZE);
    this.inFlight = new Array<UrbRecord | undefined>(slots).fill(undefined);
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
    const target: ServiceTarget = {
      // Looked up on each call: a VMM (or a test) may wrap poll.
      poll: () => this.poll(),
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
      target,
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
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as (...args: never[]) => void);
    return this;
  }

  /** Like `on`, for the next event only: the listener is removed before it runs (`off` removes it too). */
  once<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): this {
    const wrapper: OnceWrapper = Object.assign(
      (...args: unknown[]) => {
        this.listeners.get(event)?.delete(wrapper);
        (listener as (...a: unknown[]) => void)(...args);
      },
      { listener: listener as (...args: never[]) => void },
    );
    return this.on(event, wrapper as unknown as ControllerEvents[E]);
  }

  off<E extends ControllerEventName>(event: E, listener: ControllerEvents[E]): this {
    const set = this.listeners.get(event);
    if (set === undefined || set.delete(listener as (...args: never[]) => void)) return this;
    for (const l of set) {
      if ((l as Partial<OnceWrapper>).listener === listener) {
        set.delete(l);
        break;
      }
    }
    return this;
  }

  private emit<E extends ControllerEventName>(event: E, ...args: Parameters<ControllerEvents[E]>): void {
    const set = this.listeners.get(event);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        (listener as (...a: Parameters<ControllerEvents[E]>) => void)(...args);
      } catch (error) {
        this.reportCallbackError(error, event === "callbackError");
      }
    }
  }

  /** A user callback threw: tell callbackError listeners, or surface it as an uncaught error. */
  private reportCallbackError(error: unknown, fromErrorListener = false): void {
    const set = this.listeners.get("callbackError");
    if (fromErrorListener || set === undefined || set.size === 0) {
      // Like an EventEmitter without an 'error' listener: do not swallow it, but keep our state intact.
      queueMicrotask(() => {
        throw error;
      });
      return;
    }
    this.emit("callbackError", error);
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

  private emitPort(port: PortNum): void {
    if (this.listeners.get("portChange")?.size) this.emit("portChange", this.hub.status(port));
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
      record.phase = Phase.OFF;
      this.pendingLive--;
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
    if ((this.pendingLive === 0 || record.urb === null) && this.trySend(record)) {
      this.publish();
      return;
    }
    record.phase = Phase.PENDING;
    this.pending.push(record);
    this.pendingLive++;
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

  /** Send pending records in order until one cannot go. Bounded by the queue length. */
  private flushPending(): void {
    let sent = false;
    const queue = this.pending;
    let blocked = false;
    while (this.pendingHead < queue.length && this.connected) {
      const record = queue[this.pendingHead]!;
      if (record.phase === Phase.PENDING) {
        if (!this.trySend(record)) {
          blocked = true;
          break;
        }
        this.pendingLive--;
        sent = true;
      }
      queue[this.pendingHead++] = undefined as unknown as UrbRecord;
    }
    // Unlinks behind a data URB that cannot go yet overtake it (bounded by the queue length).
    for (let i = this.pendingHead; blocked && i < queue.length && this.connected; i++) {
      const record = queue[i]!;
      if (record.phase !== Phase.PENDING || record.urb !== null) continue;
      if (!this.trySendUnlink(record)) break;
      this.pendingLive--;
      sent = true;
    }
    if (this.pendingHead === queue.length) {
      queue.length = 0;
      this.pendingHead = 0;
    } else if (this.pendingHead >= PENDING_COMPACT_AT) {
      this.pending = queue.slice(this.pendingHead);
      this.pendingHead = 0;
    }
    if (sent) this.publish();
  }

  /**
   * Put one record on the ring, or return false (nothing taken) when a slot,
   * an id, grants or scratch frames are missing. Unlinks whose target is no
   * longer on the ring are answered -ENOENT here and count as sent.
   */
  private trySend(record: UrbRecord): boolean {
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
    const scratch = this.scratchRequest;
    const wire = scratch.segments;
    for (let i = 0; i < count; i++) {
      const { offset, length } = segments[i]!;
      const ref = this.grants.grant(
        this.backendDomid,
        Math.floor(offset / FRAME_SIZE) as GuestFrame,
        framesSpanned(offset, length),
        readonly,
      );
      record.grants.push(ref);
      const w = wire[i]!;
      w.ref = ref;
      w.offset = offset % FRAME_SIZE;
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

  private trySendUnlink(record: UrbRecord): boolean {
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
    for (let n = 0; n < slots && this.connected; n++) {
      if (!this.ring.takeResponse(this.copy)) break;
      handled++;
      this.onResponse();
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
    this.flushPending();
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
    const urbFault = this.ring.fault !== RingFault.NONE ? this.ring.fault : this.ring.sharedFault();
    const connFault =
      this.conn.ring.fault !== RingFault.NONE ? this.conn.ring.fault : this.conn.ring.sharedFault();
    if (urbFault === 0 && connFault === 0) return false;
    const ring = urbFault !== 0 ? "urb" : "conn";
    const fault = urbFault !== 0 ? urbFault : connFault;
    const reason: BackendLossReason = {
      cause: "ring-fault",
      message: `${ring} ring fault: ${ringFaultMessage(fault)}`,
      ring,
      fault,
    };
    this.emit("fault", reason);
    this.loseBackend(reason);
    return true;
  }

  /** Handle the response in `this.copy`; its id was checked in flight by FrontRing. */
  private onResponse(): void {
    const copy = this.copy;
    const id = readU32(copy, kRspId);
    const record = this.inFlight[id];
    if (record === undefined) {
      // The id pool said in flight but we hold no record: never trust this ring again.
      this.ring.latch(RingFault.PEER_PROTOCOL_VIOLATION);
      return;
    }
    const status = statusFromPeer(readS32(copy, kRspStatus));
    if (record.urb === null) {
      this.inFlight[id] = undefined;
      record.phase = Phase.OFF;
      record.id = -1;
      record.unlinkDone!(status);
      return;
    }
    // The backend must have unmapped everything before answering (xen-hcd: a grant still in use is a protocol error).
    if (!this.revokeGrants(record)) {
      this.ring.latch(RingFault.PEER_PROTOCOL_VIOLATION);
      return;
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
      return;
    }

    const urb = record.urb;
    const actual = Math.min(readU32(copy, kRspActualLength), record.bufferLength);
    const startFrame = readU32(copy, kRspStartFrame);
    const errorCount =
      isoPackets === undefined
        ? readU32(copy, kRspErrorCount)
        : Math.min(readU32(copy, kRspErrorCount), isoPackets.length);
    if (status === OK && urb.type === "control") this.noteControlSuccess(urb);
    const completion: UrbCompletion =
      isoPackets === undefined
        ? { status, actualLength: actual, startFrame, errorCount }
        : { status, actualLength: actual, startFrame, errorCount, isoPackets };
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
    const queue = this.pending;
    for (let i = this.pendingHead; i < queue.length; i++) {
      const record = queue[i]!;
      if (record.phase === Phase.PENDING && record.urb !== null && record.urb.port === port) {
        record.phase = Phase.OFF;
        this.pendingLive--;
        victims.push(record);
      }
    }
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
    for (let id = 0; id < this.inFlight.length; id++) {
      const record = this.inFlight[id];
      if (record === undefined) continue;
      this.inFlight[id] = undefined;
      record.phase = Phase.OFF;
      record.id = -1;
      record.grants.length = 0;
      if (record.urb === null) unlinks.push(record.unlinkDone!);
      else if (!record.delivered) victims.push(record);
    }
    for (let i = this.pendingHead; i < this.pending.length; i++) {
      const record = this.pending[i]!;
      if (record.phase !== Phase.PENDING) continue;
      record.phase = Phase.OFF;
      if (record.urb === null) unlinks.push(record.unlinkDone!);
      else if (!record.delivered) victims.push(record);
    }
    this.pending = [];
    this.pendingHead = 0;
    this.pendingLive = 0;
    // The dead backend's map counts never drop: take every grant back, not only the ones we track.
    for (let ref = 0; ref < this.grants.entries; ref++) {
      if (this.grants.isGranted(ref as GrantRef)) this.grants.forceRevoke(ref as GrantRef);
    }
    this.scratch.releaseAll();
    const ports = this.hub.disconnectAll();

    // State is consistent now; callbacks may re-enter (their submits get -ESHUTDOWN).
    for (const port of ports) this.emitPort(port);
    for (const record of victims) this.deliver(record, failure(ESHUTDOWN, reason.message));
    for (const done of unlinks) done(ESHUTDOWN);
    this.emit("backendLost", reason);
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
    this.emit("backendReady");
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
      this.reportCallbackError(error);
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
      pending: this.pendingLive,
      inFlight: this.connected ? this.ring.inFlight : 0,
      bytes: this.bytes,
      unlinksSent: this.unlinksSent,
      backendLosses: this.backendLosses,
    };
  }
}
