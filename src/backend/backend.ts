/**
 * The backend of one connection (usbback; QEMU hw/usb/xen-usb.c is the model):
 * consumes the URB ring, copies and parses each request at the one gate,
 * routes it by port and device address, virtualises SET_ADDRESS, pins the
 * guest's grants, hands the transfer to the port's worker, and answers when
 * the port worker completes it. It trusts nothing from the frontend: a bad
 * request gets an error response, an impossible ring state latches a fault
 * and stops this connection only, and a failing port fails only its URBs.
 *
 * Unlink contract (exactly one completion per URB): if the target is in
 * flight, its own completion (with -ECONNRESET if the cancel won, its real
 * status otherwise) is answered first, then the unlink with 0; an unlink
 * whose target is not in flight is answered -ENOENT.
 */

import type { ControllerHandles } from "../connection/handles.js";
import { URB_RING_GEOMETRY } from "../connection/handles.js";
import { GrantMapper } from "../dma-map/grant-mapper.js";
import { GuestMemory } from "../dma-map/guest-memory.js";
import { type DomId, domId, type GrantRef } from "../dma-map/types.js";
import {
  PORT_RESPONSE_SIZE,
  PortResponse,
  readPortResponse,
  writePortCancel,
  writePortIsoPackets,
  writePortSubmit,
} from "../port/port-wire.js";
import { BackRing } from "../rings/back-ring.js";
import { ConnBack, type ConnEvent } from "../rings/conn-ring.js";
import { Doorbell, type Waitable } from "../rings/doorbell.js";
import { RingFault, ringFaultMessage } from "../rings/faults.js";
import { encodeResponse } from "../urb/codec.js";
import { ECONNRESET, ENODEV, ENOENT, ENOMEM, ESHUTDOWN, OK, type UrbStatus } from "../urb/status.js";
import { DEFAULT_DEV_ADDR, type DevAddr, type PortNum, type UnlinkUrb, type UrbId } from "../urb/types.js";
import { UsbSpeed } from "../usb/index.js";
import type { InFlightUrb, PortLink } from "./port-link.js";
import { type GateState, RequestGate, type ResolvedTransfer } from "./resolve.js";

/**
 * Requests taken per poll. The answers collected from the ports go out before
 * each batch is taken, so a bounded batch keeps the pipeline full: the
 * frontend refills while the rest of a deep queue is still here (Xen's
 * backends bound a batch the same way).
 */
const REQUESTS_PER_POLL = 16;

/** In-flight records kept for reuse: what the URB ring can hold, plus its unlinks. */
const MAX_SPARE_RECORDS = 2 * URB_RING_GEOMETRY.slots;

export interface PortStatsSnapshot {
  urbs: number;
  bytes: number;
  errors: number;
}

export interface BackendStats {
  requests: number;
  responses: number;
  rejected: number;
  unlinks: number;
  setAddress: number;
  grantFaults: number;
  inFlight: number;
  ringFault: number;
  ports: Record<number, PortStatsSnapshot>;
}

export type BackendEvent =
  | { readonly type: "ring-fault"; readonly fault: number; readonly message: string }
  /** `gone`: the device went away (unplugged, its URBs got -ENODEV), rather than misbehaving. */
  | { readonly type: "port-failed"; readonly port: number; readonly reason: string; readonly gone: boolean }
  /** The host's service loop threw (a bug): on a worker the worker dies; on a shared thread this says so. */
  | { readonly type: "host-failed"; readonly message: string }
  /** Something a port's device told its operator (e.g. a remote server that stalled a port reset). */
  | { readonly type: "device-log"; readonly port: number; readonly line: string };

interface PortState {
  link: PortLink | null;
  /** The device's address as the guest set it (SET_ADDRESS is virtualised here). */
  address: DevAddr;
  stats: PortStatsSnapshot;
}

export class UsbBackend implements Waitable {
  private readonly urbRing: BackRing;
  private readonly conn: ConnBack;
  private readonly frontendBell: Doorbell;
  readonly bell: Doorbell;
  private readonly mapper: GrantMapper;
  private readonly memory: GuestMemory;
  private readonly domid: DomId;
  private readonly gate: RequestGate;
  /** What the gate reads: the ports and the ids in flight. */
  private readonly gateState: GateState;
  private readonly ports: PortState[];
  private readonly inFlight = new Map<UrbId, InFlightUrb>();
  private readonly spare: InFlightUrb[] = [];
  private readonly connQueue: ConnEvent[] = [];
  private readonly copy = new Uint8Array(URB_RING_GEOMETRY.slotSize);
  private readonly portCopy = new Uint8Array(PORT_RESPONSE_SIZE);
  private readonly portResponse = new PortResponse();
  private faultReported = false;
  private readonly listeners: ((e: BackendEvent) => void)[] = [];
  readonly stats: BackendStats = {
    requests: 0,
    responses: 0,
    rejected: 0,
    unlinks: 0,
    setAddress: 0,
    grantFaults: 0,
    inFlight: 0,
    ringFault: 0,
    ports: {},
  };

  constructor(readonly handles: ControllerHandles) {
    this.urbRing = new BackRing(handles.urbRing, URB_RING_GEOMETRY);
    this.conn = new ConnBack(handles.connRing);
    this.frontendBell = new Doorbell(handles.frontendBell);
    this.bell = new Doorbell(handles.backendBell);
    this.memory = new GuestMemory({ regions: handles.memory });
    this.mapper = new GrantMapper({ table: handles.grantTable, memory: this.memory });
    this.domid = domId(handles.backendDomid);
    this.gate = new RequestGate(this.mapper, this.domid, this.stats);
    this.ports = [];
    for (let p = 0; p <= handles.ports; p++) {
      this.ports.push({ link: null, address: DEFAULT_DEV_ADDR, stats: { urbs: 0, bytes: 0, errors: 0 } });
    }
    this.gateState = { ports: this.ports, inFlight: this.inFlight };
  }

  onEvent(listener: (e: BackendEvent) => void): void {
    this.listeners.push(listener);
  }

  private emit(e: BackendEvent): void {
    for (const l of this.listeners) l(e);
  }

  /** Pass a line a port's device logged on to the control plane. */
  deviceLog(port: number, line: string): void {
    this.emit({ type: "device-log", port, line });
  }

  get ringFault(): number {
    return this.urbRing.fault;
  }

  portLink(port: number): PortLink | null {
    return this.ports[port]?.link ?? null;
  }

  /** True when a device runs on this thread: the caller must let its event loop turn for completions. */
  get hasInlinePorts(): boolean {
    for (const p of this.ports) if (p.link?.host.placement === "backend") return true;
    return false;
  }

  /** Links of attached ports, for waiting on their completions. */
  get links(): PortLink[] {
    const out: PortLink[] = [];
    for (const p of this.ports) if (p.link !== null) out.push(p.link);
    return out;
  }

  // --- Waitable: the backend sleeps on one doorbell for the URB ring, the port rings and the conn ring.
  hasPending(): boolean {
    if (this.urbRing.hasPending()) return true;
    for (const p of this.ports) if (p.link?.front.hasPending()) return true;
    return this.connQueue.length > 0 && this.conn.ring.unconsumedRequests() > 0;
  }

  armAndCheck(): boolean {
    // Arm every ring before deciding, so none can be missed between checks (as anyOf does, without allocating).
    let pending = this.urbRing.armAndCheck();
    for (const p of this.ports) if (p.link !== null) pending = p.link.front.armAndCheck() || pending;
    if (this.connQueue.length > 0) pending = this.conn.ring.armAndCheck() || pending;
    return pending;
  }

  /** One pass: port completions, then new requests, then queued port events. Returns the work done. */
  poll(): number {
    let work = 0;
    for (const p of this.ports) if (p.link !== null) work += this.drainPort(p.link);
    // Answers out before the next batch is taken: the frontend refills while this thread works.
    if (work > 0 && this.urbRing.pushResponses()) this.frontendBell.ring();
    for (let taken = 0; taken < REQUESTS_PER_POLL && this.urbRing.takeRequest(this.copy); taken++) {
      work++;
      this.stats.requests++;
      this.handleRequest();
    }
    if (this.urbRing.fault !== RingFault.NONE && !this.faultReported) {
      this.faultReported = true;
      this.stats.ringFault = this.urbRing.fault;
      this.emit({
        type: "ring-fault",
        fault: this.urbRing.fault,
        message: ringFaultMessage(this.urbRing.fault),
      });
    }
    for (const p of this.ports) if (p.link !== null) p.link.host.kick(p.link.front.pushRequests());
    this.flushConn();
    if (this.urbRing.pushResponses()) this.frontendBell.ring();
    this.stats.inFlight = this.inFlight.size;
    return work;
  }

  private respond(id: UrbId, status: UrbStatus, actualLength = 0, startFrame = 0, errorCount = 0): void {
    encodeResponse({ id, status, actualLength, startFrame, errorCount }, this.urbRing.responseSlot());
    this.urbRing.commitResponse();
    this.stats.responses++;
  }

  private reject(id: UrbId, status: UrbStatus): void {
    this.stats.rejected++;
    this.respond(id, status);
  }

  private handleRequest(): void {
    const r = this.gate.resolveRequest(this.copy, this.gateState);
    if (!r.ok) {
      // Only a slot shorter than an id has no id to answer; the URB ring's slots never are.
      this.reject(r.id ?? (0 as UrbId), r.status);
      return;
    }
    if (r.kind === "transfer") this.forward(r);
    else if (r.kind === "unlink") this.handleUnlink(r.req);
    else {
      this.ports[r.port]!.address = r.address;
      this.respond(r.id, OK);
    }
  }

  private unpin(pins: readonly GrantRef[]): void {
    for (const ref of pins) this.mapper.unmap(ref);
  }

  /** Hand a resolved transfer to its port: one port-ring slot, and its iso packets in the iso table. */
  private forward(t: ResolvedTransfer): void {
    const link = t.link;
    const slot = link.front.requestSlot();
    const portId = slot === null ? -1 : link.ids.allocate();
    if (slot === null || portId < 0) {
      // Cannot happen while the URB ring bounds what is in flight (see port-wire.ts); answer, never drop.
      this.unpin(t.pins);
      t.pins.length = 0;
      this.reject(t.id, ENOMEM);
      return;
    }
    writePortSubmit(slot, portId, t);
    if (t.isoPacketCount > 0) writePortIsoPackets(link.isoPackets, portId, t.isoPackets);
    const urb = this.takeRecord(t.id, t.port, portId, t.bufferLength, t.isPortReset);
    // The record takes the transfer's pins; the gate gets the record's (empty) array for the next one.
    const pins = urb.pins;
    urb.pins = t.pins;
    t.pins = pins;
    link.front.commitRequest();
    link.byPortId[portId] = urb;
    this.inFlight.set(t.id, urb);
    // Published by poll() once per drain of the URB ring (one push and at most one ring per batch).
  }

  private handleUnlink(req: UnlinkUrb): void {
    this.stats.unlinks++;
    const target = this.inFlight.get(req.unlinkId);
    // Only a transfer on the same port can be unlinked (not another unlink: those have no port-ring id).
    if (target === undefined || target.port !== req.port || target.portId < 0) {
      this.reject(req.id, ENOENT);
      return;
    }
    const link = this.ports[target.port]?.link ?? null;
    if (link === null) {
      this.reject(req.id, ENOENT);
      return;
    }
    // The unlink itself is in flight until its target completes (its id is taken meanwhile).
    this.inFlight.set(req.id, this.takeRecord(req.id, target.port, -1, 0, false));
    if (target.unlinkWaiters === null) target.unlinkWaiters = [req.id];
    else target.unlinkWaiters.push(req.id);
    if (!target.cancelSent && target.portId >= 0) {
      const slot = link.front.requestSlot();
      const cancelId = slot === null ? -1 : link.ids.allocate();
      if (slot !== null && cancelId >= 0) {
        target.cancelSent = true;
        writePortCancel(slot, cancelId, target.portId);
        link.front.commitRequest();
        link.byPortId[cancelId] = null; // published by poll() with the rest of this drain
      }
      // No room for the cancel: the target completes on its own; the unlink is answered then.
    }
  }

  /** Take the port worker's answers. */
  private drainPort(link: PortLink): number {
    link.host.collect();
    let n = 0;
    const rsp = this.portResponse;
    while (link.front.takeResponse(this.portCopy)) {
      n++;
      readPortResponse(this.portCopy, rsp);
      const urb = link.byPortId[rsp.id];
      link.byPortId[rsp.id] = null;
      if (urb === null || urb === undefined) continue; // a cancel's own answer
      this.completeUrb(urb, rsp.status, rsp.actualLength, rsp.startFrame, rsp.errorCount);
    }
    if (link.front.fault !== RingFault.NONE)
      this.failPort(link.port, `port ring fault: ${ringFaultMessage(link.front.fault)}`);
    return n;
  }

  private completeUrb(
    urb: InFlightUrb,
    status: UrbStatus,
    actual: number,
    startFrame: number,
    errorCount: number,
  ): void {
    this.unpin(urb.pins);
    this.inFlight.delete(urb.frontId);
    const port = this.ports[urb.port]!;
    const clamped = Math.min(actual, urb.bufferLength);
    port.stats.urbs++;
    port.stats.bytes += clamped;
    if (status !== OK && status !== ECONNRESET) port.stats.errors++;
    this.respond(urb.frontId, status, clamped, startFrame, errorCount);
    if (urb.isPortReset && status === OK && port.link !== null) {
      port.address = DEFAULT_DEV_ADDR;
      this.connQueue.push({ port: urb.port, speed: port.link.summary.speed });
    }
    if (urb.unlinkWaiters !== null) {
      for (const id of urb.unlinkWaiters) {
        const unlink = this.inFlight.get(id);
        this.inFlight.delete(id);
        if (unlink !== undefined) this.giveBack(unlink);
        this.respond(id, OK);
      }
    }
    this.giveBack(urb);
  }

  /**
   * An in-flight record, reused from the spare list: a record per URB was
   * garbage the scavenger paid for on every URB. A record goes back only once
   * nothing refers to it any more (answered, out of inFlight and byPortId).
   */
  private takeRecord(
    frontId: UrbId,
    port: PortNum,
    portId: number,
    bufferLength: number,
    isPortReset: boolean,
  ): InFlightUrb {
    const r = this.spare.pop();
    if (r === undefined) {
      return {
        frontId,
        port,
        portId,
        bufferLength,
        pins: [],
        unlinkWaiters: null,
        cancelSent: false,
        isPortReset,
      };
    }
    r.frontId = frontId;
    r.port = port;
    r.portId = portId;
    r.bufferLength = bufferLength;
    r.isPortReset = isPortReset;
    return r;
  }

  private giveBack(r: InFlightUrb): void {
    if (r.pins.length !== 0) r.pins.length = 0; // setting length is a builtin call even when it is 0
    r.unlinkWaiters = null;
    r.cancelSent = false;
    if (this.spare.length < MAX_SPARE_RECORDS) this.spare.push(r);
  }

  private flushConn(): void {
    let sent = 0;
    while (this.connQueue.length > 0 && this.conn.postEvent(this.connQueue[0]!)) {
      this.connQueue.shift();
      sent++;
    }
    if (sent > 0 && this.conn.push()) this.frontendBell.ring();
  }

  /** A port worker is ready: the port is connected. */
  attachLink(link: PortLink): void {
    const port = this.ports[link.port]!;
    if (port.link !== null) throw new Error(`port ${link.port} already has a device`);
    port.link = link;
    port.address = DEFAULT_DEV_ADDR;
    this.connQueue.push({ port: link.port, speed: link.summary.speed });
    this.flushConn();
    this.bell.ring();
  }

  /**
   * The port's worker is gone or must go: every URB on it completes with
   * `status` (-ESHUTDOWN after a crash), its grants are released, and the
   * frontend sees a disconnect. Other ports are untouched.
   */
  failPort(portNumber: number, reason: string, status: UrbStatus = ESHUTDOWN): PortLink | null {
    const port = this.ports[portNumber];
    const link = port?.link ?? null;
    if (port === undefined || link === null) return null;
    port.link = null;
    port.address = DEFAULT_DEV_ADDR;
    for (const urb of [...this.inFlight.values()]) {
      if (urb.port !== portNumber || urb.portId < 0) continue;
      this.completeUrb(urb, status, 0, 0, 0);
    }
    // Unlinks whose target already went above; anything left on this port is answered too.
    for (const urb of [...this.inFlight.values()]) {
      if (urb.port === portNumber) {
        this.inFlight.delete(urb.frontId);
        this.respond(urb.frontId, urb.portId < 0 ? OK : status);
      }
    }
    this.connQueue.push({ port: portNumber, speed: UsbSpeed.NONE });
    this.flushConn();
    if (this.urbRing.pushResponses()) this.frontendBell.ring();
    if (reason !== "detached") {
      this.emit({ type: "port-failed", port: portNumber, reason, gone: status === ENODEV });
    }
    return link;
  }

  /** Statistics with per-port figures. */
  snapshot(): BackendStats {
    const ports: Record<number, PortStatsSnapshot> = {};
    for (let p = 1; p < this.ports.length; p++) ports[p] = { ...this.ports[p]!.stats };
    return { ...this.stats, inFlight: this.inFlight.size, ports };
  }

  /** Mark everything in flight as failed (backend shutting down). */
  shutdown(): void {
    for (let p = 1; p < this.ports.length; p++)
      if (this.ports[p]!.link !== null) this.failPort(p, "detached");
  }
}
