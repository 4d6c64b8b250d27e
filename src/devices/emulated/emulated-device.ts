/**
 * The shared base of the emulated devices: everything USB 2.0 chapter 9 asks of every device, so a
 * device class only implements its endpoints and its class/vendor requests. Its parts beside it:
 * `pending-transfer.ts` (a transfer's life, the in-flight table), `transfer-queue.ts`, `endpoint-state.ts`
 * (configuration, alternates, active endpoints, halts), `standard-requests.ts` (the chapter-9 answers).
 *
 * - Control transfers (§9.3): standard requests are answered by standard-requests.ts, class and vendor
 *   ones by the device class; a request error is a STALL, i.e. -EPIPE on the control transfer (§9.2.7).
 * - The dedicated UsbDevice methods: setConfiguration / setInterface with validation (-EPIPE for values
 *   the descriptors do not offer), clearHalt, reset to the default (unconfigured) state, close, and bulk
 *   streams (allocStreams up to the endpoint companion's MaxStreams; every endpoint change drops them).
 * - Transfer dispatch (src/devices/device.ts contract): each submit gets a PendingTransfer that settles
 *   exactly once; cancel settles with -ECONNRESET; endpoint changes (configuration, alternate setting,
 *   reset, close) flush in-flight transfers with -ESHUTDOWN as Linux usb_hcd_flush_endpoint does; a
 *   halted endpoint fails transfers with -EPIPE until clearHalt.
 */

import { ECONNRESET, EINVAL, EPIPE, EPROTO, ESHUTDOWN, OK, type UrbStatus } from "../../urb/status.js";
import {
  ENDPOINT_NUMBER_MASK,
  REQUEST_DIR_IN,
  REQUEST_TYPE_CLASS,
  REQUEST_TYPE_MASK,
  REQUEST_TYPE_STANDARD,
  REQUEST_TYPE_VENDOR,
  type SetupPacket,
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
  type UsbDevice,
} from "../device.js";
import {
  buildDescriptors,
  type DescriptorSpec,
  type DeviceDescriptors,
  type EndpointLayout,
} from "./descriptors.js";
import { EndpointState } from "./endpoint-state.js";
import { endpointAddressOf, PendingTransfer, TransferTable } from "./pending-transfer.js";
import { answerStandardRequest, type ControlReply, type StandardRequestTarget } from "./standard-requests.js";

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
  private readonly state = new EndpointState();
  /** Bulk streams allocated, by endpoint address; every endpoint change drops them. */
  private readonly streams = new Map<number, number>();
  /** What standard-requests.ts answers for: built once, so a request allocates nothing for it. */
  private readonly standardTarget: StandardRequestTarget;
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
    this.standardTarget = {
      descriptors: this.descriptors,
      state: this.state,
      interfaceDescriptor: (interfaceNumber, type, index) =>
        this.interfaceDescriptor(interfaceNumber, type, index),
      clearHalt: (address) => this.clearHaltNow(address),
      halt: (address) => this.halt(address),
    };
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
    return this.state.configurationValue;
  }

  protected alternateOf(interfaceNumber: number): number {
    return this.state.alternateOf(interfaceNumber);
  }

  protected isHalted(address: number): boolean {
    return this.state.isHalted(address);
  }

  /** Stall `address`: transfers in flight on it and every later one fail with -EPIPE until cleared. */
  protected halt(address: number): void {
    this.state.markHalted(address);
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
    this.streams.clear();
    this.state.configure(next);
    this.onConfigurationChanged(value);
    return OK;
  }

  async setInterface(interfaceNumber: number, alternateSetting: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    const iface = this.state.configuration?.interfaces.find((i) => i.interfaceNumber === interfaceNumber);
    if (iface === undefined || !iface.alternates.some((a) => a.alternateSetting === alternateSetting))
      return EPIPE;
    const owned = (t: PendingTransfer) =>
      this.state.endpoint(t.endpointAddress)?.interfaceNumber === interfaceNumber;
    this.flush(owned, ESHUTDOWN);
    this.streams.clear();
    this.state.selectAlternate(interfaceNumber, alternateSetting);
    this.onInterfaceChanged(interfaceNumber, alternateSetting);
    return OK;
  }

  /** Streams up to what the endpoint's companion offers (USB 3.2 §9.6.7), on an active bulk endpoint. */
  async allocStreams(endpointAddress: number, streams: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    const ep = this.state.endpoint(endpointAddress);
    if (ep === undefined || ep.type !== "bulk" || !Number.isInteger(streams)) return EINVAL;
    if (streams < 1 || streams > ep.maxStreams) return EINVAL;
    this.streams.set(endpointAddress, streams);
    return OK;
  }

  async freeStreams(endpointAddress: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    if (!this.streams.delete(endpointAddress)) return EINVAL;
    // Transfers queued on the endpoint's streams end with it (as xHCI's streams' rings go).
    this.flush((t) => t.endpointAddress === endpointAddress && t.request.streamId !== 0, ESHUTDOWN);
    return OK;
  }

  /** Streams allocated on `address` (0: none). */
  protected streamsOf(address: number): number {
    return this.streams.get(address) ?? 0;
  }

  async clearHalt(endpointAddress: number): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    return this.clearHaltNow(endpointAddress);
  }

  async reset(): Promise<UrbStatus> {
    if (this.closed) return ESHUTDOWN;
    this.flush(() => true, ESHUTDOWN);
    this.streams.clear();
    this.state.configure(null);
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

  private clearHaltNow(address: number): UrbStatus {
    if ((address & ENDPOINT_NUMBER_MASK) === 0) return OK;
    if (!this.state.isActive(address)) return EPIPE;
    // A sticky halt acknowledges the request but the endpoint stalls again at once (BOT §6.6.1).
    if (this.isHaltSticky(address)) return OK;
    this.state.clearHalted(address);
    this.onHaltCleared(address);
    return OK;
  }

  private route(t: PendingTransfer): void {
    const r = t.request;
    const ep = this.state.endpoint(t.endpointAddress);
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
    // A stream the endpoint was not given: the port checks it first; a device used directly checks too.
    if (r.streamId !== 0 && (ep.type !== "bulk" || r.streamId > this.streamsOf(ep.address))) {
      t.fail(EINVAL);
      return;
    }
    if (this.state.isHalted(ep.address)) {
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
    if (type === REQUEST_TYPE_STANDARD) reply = answerStandardRequest(setup, this.standardTarget);
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
