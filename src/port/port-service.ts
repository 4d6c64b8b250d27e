/**
 * The port service: the device's end of one port, on a port worker of its
 * own (src/backend/port-worker-host.ts) or on the backend's thread
 * (src/backend/inline-port.ts). Consumes the port ring, turns each request
 * into a transfer on its one UsbDevice, and answers when the device completes.
 * What arrives was resolved by the backend's gate (src/backend/resolve.ts):
 * the service trusts it and reads no guest memory the guest may still
 * rewrite (iso packets come from the port's iso table, a private copy).
 *
 * Transfer state machine (crosvm xhci_transfer.rs): Submitted → Completed,
 * or Submitted → Cancelling → Completed. The device's `done` is the only
 * way to Completed and answers the ring exactly once; a cancel only asks
 * the device to finish early (with -ECONNRESET). A device call that throws
 * (a bug in a device model, a native binding that refuses an argument) ends
 * that transfer alone: it completes with -EPROTO, the first such throw is
 * logged (the rest are counted in stats.deviceThrows) and the port stays up,
 * whichever thread it runs on. The thread never blocks:
 * device completions (timers, libusb through uv_async) arrive through its
 * event loop, so it runs on the shared service loop (src/rings/service-loop.ts:
 * waiting is Atomics.waitAsync and a hot loop yields).
 */

import {
  type IsoPacketRequest,
  NO_DATA,
  type TransferRequest,
  type TransferResult,
  type UsbDevice,
} from "../devices/device.js";
import { BackRing } from "../rings/back-ring.js";
import { Doorbell } from "../rings/doorbell.js";
import { ServiceLoop } from "../rings/service-loop.js";
import { AdaptiveSpin, type SpinLimiter } from "../rings/spin.js";
import { writeIsoPacketResult } from "../urb/iso.js";
import { ISO_FRAME_DESCRIPTOR_SIZE } from "../urb/layout.js";
import { MAX_STREAM_ID } from "../urb/limits.js";
import { ECONNRESET, EINVAL, ENOENT, EPROTO, OK, type UrbStatus } from "../urb/status.js";
import { transferKindOfPipeType } from "../urb/types.js";
import { ENDPOINT_DIR_IN } from "../usb/index.js";
import { interceptedRequest } from "./intercept.js";
import {
  PORT_FLAG_SHORT_NOT_OK,
  PORT_FLAG_ZERO_PACKET,
  PORT_RING_GEOMETRY,
  PortOp,
  PortRequest,
  portIsoPacketLength,
  portIsoPacketOffset,
  writePortResponse,
} from "./port-wire.js";
import { TransferBuffers } from "./transfer-buffer.js";

export interface PortServiceOptions {
  readonly device: UsbDevice;
  readonly portRing: SharedArrayBuffer;
  /** This worker waits on it; the backend rings it. */
  readonly portBell: SharedArrayBuffer;
  /** The backend's doorbell, rung when answers are published. */
  readonly backendBell: SharedArrayBuffer;
  readonly memory: readonly SharedArrayBuffer[];
  /** The port's iso table (PortLink.isoTable). Without it, iso submits are refused with -EINVAL. */
  readonly isoTable?: SharedArrayBuffer;
  /** The connection's spinner cap, shared with the frontend and the backend. */
  readonly spinLimiter?: SpinLimiter;
  /** Longest spin while the host is contended (ControllerHandles.contendedSpinMicros). */
  readonly contendedSpinMicros?: number;
}

export interface PortStats {
  submitted: number;
  completed: number;
  cancelled: number;
  bytesIn: number;
  bytesOut: number;
  bounceCopies: number;
  bounceBytes: number;
  errors: number;
  /** Device calls that threw; each one's transfer was answered -EPROTO. */
  deviceThrows: number;
}

/**
 * One transfer from submit to its answer. It is also the TransferRequest the device gets: one object per
 * URB, not two. Never reused: the device may hold it until it calls done.
 */
interface Transfer extends TransferRequest {
  readonly id: number;
  handle: number;
  state: "submitted" | "cancelling" | "completed";
  /** Scattered IN buffers are bounced: where the data goes at completion. */
  readonly bounce: Uint8Array | null;
  readonly segments: Uint32Array | null;
  readonly isoDescriptors: Uint8Array | null;
}

export class PortService {
  private readonly ring: BackRing;
  private readonly myBell: Doorbell;
  private readonly backendBell: Doorbell;
  private readonly serviceLoop: ServiceLoop;
  private readonly req = new PortRequest();
  /**
   * In-flight transfers by port-ring id. The backend allocates ids from a pool of PORT_RING_GEOMETRY.slots,
   * so an array does what a Map did without its per-URB entry churn; submit refuses any other id.
   */
  private readonly transfers = new Array<Transfer | null>(PORT_RING_GEOMETRY.slots).fill(null);
  private transferCount = 0;
  private readonly device: UsbDevice;
  private readonly buffers: TransferBuffers;
  private readonly isoTable: Uint32Array | null;
  /** A publish is queued as a microtask: completions of one turn go out in one push. */
  private publishQueued = false;
  private readonly publishNow = (): void => {
    this.publishQueued = false;
    this.publish();
  };
  readonly stats: PortStats = {
    submitted: 0,
    completed: 0,
    cancelled: 0,
    bytesIn: 0,
    bytesOut: 0,
    bounceCopies: 0,
    bounceBytes: 0,
    errors: 0,
    deviceThrows: 0,
  };
  private readonly logListeners: ((line: string) => void)[] = [];
  /**
   * Bulk streams allocated, by endpoint address (ALLOC_STREAMS port requests): a transfer's stream id must
   * be 1..that count. Set-configuration, set-interface and port reset drop them, as the xHCI drops its
   * endpoint contexts.
   */
  private readonly streams = new Map<number, number>();
  private streamsRefusalLogged = false;

  constructor(options: PortServiceOptions) {
    this.device = options.device;
    this.buffers = new TransferBuffers(options.memory, this.stats);
    this.isoTable = options.isoTable === undefined ? null : new Uint32Array(options.isoTable);
    this.ring = new BackRing(options.portRing, PORT_RING_GEOMETRY);
    this.myBell = new Doorbell(options.portBell);
    this.backendBell = new Doorbell(options.backendBell);
    const spin = new AdaptiveSpin({
      maxSpinMicros: 20,
      ...(options.spinLimiter === undefined ? {} : { limiter: options.spinLimiter }),
      ...(options.contendedSpinMicros === undefined
        ? {}
        : { contendedSpinMicros: options.contendedSpinMicros }),
    });
    const ring = this.ring;
    // The shared service loop (src/rings/service-loop.ts), spinning tight before it parks.
    this.serviceLoop = new ServiceLoop({
      poll: () => {
        const taken = this.drain();
        if (ring.fault !== 0) throw new Error(`port ring fault ${ring.fault}`);
        return taken;
      },
      waitable: ring,
      bell: this.myBell,
      spin,
    });
  }

  /** A line for the operator (a device that threw). */
  onLog(listener: (line: string) => void): void {
    this.logListeners.push(listener);
  }

  /** A device call threw: count it, and say so once for the port's lifetime (a broken device throws often). */
  private deviceThrew(what: string, err: unknown): void {
    this.stats.deviceThrows++;
    if (this.stats.deviceThrows > 1) return;
    const why = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    this.say(
      `${this.device.info.name}: ${what} threw (${why}); answered -EPROTO, the port stays up (further throws are counted in stats.deviceThrows)`,
    );
  }

  private say(line: string): void {
    if (this.logListeners.length === 0) process.stderr.write(`usbvirt port: ${line}\n`);
    for (const listener of this.logListeners) listener(line);
  }

  get inFlight(): number {
    return this.transferCount;
  }

  start(): void {
    // A port ring fault rejects the loop's promise, unhandled: it ends the port worker, which the backend sees.
    if (!this.serviceLoop.isRunning) void this.serviceLoop.start();
  }

  /** Stop consuming; in-flight transfers still answer when the device completes them. */
  async stop(): Promise<void> {
    await this.serviceLoop.stop();
  }

  /** Take every queued request; how many were taken. */
  drain(): number {
    let taken = 0;
    // In place: the backend is this ring's producer and trusted here; decode copies every field out
    // before anything is answered into the shared slot (copying whole 4 KiB slots was a tenth of the
    // backend's time).
    for (let slot = this.ring.takeRequestInPlace(); slot !== null; slot = this.ring.takeRequestInPlace()) {
      taken++;
      this.req.decode(slot);
      if (this.req.op === PortOp.CANCEL) this.cancel(this.req.id, this.req.target);
      else if (this.req.op === PortOp.SUBMIT) this.submit(this.req);
      else this.answer(this.req.id, EINVAL, 0, 0, 0);
    }
    this.publish();
    return taken;
  }

  /** Publish the answers made so far and wake the backend if it asked to be. */
  publish(): void {
    if (this.ring.pushResponses()) this.backendBell.ring();
  }

  private answer(
    id: number,
    status: number,
    actualLength: number,
    startFrame: number,
    errorCount: number,
  ): void {
    writePortResponse(this.ring.responseSlot(), id, status, actualLength, startFrame, errorCount);
    this.ring.commitResponse();
  }

  private cancel(id: number, target: number): void {
    const t = target < this.transfers.length ? (this.transfers[target] ?? null) : null;
    if (t === null || t.state !== "submitted") {
      this.answer(id, ENOENT, 0, 0, 0);
      return;
    }
    t.state = "cancelling";
    this.stats.cancelled++;
    this.device.cancel(t.handle);
    this.answer(id, OK, 0, 0, 0);
  }

  private track(t: Transfer): void {
    // A second submit with an id in flight replaces it, as Map.set did; the first still answers once.
    if (this.transfers[t.id] === null) this.transferCount++;
    this.transfers[t.id] = t;
  }

  private untrack(t: Transfer): void {
    if (this.transfers[t.id] !== t) return; // replaced by a later submit with the same id: that one stays
    this.transfers[t.id] = null;
    this.transferCount--;
  }

  private submit(r: PortRequest): void {
    this.stats.submitted++;
    const id = r.id;
    if (id >= this.transfers.length) {
      // Not an id the backend's pool hands out: refused, never tracked.
      this.answer(id, EINVAL, 0, 0, 0);
      this.stats.errors++;
      return;
    }
    if (r.kind === 2) {
      const op = interceptedRequest(r.setup);
      if (op !== null) {
        this.runIntercepted(id, op);
        return;
      }
    }
    if (r.streamId !== 0 && !this.streamAllocated(r)) {
      // A stream the endpoint was not given: refused here, the device never sees it.
      this.answer(id, EINVAL, 0, 0, 0);
      this.stats.errors++;
      return;
    }
    // One view when the segments are one piece of guest memory, else a bounce buffer (transfer-buffer.ts).
    const buffer = this.buffers.build(r.segs, r.nSegs, r.length, r.directionIn);
    const bounce = this.buffers.bounced ? buffer : null;
    // r.segs is overwritten by the next decode: a bounced transfer keeps its own copy for copyBack.
    const segments = bounce === null ? null : r.segs.slice(0, r.nSegs * 3);
    let isoPackets: IsoPacketRequest[] | null = null;
    let isoDescriptors: Uint8Array | null = null;
    if (r.kind === 0) {
      const table = this.isoTable;
      if (table === null) {
        this.answer(id, EINVAL, 0, 0, 0);
        this.stats.errors++;
        return;
      }
      // Where results go (written, never read back); the packets themselves come from the iso table.
      isoDescriptors = this.buffers.view(r.isoRegion, r.isoOffset, r.isoPackets * ISO_FRAME_DESCRIPTOR_SIZE);
      isoPackets = [];
      for (let i = 0; i < r.isoPackets; i++) {
        isoPackets.push({
          offset: portIsoPacketOffset(table, id, i),
          length: portIsoPacketLength(table, id, i),
        });
      }
    }
    // Same property order as runIntercepted's: one hidden class for every Transfer.
    const t: Transfer = {
      kind: transferKindOfPipeType(r.kind) ?? "bulk",
      endpoint: r.endpoint,
      directionIn: r.directionIn,
      // r.setup is overwritten by the next decode; the device may keep its request until done.
      setup: r.kind === 2 ? { ...r.setup } : null,
      buffer,
      shortNotOk: (r.flags & PORT_FLAG_SHORT_NOT_OK) !== 0,
      zeroPacket: (r.flags & PORT_FLAG_ZERO_PACKET) !== 0,
      interval: r.interval,
      isoPackets,
      streamId: r.streamId,
      id,
      handle: -1,
      state: "submitted",
      bounce,
      segments,
      isoDescriptors,
    };
    this.track(t);
    // A done per transfer (not per id): a device calling a stale done twice cannot answer a later URB.
    try {
      t.handle = this.device.submit(t, (result) => this.complete(t, result));
    } catch (err) {
      this.deviceThrew("submit", err);
      this.complete(t, { status: EPROTO, actualLength: 0 });
    }
  }

  private complete(t: Transfer, result: TransferResult): void {
    if (t.state === "completed") return; // a device calling done twice: the first answer stands
    t.state = "completed";
    this.untrack(t);
    const actual = Math.max(0, Math.min(result.actualLength, t.bounce?.length ?? Number.MAX_SAFE_INTEGER));
    if (t.bounce !== null && t.segments !== null && t.directionIn && actual > 0) {
      this.buffers.copyBack(t.segments, t.bounce, actual);
    }
    if (t.isoDescriptors !== null && result.isoPackets !== undefined) {
      const n = Math.min(result.isoPackets.length, t.isoDescriptors.length / ISO_FRAME_DESCRIPTOR_SIZE);
      for (let i = 0; i < n; i++) {
        const p = result.isoPackets[i]!;
        writeIsoPacketResult(t.isoDescriptors, i, p.status, p.actualLength);
      }
    }
    this.stats.completed++;
    if (result.status !== OK && result.status !== ECONNRESET) this.stats.errors++;
    if (t.directionIn) this.stats.bytesIn += actual;
    else this.stats.bytesOut += actual;
    this.answer(t.id, result.status, actual, result.startFrame ?? 0, result.errorCount ?? 0);
    // Devices complete in microtasks: the completions already queued this turn join one publish.
    if (!this.publishQueued) {
      this.publishQueued = true;
      queueMicrotask(this.publishNow);
    }
  }

  private runIntercepted(id: number, op: NonNullable<ReturnType<typeof interceptedRequest>>): void {
    let pending: Promise<UrbStatus>;
    try {
      pending = this.runDeviceRequest(op);
    } catch (err) {
      pending = Promise.reject(err);
    }
    // Tracked like a transfer so close() and crash accounting see it; not cancellable.
    const t: Transfer = {
      kind: "control",
      endpoint: 0,
      directionIn: false,
      setup: null,
      buffer: NO_DATA,
      shortNotOk: false,
      zeroPacket: false,
      interval: 0,
      isoPackets: null,
      streamId: 0,
      id,
      handle: -1,
      state: "submitted",
      bounce: null,
      segments: null,
      isoDescriptors: null,
    };
    this.track(t);
    pending.then(
      (status) => this.complete(t, { status, actualLength: 0 }),
      (err: unknown) => {
        this.deviceThrew(op.op, err);
        this.complete(t, { status: EPROTO, actualLength: 0 });
      },
    );
  }

  private runDeviceRequest(op: NonNullable<ReturnType<typeof interceptedRequest>>): Promise<UrbStatus> {
    switch (op.op) {
      case "set-configuration":
        this.streams.clear();
        return this.device.setConfiguration(op.value);
      case "set-interface":
        this.streams.clear();
        return this.device.setInterface(op.interfaceNumber, op.alternateSetting);
      case "clear-halt":
        return this.device.clearHalt(op.endpointAddress);
      case "port-reset":
        this.streams.clear();
        return this.device.reset();
      case "alloc-streams":
        return this.allocStreams(op.endpointAddress, op.streams);
      case "free-streams":
        this.streams.delete(op.endpointAddress);
        return this.device.freeStreams?.(op.endpointAddress) ?? Promise.resolve(OK);
    }
  }

  private streamAllocated(r: PortRequest): boolean {
    if (r.kind !== 3) return false;
    const address = r.endpoint | (r.directionIn ? ENDPOINT_DIR_IN : 0);
    return r.streamId <= (this.streams.get(address) ?? 0);
  }

  /** The device decides what it offers; the port remembers what was granted, to check stream ids. */
  private async allocStreams(endpointAddress: number, streams: number): Promise<UrbStatus> {
    if (this.device.allocStreams === undefined) {
      if (!this.streamsRefusalLogged) {
        this.streamsRefusalLogged = true;
        this.say(
          `${this.device.info.name}: bulk streams are not supported for this device (usbfs streams are not implemented); ALLOC_STREAMS answered -EINVAL`,
        );
      }
      return EINVAL;
    }
    if (streams < 1 || streams > MAX_STREAM_ID) return EINVAL;
    const status = await this.device.allocStreams(endpointAddress, streams);
    if (status === OK) this.streams.set(endpointAddress, streams);
    return status;
  }
}
