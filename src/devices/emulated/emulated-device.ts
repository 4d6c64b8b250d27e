/**
 * The shared base of the emulated devices: everything USB 2.0 chapter 9 asks of every device, so a
 * device class only implements its endpoints and its class/vendor requests.
 *
 * - Standard requests on endpoint 0 (§9.4): GET_DESCRIPTOR of every type (device, configuration, string,
 *   device_qualifier, other_speed_configuration) truncated to wLength, GET_STATUS (§9.4.5), GET_CONFIGURATION
 *   (§9.4.2), GET_INTERFACE (§9.4.4), SET_FEATURE/CLEAR_FEATURE(ENDPOINT_HALT) (§9.4.1, §9.4.9); a request
 *   error is a STALL, i.e. -EPIPE on the control transfer (§9.2.7).
 * - The dedicated UsbDevice methods: setConfiguration / setInterface with validation (-EPIPE for values
 *   the descriptors do not offer), clearHalt, reset to the default (unconfigured) state, close.
 * - Transfer lifecycle (src/devices/device.ts contract): each submit gets a PendingTransfer that settles
 *   exactly once; `done` always runs in a later microtask; cancel settles with -ECONNRESET; endpoint
 *   changes (configuration, alternate setting, reset, close) flush in-flight transfers with -ESHUTDOWN as
 *   Linux usb_hcd_flush_endpoint does; a halted endpoint fails transfers with -EPIPE until clearHalt.
 */

import {
  ECONNRESET,
  EINVAL,
  EPIPE,
  EPROTO,
  EREMOTEIO,
  ESHUTDOWN,
  OK,
  type UrbStatus,
} from "../../urb/status.js";
import {
  DescriptorType,
  ENDPOINT_DIR_IN,
  ENDPOINT_NUMBER_MASK,
  endpointAddress,
  Feature,
  RECIPIENT_DEVICE,
  RECIPIENT_ENDPOINT,
  RECIPIENT_INTERFACE,
  RECIPIENT_MASK,
  REQUEST_DIR_IN,
  REQUEST_TYPE_CLASS,
  REQUEST_TYPE_MASK,
  REQUEST_TYPE_STANDARD,
  REQUEST_TYPE_VENDOR,
  type SetupPacket,
  STATUS_HALTED,
  STATUS_LENGTH,
  STATUS_SELF_POWERED,
  StandardRequest,
  type UsbSpeed,
} from "../../usb/index.js";
import { registerErrorClass, UsbvirtError } from "../../util/errors.js";
import {
  type DeviceInfo,
  NO_DATA,
  type TransferDone,
  type TransferHandle,
  type TransferRequest,
  type TransferResult,
  type UsbDevice,
} from "../device.js";
import {
  buildDescriptors,
  type ConfigurationLayout,
  type DescriptorSpec,
  type DeviceDescriptors,
  type EndpointLayout,
} from "./descriptors.js";

/** An emulated device used after close (open after close). */
export class DeviceClosedError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_DEVICE_CLOSED";
  constructor(message: string) {
    super("ERR_USBVIRT_DEVICE_CLOSED", message);
  }
}
registerErrorClass(DeviceClosedError);

/** USB frame numbers are 11 bits (§8.4.3.1). */
const FRAME_NUMBER_MASK = 0x7ff;
/** A device handles at most this many iso packets per transfer (as the URB gate: src/urb/limits.ts). */
export const MAX_ISO_PACKETS_PER_TRANSFER = 1024;

/**
 * What a class/vendor (or interface-level standard) control request handler answers: the IN data stage
 * bytes (truncated to wLength by the base), or a status (OK for an accepted no-data/OUT request, -EPIPE
 * for a request error).
 */
export type ControlReply = Uint8Array | UrbStatus;

/** The address a transfer targets: endpoint number with bit 7 set for IN; 0 for control. */
export function endpointAddressOf(request: TransferRequest): number {
  if (request.kind === "control") return 0;
  return endpointAddress(request.endpoint, request.directionIn);
}

/**
 * One submitted transfer, from submit to its single completion. Devices keep these in their queues while
 * a transfer is pending and call `complete`/`ok`/`fail` when it ends; after that the buffer is no longer
 * theirs (zero-copy view into guest memory) and every further completion attempt is ignored.
 */
export class PendingTransfer {
  private timer: NodeJS.Timeout | null = null;
  private isSettled = false;
  /** Asynchronous I/O (file store) writing into or reading from `buffer` right now. */
  private ioActive = 0;
  /** A result that arrived (cancel, flush) while I/O was using the buffer: delivered when the I/O ends. */
  private deferred: TransferResult | null = null;
  /** The result waiting for the device's delivery microtask. */
  private delivering: TransferResult | null = null;
  /** @internal Links in the device's in-flight list (TransferTable), in submit order. */
  prevInflight: PendingTransfer | null = null;
  /** @internal */
  nextInflight: PendingTransfer | null = null;

  constructor(
    readonly handle: TransferHandle,
    readonly request: TransferRequest,
    readonly endpointAddress: number,
    private readonly done: TransferDone,
    private readonly table: TransferTable,
  ) {}

  get settled(): boolean {
    return this.isSettled;
  }

  get buffer(): Uint8Array {
    return this.request.buffer;
  }

  /** Settle with `result`; `done` runs in a later microtask, never inside the caller's stack. */
  complete(result: TransferResult): void {
    if (this.isSettled) return;
    this.isSettled = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    // The guest buffer is ours until done runs: never hand it back while I/O still touches it.
    if (this.ioActive > 0) this.deferred = result;
    else this.deliver(result);
  }

  /** Mark asynchronous I/O on `buffer` as started; pair with `endIo`. */
  beginIo(): void {
    this.ioActive++;
  }

  /**
   * Mark the I/O as finished. Returns false when the transfer settled meanwhile (cancelled or flushed):
   * its result is delivered now and the device must drop the transfer.
   */
  endIo(): boolean {
    if (this.ioActive > 0) this.ioActive--;
    if (this.ioActive === 0 && this.deferred !== null) {
      const result = this.deferred;
      this.deferred = null;
      this.deliver(result);
    }
    return !this.isSettled;
  }

  private deliver(result: TransferResult): void {
    this.delivering = result;
    this.table.deliverLater(this);
  }

  /** @internal The device's delivery microtask hands the result over (exactly once: deliver runs once). */
  runDone(): void {
    const result = this.delivering!;
    this.delivering = null;
    this.done(result);
  }

  /** Success with `actualLength` bytes; a short IN with SHORT_NOT_OK becomes -EREMOTEIO (the bytes still count). */
  ok(actualLength: number): void {
    const r = this.request;
    const short = r.directionIn && r.shortNotOk && actualLength < r.buffer.length;
    this.complete({ status: short ? EREMOTEIO : OK, actualLength });
  }

  fail(status: UrbStatus, actualLength = 0): void {
    this.complete({ status, actualLength });
  }

  /** Disarm the timer set with `after`, if any. */
  clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Run `fn` after `ms` unless the transfer settles first. The timer never keeps the process alive. */
  after(ms: number, fn: () => void): void {
    if (this.isSettled) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.isSettled) fn();
    }, ms);
    this.timer.unref();
  }
}

/**
 * FIFO of pending transfers that silently drops the ones that settled meanwhile (cancelled, flushed), so
 * devices need no per-queue cancel bookkeeping. Its length is bounded by the transfers the host keeps in
 * flight.
 */
export class TransferQueue {
  private items: PendingTransfer[] = [];

  push(t: PendingTransfer): void {
    this.items.push(t);
  }

  /** The oldest transfer still pending, or undefined. */
  peek(): PendingTransfer | undefined {
    while (this.items.length > 0 && this.items[0]!.settled) this.items.shift();
    return this.items[0];
  }

  shift(): PendingTransfer | undefined {
    const t = this.peek();
    if (t !== undefined) this.items.shift();
    return t;
  }
}

/**
 * A device's transfers in flight and the delivery of their results, without garbage per transfer: an
 * intrusive list in submit order (a Map keyed by handle churned its hash table on every URB), and one
 * queueMicrotask per batch of results rather than per transfer (Node's costs an AsyncResource, a bound
 * function and a closure each). Results still reach `done` in settle order, in a later microtask.
 */
class TransferTable {
  private head: PendingTransfer | null = null;
  private tail: PendingTransfer | null = null;
  private count = 0;
  private ready: PendingTransfer[] = [];
  private spare: PendingTransfer[] = [];
  private runQueued = false;

  /** `delivered` runs after each done (even one that threw). */
  constructor(private readonly delivered: () => void) {}

  get size(): number {
    return this.count;
  }

  add(t: PendingTransfer): void {
    t.prevInflight = this.tail;
    if (this.tail === null) this.head = t;
    else this.tail.nextInflight = t;
    this.tail = t;
    this.count++;
  }

  /** Linear, but cancel is rare and the list holds only what the host keeps in flight (≤ 256 per port). */
  find(handle: TransferHandle): PendingTransfer | undefined {
    for (let t = this.head; t !== null; t = t.nextInflight) if (t.handle === handle) return t;
    return undefined;
  }

  /** A copy in submit order, for walks that settle transfers as they go. */
  snapshot(): PendingTransfer[] {
    const all: PendingTransfer[] = [];
    for (let t = this.head; t !== null; t = t.nextInflight) all.push(t);
    return all;
  }

  /** Queue `t` (settled, result attached) for its done in a later microtask. */
  deliverLater(t: PendingTransfer): void {
    this.ready.push(t);
    if (this.runQueued) return;
    this.runQueued = true;
    queueMicrotask(this.run);
  }

  private readonly run = (): void => {
    this.runQueued = false;
    // Transfers settled by the dones below go to a fresh batch and a later microtask, never this loop.
    const batch = this.ready;
    this.ready = this.spare;
    for (let i = 0; i < batch.length; i++) {
      const t = batch[i]!;
      this.remove(t);
      try {
        t.runDone();
      } catch (err) {
        // As when each done had its own microtask: the error is uncaught, the other dones still run.
        queueMicrotask(() => {
          throw err;
        });
      }
      this.delivered();
    }
    batch.length = 0;
    this.spare = batch;
  };

  private remove(t: PendingTransfer): void {
    if (t.prevInflight === null) this.head = t.nextInflight;
    else t.prevInflight.nextInflight = t.nextInflight;
    if (t.nextInflight === null) this.tail = t.prevInflight;
    else t.nextInflight.prevInflight = t.prevInflight;
    t.prevInflight = null;
    t.nextInflight = null;
    this.count--;
  }
}

export interface EmulatedDeviceOptions {
  readonly speed: UsbSpeed;
  readonly name: string;
}

/** A standard-conforming device model; subclasses supply the spec, their endpoints and class requests. */
export abstract class EmulatedDevice implements UsbDevice {
  readonly info: DeviceInfo;
  protected readonly descriptors: DeviceDescriptors;
  private readonly inflight = new TransferTable(() => {
    if (this.inflight.size === 0 && this.drained !== null) {
      this.drained();
      this.drained = null;
    }
  });
  private nextHandle = 1;
  private closed = false;
  private config: ConfigurationLayout | null = null;
  private readonly alternates = new Map<number, number>();
  /** Endpoints of the current configuration and alternate settings, by address. */
  private active = new Map<number, EndpointLayout>();
  private readonly halted = new Set<number>();
  private readonly createdAt = performance.now();
  /** Resolves close() once the last in-flight transfer's done has run. */
  private drained: (() => void) | null = null;

  protected constructor(spec: DescriptorSpec, options: EmulatedDeviceOptions) {
    this.descriptors = buildDescriptors(spec, options.speed);
    this.info = Object.freeze({
      speed: options.speed,
      deviceDescriptor: this.descriptors.device,
      configurations: this.descriptors.configurations,
      name: options.name,
    });
  }

  // ---- hooks for device classes ------------------------------------------------------------------------

  /** A bulk, interrupt or iso transfer to an active, non-halted endpoint of the right type. */
  protected abstract handleTransfer(t: PendingTransfer, ep: EndpointLayout): void;

  /** Class and vendor requests on endpoint 0. `data` is the OUT data stage (empty for IN requests). */
  protected handleClassOrVendorRequest(_setup: SetupPacket, _data: Uint8Array): ControlReply {
    return EPIPE;
  }

  /** GET_DESCRIPTOR with recipient interface (HID class and report descriptors); null stalls. */
  protected interfaceDescriptor(_interfaceNumber: number, _type: number, _index: number): Uint8Array | null {
    return null;
  }

  /** After SET_CONFIGURATION (0 = unconfigured, also after reset): endpoint state starts afresh. */
  protected onConfigurationChanged(_value: number): void {}

  /** After SET_INTERFACE. */
  protected onInterfaceChanged(_interfaceNumber: number, _alternateSetting: number): void {}

  /** After CLEAR_FEATURE(ENDPOINT_HALT) took effect on `address`. */
  protected onHaltCleared(_address: number): void {}

  /** A halt the host cannot clear with CLEAR_FEATURE alone (BOT §6.6.1: until Reset Recovery). */
  protected isHaltSticky(_address: number): boolean {
    return false;
  }

  /** A transfer is about to settle with -ECONNRESET (cancel); the device drops any state tied to it. */
  protected onCancel(_t: PendingTransfer): void {}

  /** Release device resources (files, timers) once every transfer has settled. */
  protected onClose(): void | Promise<void> {}

  // ---- state for subclasses ----------------------------------------------------------------------------

  protected get configurationValue(): number {
    return this.config?.configurationValue ?? 0;
  }

  protected alternateOf(interfaceNumber: number): number {
    return this.alternates.get(interfaceNumber) ?? 0;
  }

  protected isHalted(address: number): boolean {
    return this.halted.has(address);
  }

  /** Stall `address`: transfers in flight on it and every later one fail with -EPIPE until cleared. */
  protected halt(address: number): void {
    this.halted.add(address);
    this.flush((t) => t.endpointAddress === address, EPIPE);
  }

  /** The 11-bit USB frame number now (1 ms frames since the device was created). */
  protected frameNumber(): number {
    return Math.floor(performance.now() - this.createdAt) & FRAME_NUMBER_MASK;
  }

  // ---- UsbDevice ---------------------------------------------------------------------------------------

  async open(): Promise<void> {
    if (this.closed) throw new DeviceClosedError(`${this.info.name}: open after close`);
  }

  submit(request: TransferRequest, done: TransferDone): TransferHandle {
    const handle = this.nextHandle;
    // Handles only need to be unique among transfers in flight; wrap well inside the safe integers.
    this.nextHandle = this.nextHandle >= 0x7fff_ffff ? 1 : this.nextHandle + 1;
    // The table takes it off the in-flight list just before done runs, then checks for close's drain.
    const t = new PendingTransfer(handle, request, endpointAddressOf(request), done, this.inflight);
    this.inflight.add(t);
    try {
      if (this.closed) t.fail(ESHUTDOWN);
      else if (request.kind === "control") this.handleControl(t);
      else this.route(t);
    } catch {
      // A device-model bug must not throw into the port worker: the transfer fails like a bus error.
      t.fail(EPROTO);
    }
    return handle;
  }

  cancel(handle: TransferHandle): void {
    const t = this.inflight.find(handle);
    if (t === undefined || t.settled) return;
    this.onCancel(t);
    t.fail(ECONNRESET);
  }

  async setConfiguration(value: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    const next =
      value === 0 ? null : (this.descriptors.layout.find((c) => c.configurationValue === value) ?? null);
    if (value !== 0 && next === null) return EPIPE;
    // Every non-control endpoint goes away (and comes back with its halt and toggle cleared, §9.4.7).
    this.flush((t) => t.endpointAddress !== 0, ESHUTDOWN);
    this.config = next;
    this.alternates.clear();
    this.halted.clear();
    this.recomputeActive();
    this.onConfigurationChanged(value);
    return OK;
  }

  async setInterface(interfaceNumber: number, alternateSetting: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    const iface = this.config?.interfaces.find((i) => i.interfaceNumber === interfaceNumber);
    if (iface === undefined || !iface.alternates.some((a) => a.alternateSetting === alternateSetting))
      return EPIPE;
    const owned = (t: PendingTransfer) =>
      this.active.get(t.endpointAddress)?.interfaceNumber === interfaceNumber;
    this.flush(owned, ESHUTDOWN);
    for (const ep of this.active.values())
      if (ep.interfaceNumber === interfaceNumber) this.halted.delete(ep.address);
    this.alternates.set(interfaceNumber, alternateSetting);
    this.recomputeActive();
    this.onInterfaceChanged(interfaceNumber, alternateSetting);
    return OK;
  }

  async clearHalt(endpointAddress: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    return this.clearHaltNow(endpointAddress);
  }

  async reset(): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    this.flush(() => true, ESHUTDOWN);
    this.config = null;
    this.alternates.clear();
    this.halted.clear();
    this.recomputeActive();
    this.onConfigurationChanged(0);
    return OK;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.flush(() => true, ESHUTDOWN);
    // Every done has run (including ones held back until their I/O finished) before resources go.
    if (this.inflight.size > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    await this.onClose();
  }

  // ---- internals ---------------------------------------------------------------------------------------

  private flush(match: (t: PendingTransfer) => boolean, status: UrbStatus): void {
    for (const t of this.inflight.snapshot()) if (!t.settled && match(t)) t.fail(status);
  }

  private recomputeActive(): void {
    this.active = new Map();
    for (const iface of this.config?.interfaces ?? []) {
      const alt = this.alternateOf(iface.interfaceNumber);
      const setting = iface.alternates.find((a) => a.alternateSetting === alt);
      for (const ep of setting?.endpoints ?? []) this.active.set(ep.address, ep);
    }
  }

  private clearHaltNow(address: number): UrbStatus {
    if ((address & ENDPOINT_NUMBER_MASK) === 0) return OK;
    if (!this.active.has(address)) return EPIPE;
    // A sticky halt acknowledges the request but the endpoint stalls again at once (BOT §6.6.1).
    if (this.isHaltSticky(address)) return OK;
    this.halted.delete(address);
    this.onHaltCleared(address);
    return OK;
  }

  private route(t: PendingTransfer): void {
    const r = t.request;
    const ep = this.active.get(t.endpointAddress);
    // An endpoint outside the current configuration/alternate never answers its tokens: the host sees a
    // transaction error (no handshake), -EPROTO.
    if (ep === undefined) {
      t.fail(EPROTO);
      return;
    }
    if (r.kind !== ep.type) {
      t.fail(EINVAL);
      return;
    }
    if (this.halted.has(ep.address)) {
      t.fail(EPIPE);
      return;
    }
    if (ep.type === "isochronous" && !isoPacketsValid(r)) {
      t.fail(EINVAL);
      return;
    }
    this.handleTransfer(t, ep);
  }

  private handleControl(t: PendingTransfer): void {
    const setup = t.request.setup;
    if (setup === null || t.request.endpoint !== 0) {
      t.fail(EINVAL);
      return;
    }
    const directionIn = (setup.bmRequestType & REQUEST_DIR_IN) !== 0;
    // The data stage is wLength bytes, never more than the buffer the host gave (untrusted setup).
    const dataLength = Math.min(setup.wLength, t.buffer.length);
    const type = setup.bmRequestType & REQUEST_TYPE_MASK;
    if (type === REQUEST_TYPE_STANDARD && this.standardAsync(t, setup)) return;
    let reply: ControlReply;
    if (type === REQUEST_TYPE_STANDARD) reply = this.standardRequest(setup);
    else if (type === REQUEST_TYPE_CLASS || type === REQUEST_TYPE_VENDOR)
      reply = this.handleClassOrVendorRequest(setup, directionIn ? NO_DATA : dataStage(t.buffer, dataLength));
    else reply = EPIPE;
    if (typeof reply === "number") {
      if (reply === OK) t.ok(directionIn ? 0 : dataLength);
      else t.fail(reply);
      return;
    }
    if (!directionIn) {
      t.fail(EPIPE);
      return;
    }
    const n = Math.min(reply.length, dataLength);
    t.buffer.set(reply.subarray(0, n));
    t.ok(n);
  }

  /**
   * The standard requests the port worker normally intercepts (SET_CONFIGURATION, SET_INTERFACE,
   * CLEAR_FEATURE(HALT)) are honoured if they arrive anyway, through the same methods. True when handled.
   */
  private standardAsync(t: PendingTransfer, setup: SetupPacket): boolean {
    switch (setup.bRequest) {
      case StandardRequest.SET_CONFIGURATION:
        void this.setConfiguration(setup.wValue & 0xff).then((status) => t.fail(status));
        return true;
      case StandardRequest.SET_INTERFACE:
        void this.setInterface(setup.wIndex, setup.wValue).then((status) => t.fail(status));
        return true;
      default:
        return false;
    }
  }

  private standardRequest(setup: SetupPacket): ControlReply {
    const recipient = setup.bmRequestType & RECIPIENT_MASK;
    const directionIn = (setup.bmRequestType & REQUEST_DIR_IN) !== 0;
    switch (setup.bRequest) {
      case StandardRequest.GET_DESCRIPTOR:
        if (!directionIn) return EPIPE;
        if (recipient === RECIPIENT_INTERFACE)
          return this.interfaceDescriptor(setup.wIndex, setup.wValue >> 8, setup.wValue & 0xff) ?? EPIPE;
        return recipient === RECIPIENT_DEVICE ? this.deviceDescriptor(setup) : EPIPE;
      case StandardRequest.GET_STATUS:
        return directionIn ? this.getStatus(recipient, setup.wIndex) : EPIPE;
      case StandardRequest.GET_CONFIGURATION:
        return directionIn ? Uint8Array.of(this.configurationValue) : EPIPE;
      case StandardRequest.GET_INTERFACE: {
        if (!directionIn || this.config === null) return EPIPE;
        const known = this.config.interfaces.some((i) => i.interfaceNumber === setup.wIndex);
        return known ? Uint8Array.of(this.alternateOf(setup.wIndex)) : EPIPE;
      }
      case StandardRequest.CLEAR_FEATURE:
      case StandardRequest.SET_FEATURE:
        return this.feature(setup, setup.bRequest === StandardRequest.SET_FEATURE);
      default:
        // SET_ADDRESS is virtualised by the backend and never reaches a device; SET_DESCRIPTOR and
        // SYNCH_FRAME are optional and not supported: request error.
        return EPIPE;
    }
  }

  private deviceDescriptor(setup: SetupPacket): ControlReply {
    const d = this.descriptors;
    const index = setup.wValue & 0xff;
    switch (setup.wValue >> 8) {
      case DescriptorType.DEVICE:
        return d.device;
      case DescriptorType.CONFIGURATION:
        return d.configurations[index] ?? EPIPE;
      case DescriptorType.STRING:
        // Only one language is offered; hosts asking with another LANGID get English, as most devices do.
        return d.strings.get(index) ?? EPIPE;
      case DescriptorType.DEVICE_QUALIFIER:
        return d.deviceQualifier ?? EPIPE;
      case DescriptorType.OTHER_SPEED_CONFIGURATION:
        return d.otherSpeedConfigurations?.[index] ?? EPIPE;
      default:
        return EPIPE;
    }
  }

  private getStatus(recipient: number, wIndex: number): ControlReply {
    const status = new Uint8Array(STATUS_LENGTH);
    if (recipient === RECIPIENT_DEVICE) {
      const layout = this.config ?? this.descriptors.layout[0];
      // Remote wakeup (bit 1) is never armed: SET_FEATURE(DEVICE_REMOTE_WAKEUP) is a no-op.
      status[0] = layout?.selfPowered ? STATUS_SELF_POWERED : 0;
      return status;
    }
    if (recipient === RECIPIENT_INTERFACE) {
      return this.config?.interfaces.some((i) => i.interfaceNumber === wIndex) ? status : EPIPE;
    }
    if (recipient === RECIPIENT_ENDPOINT) {
      const address = wIndex & (ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK);
      if ((address & ENDPOINT_NUMBER_MASK) === 0) return status;
      if (!this.active.has(address)) return EPIPE;
      status[0] = this.halted.has(address) ? STATUS_HALTED : 0;
      return status;
    }
    return EPIPE;
  }

  private feature(setup: SetupPacket, set: boolean): ControlReply {
    const recipient = setup.bmRequestType & RECIPIENT_MASK;
    if (recipient === RECIPIENT_DEVICE && setup.wValue === Feature.DEVICE_REMOTE_WAKEUP) return OK;
    if (recipient !== RECIPIENT_ENDPOINT || setup.wValue !== Feature.ENDPOINT_HALT) return EPIPE;
    const address = setup.wIndex & (ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK);
    if (!set) return this.clearHaltNow(address);
    if ((address & ENDPOINT_NUMBER_MASK) === 0) return OK;
    if (!this.active.has(address)) return EPIPE;
    this.halt(address);
    return OK;
  }
}

/** The OUT data stage of a control request: the first `length` bytes of the buffer, a new view only if shorter. */
function dataStage(buffer: Uint8Array, length: number): Uint8Array {
  if (length === 0) return NO_DATA;
  return length === buffer.length ? buffer : buffer.subarray(0, length);
}

/** Iso packet list present, not too long, and every packet inside the buffer. */
function isoPacketsValid(r: TransferRequest): boolean {
  const packets = r.isoPackets;
  if (packets === null || packets.length === 0 || packets.length > MAX_ISO_PACKETS_PER_TRANSFER) return false;
  for (const p of packets) {
    if (!Number.isInteger(p.offset) || !Number.isInteger(p.length) || p.offset < 0 || p.length < 0)
      return false;
    if (p.offset + p.length > r.buffer.length) return false;
  }
  return true;
}
