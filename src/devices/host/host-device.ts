/**
 * A real USB device through libusb (npm usb@2), driven by one port worker.
 *
 * open: find the device (selector or a given libusb device), libusb_open, and
 * for every interface of the active configuration detach a bound kernel driver
 * (remembered, reattached on close) and claim it.
 *
 * Transfers (crosvm backend/device.rs; the UsbDevice contract in ../device.ts):
 * - bulk and interrupt run straight on the guest's view: the Buffer handed to
 *   libusb is `Buffer.from(view.buffer, view.byteOffset, view.length)` over the
 *   SharedArrayBuffer, so libusb reads and writes guest memory in place (zero
 *   copy, checked under umockdev in test/host).
 * - control transfers are bounced: libusb wants the 8-byte setup packet and
 *   the data stage in ONE buffer and the guest's view holds only the data
 *   stage, so OUT data is copied in and IN data copied back (counted in
 *   `stats.controlCopies` / `controlCopyBytes`). Control transfers are small.
 * - any number in flight per endpoint; cancel → libusb_cancel_transfer and the
 *   transfer's own callback completes it (exactly once, -ECONNRESET if the
 *   cancel won); libusb codes → URB statuses through ./status.ts.
 * - isochronous: node-usb has none, so interfaces with an isochronous
 *   endpoint in any alternate setting belong to a second, usbfs file
 *   descriptor (./usbfs-iso.ts, through koffi): it claims them instead of
 *   libusb and carries every URB on their endpoints (iso, bulk, interrupt),
 *   their SET_INTERFACE and CLEAR_FEATURE(HALT). Where that path cannot load
 *   (no koffi, not Linux, no device node) the interfaces stay with libusb and
 *   an iso URB completes with -EINVAL (ISO_UNSUPPORTED_STATUS), logged once.
 * - node-usb sets no transfer flags, so SHORT_NOT_OK is applied here (a short
 *   IN becomes -EREMOTEIO) and URB_ZERO_PACKET is not honoured (logged once).
 *
 * Standard requests the port worker intercepts map to libusb calls:
 * SET_CONFIGURATION → release, libusb_set_configuration, claim again (a no-op
 * when the value is the active configuration, as the device was opened in it);
 * SET_INTERFACE → libusb_set_interface_alt_setting; CLEAR_FEATURE(HALT) →
 * libusb_clear_halt; port reset → libusb_reset_device, except the first reset
 * of a device nothing was sent to since open (QEMU's host-libusb skips a reset
 * of an untouched device too: the host's own enumeration left it in its default
 * state, and some devices mishandle two resets in a row). A device a kernel
 * driver was detached from is not untouched: that driver may have changed its
 * state, so its first reset is performed. Kernel drivers detached on open (and
 * after a SET_CONFIGURATION, whose new interfaces the kernel probed) are
 * re-attached on close, for the interfaces of the configuration then active.
 *
 * Unplug: the first NO_DEVICE (a transfer or a call) marks the device gone:
 * new URBs get -ENODEV, the other transfers in flight are cancelled and complete
 * through their callbacks, then the interfaces are released and the handle
 * closed (never inside a transfer callback), and `onGone` runs — the port
 * worker's default (see ./index.ts) ends the worker, so the backend reports a
 * disconnect on the port. close() completes what is in flight with -ESHUTDOWN,
 * releases the interfaces, reattaches kernel drivers and closes the handle.
 */

import { ECONNRESET, EINVAL, ENODEV, EREMOTEIO, ESHUTDOWN, OK, type UrbStatus } from "../../urb/status.js";
import { endpointAddress } from "../../usb/index.js";
import { registerErrorClass, UsbvirtError } from "../../util/errors.js";
import type {
  DeviceInfo,
  TransferDone,
  TransferHandle,
  TransferRequest,
  TransferResult,
  UsbDevice,
} from "../device.js";
import { configurationBytes, deviceDescriptorBytes, interfaceNumbers } from "./descriptors.js";
import { claimHostDevice, type DeviceClaim } from "./device-claim.js";
import { describeDevice, describeWithStrings, type HostDeviceInfo, usbSpeedOf } from "./enumerate.js";
import { HeldRecord } from "./held-record.js";
import {
  type LibusbDevice,
  LibusbError,
  LibusbTransferStatus,
  LibusbTransferType,
  loadLibusb,
  type ParsedConfiguration,
  type TransferHandleNative,
} from "./libusb.js";
import { formatSelector, type HostSelector, matchesSelector } from "./select.js";
import { ISO_UNSUPPORTED_STATUS, isNoDevice, libusbStatus } from "./status.js";
import { loadUsbfs, UsbfsChannel, type UsbfsStats } from "./usbfs-iso.js";

/** A host device that cannot be opened or used. */
export type HostDeviceCode =
  | "ERR_USBVIRT_HOST_DEVICE_NOT_FOUND"
  | "ERR_USBVIRT_HOST_OPEN"
  | "ERR_USBVIRT_HOST_NOT_OPEN"
  | "ERR_USBVIRT_HOST_REOPEN"
  | "ERR_USBVIRT_HOST_CLAIM"
  | "ERR_USBVIRT_HOST_IN_USE";

/** A host device that cannot be opened or used. The class owns its codes: HostDeviceCode lists every one. */
export class HostDeviceError extends UsbvirtError {
  declare readonly code: HostDeviceCode;
  constructor(code: HostDeviceCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(HostDeviceError);

export interface HostUsbDeviceOptions {
  /** Called once when the device went away (after it was released). */
  readonly onGone?: (reason: string) => void;
  readonly log?: (message: string) => void;
  /** How long close() and the unplug path wait for libusb to complete cancelled transfers (default 2000). */
  readonly drainTimeoutMs?: number;
}

export interface HostDeviceStats {
  /** Bulk and interrupt transfers run in place on guest memory. */
  zeroCopyTransfers: number;
  /** Control transfers bounced through a setup+data buffer, and their data bytes. */
  controlCopies: number;
  controlCopyBytes: number;
  isoRejected: number;
  cancels: number;
  /** Requests carried by the usbfs path (iso, and bulk/interrupt on its interfaces); null without it. */
  usbfs: UsbfsStats | null;
}

const TYPE_BY_KIND = {
  control: LibusbTransferType.CONTROL,
  bulk: LibusbTransferType.BULK,
  interrupt: LibusbTransferType.INTERRUPT,
  isochronous: LibusbTransferType.ISOCHRONOUS,
} as const;

interface InFlight {
  readonly request: TransferRequest;
  readonly done: TransferDone;
  /** Control only: setup + data as libusb wants it. */
  readonly bounce: Buffer | null;
  native: TransferHandleNative | null;
  /** Why a cancel was asked for: the guest's unlink, or close()/unplug. */
  cancelledBy: "unlink" | "close" | "gone" | null;
}

/** Find the one device `selector` names (serials are read only from candidates that match otherwise). */
export async function findHostDevice(selector: HostSelector): Promise<LibusbDevice> {
  const candidates = loadLibusb()
    .devices()
    .map((d) => ({ d, info: describeDevice(d) }))
    .filter(({ info }) => matchesSelector(info, { ...selector, serial: undefined }) || isSerialOnly(selector))
    .sort((a, b) => a.info.portPath.localeCompare(b.info.portPath, "en", { numeric: true }));
  for (const c of candidates) {
    const info = selector.serial === undefined ? c.info : await describeWithStrings(c.d);
    if (matchesSelector(info, selector)) return c.d;
  }
  throw new HostDeviceError(
    "ERR_USBVIRT_HOST_DEVICE_NOT_FOUND",
    `no host USB device matches ${formatSelector(selector)}`,
  );
}

function isSerialOnly(s: HostSelector): boolean {
  return (
    s.serial !== undefined && s.vendorId === undefined && s.productId === undefined && s.busPort === undefined
  );
}

export class HostUsbDevice implements UsbDevice {
  readonly stats: HostDeviceStats = {
    zeroCopyTransfers: 0,
    controlCopies: 0,
    controlCopyBytes: 0,
    isoRejected: 0,
    cancels: 0,
    usbfs: null,
  };
  /** The usbfs fd that owns the interfaces with isochronous endpoints (null: none, or unavailable). */
  private usbfs: UsbfsChannel | null = null;
  /** Endpoint address (bit 7 = IN) → interface, for the endpoints of interfaces usbfs owns. */
  private readonly usbfsEndpoints = new Map<number, number>();
  private dev: LibusbDevice | null = null;
  private identity: HostDeviceInfo | null = null;
  private infoValue: DeviceInfo | null = null;
  private readonly inFlight = new Map<number, InFlight>();
  private nextHandle = 1;
  private claimed: number[] = [];
  private readonly detachedDrivers = new Set<number>();
  private state: "new" | "open" | "gone" | "closing" | "closed" = "new";
  /** Something reached the device since open or the last reset. */
  private touched = false;
  private drained: (() => void) | null = null;
  /** The unplug path's release, which close() waits for (no native call may be pending when it resolves). */
  private goneDone: Promise<void> | null = null;
  private readonly goneListeners: ((reason: string) => void)[] = [];
  /** This thread's hold on the device against every other opener (./device-claim.ts). */
  private claim: DeviceClaim | null = null;
  /** Where what this device holds is published for the spawning thread (trackHoldings). */
  private held: HeldRecord | null = null;

  onGone(listener: (reason: string) => void): void {
    this.goneListeners.push(listener);
  }
  private readonly warned = new Set<string>();
  private readonly log: (message: string) => void;

  constructor(
    private readonly target: HostSelector | LibusbDevice,
    private readonly options: HostUsbDeviceOptions = {},
  ) {
    this.log = options.log ?? ((m) => process.stderr.write(`usbvirt host: ${m}\n`));
  }

  trackHoldings(record: SharedArrayBuffer): void {
    this.held = new HeldRecord(record);
  }

  /** Publish what is held now (open: the lock, the usbfs fd and its claims, the detached drivers). */
  private publishHeld(): void {
    const held = this.held;
    if (held === null) return;
    const claim = this.claim;
    const identity = this.identity;
    if (claim === null || identity === null) {
      held.clear();
      return;
    }
    const usbfs = this.usbfs?.holdings() ?? { fd: -1, interfaces: [] };
    held.publish({
      busNumber: identity.busNumber,
      deviceAddress: identity.deviceAddress,
      token: claim.token,
      usbfsFd: usbfs.fd,
      usbfsInterfaces: usbfs.interfaces,
      detachedDrivers: [...this.detachedDrivers],
    });
  }

  get info(): DeviceInfo {
    if (this.infoValue === null)
      throw new HostDeviceError("ERR_USBVIRT_HOST_NOT_OPEN", "host device is not open");
    return this.infoValue;
  }

  /** Identity of the device once open (vid, pid, bus, port path, speed). */
  get host(): HostDeviceInfo | null {
    return this.identity;
  }

  get isGone(): boolean {
    return this.state === "gone" || this.state === "closed";
  }

  async open(): Promise<void> {
    if (this.state !== "new")
      throw new HostDeviceError("ERR_USBVIRT_HOST_REOPEN", "host device was already opened");
    const dev = "identity" in this.target ? this.target : await findHostDevice(this.target);
    const identity = describeDevice(dev);
    const where = `${hex(identity.vendorId)}:${hex(identity.productId)} at ${identity.portPath}`;
    // Before anything reaches the device (a driver detached, an interface claimed): is it someone else's?
    const taken = claimHostDevice(identity);
    if (!taken.ok) {
      throw "holder" in taken
        ? new HostDeviceError("ERR_USBVIRT_HOST_IN_USE", `host device ${where} is in use by ${taken.holder}`)
        : new HostDeviceError("ERR_USBVIRT_HOST_OPEN", `cannot open host device ${where}: ${taken.error}`);
    }
    this.claim = taken.claim;
    const rc = dev.open();
    if (rc !== 0) {
      this.releaseClaim();
      throw new HostDeviceError(
        "ERR_USBVIRT_HOST_OPEN",
        `cannot open host device ${where}: libusb error ${rc}`,
      );
    }
    this.dev = dev;
    this.openUsbfs(identity, where);
    const claimError = this.claimAll();
    if (claimError !== null) {
      await this.releaseAll();
      await this.usbfs?.close();
      this.reattachDrivers(dev); // those detached before the interface that failed
      dev.close();
      this.releaseClaim();
      throw new HostDeviceError("ERR_USBVIRT_HOST_CLAIM", `cannot claim host device ${where}: ${claimError}`);
    }
    this.identity = identity;
    this.infoValue = {
      speed: usbSpeedOf(identity.speed),
      deviceDescriptor: deviceDescriptorBytes(dev.deviceDescriptor),
      configurations: dev.configurations.map(configurationBytes),
      name: `host ${where}`,
    };
    this.state = "open";
    this.publishHeld();
  }

  /** Open the usbfs path when the device has isochronous endpoints (see the header); a log line when it cannot. */
  private openUsbfs(identity: HostDeviceInfo, where: string): void {
    if (isoInterfaces(this.dev!.configurations).size === 0) return;
    const load = loadUsbfs();
    const channel = load.ok
      ? UsbfsChannel.open(load.libc, identity.busNumber, identity.deviceAddress, {
          log: (m) => this.log(`host ${where}: ${m}`),
          onGone: (reason) => this.markGone(reason),
        })
      : load.reason;
    if (typeof channel === "string") {
      this.warned.add("iso"); // the one line about iso for this device
      this.log(`host ${where}: isochronous URBs will fail with -EINVAL: ${channel}`);
      return;
    }
    this.usbfs = channel;
    this.stats.usbfs = channel.stats;
  }

  /** Detach kernel drivers and claim every interface of the active configuration; a message on failure. */
  private claimAll(): string | null {
    const dev = this.dev!;
    const iso = isoInterfaces(dev.activeConfiguration === undefined ? [] : [dev.activeConfiguration]);
    this.usbfsEndpoints.clear();
    for (const n of interfaceNumbers(dev.activeConfiguration)) {
      if (dev.kernelDriverActive(n) === 1) {
        const rc = dev.detachKernelDriver(n);
        if (rc !== 0) return `interface ${n}: detaching the kernel driver failed (libusb error ${rc})`;
        this.detachedDrivers.add(n);
        // That driver may have left the device in any state (alternate settings, class requests): the
        // guest's first reset is not redundant then, and must reach the device.
        this.touched = true;
      }
      const endpoints = iso.get(n);
      if (this.usbfs !== null && endpoints !== undefined) {
        const errno = this.usbfs.claim(n);
        if (errno !== 0) return `interface ${n}: usbfs claim failed (errno ${errno})`;
        for (const address of endpoints) this.usbfsEndpoints.set(address, n);
        continue;
      }
      const rc = dev.claimInterface(n);
      if (rc !== 0) return `interface ${n}: claim failed (libusb error ${rc})`;
      this.claimed.push(n);
    }
    return null;
  }

  private async releaseAll(): Promise<void> {
    const dev = this.dev!;
    for (const n of this.claimed) await dev.releaseInterface(n);
    this.claimed = [];
    this.usbfs?.releaseAll();
    this.usbfsEndpoints.clear();
  }

  submit(request: TransferRequest, done: TransferDone): TransferHandle {
    const handle = this.nextHandle++;
    if (this.state !== "open") {
      const status = this.state === "gone" ? ENODEV : ESHUTDOWN;
      setImmediate(() => done({ status, actualLength: 0 }));
      return handle;
    }
    const endpointAddr = endpointAddress(request.endpoint, request.directionIn);
    if (this.usbfs !== null && request.kind !== "control" && this.usbfsEndpoints.has(endpointAddr)) {
      this.touched = true;
      this.usbfs.submit(handle, request, done);
      return handle;
    }
    if (request.kind === "isochronous") {
      this.stats.isoRejected++;
      this.warnOnce(
        "iso",
        "isochronous URBs are not supported for host devices (node-usb has none): -EINVAL",
      );
      setImmediate(() => done({ status: ISO_UNSUPPORTED_STATUS, actualLength: 0 }));
      return handle;
    }
    if (request.zeroPacket && !request.directionIn) {
      this.warnOnce("zlp", "URB_ZERO_PACKET cannot be passed to libusb through node-usb; sent without it");
    }
    this.touched = true;
    const view = request.buffer;
    let buffer: Buffer;
    let bounce: Buffer | null = null;
    if (request.kind === "control") {
      // The setup packet is the guest's: its wLength, never the buffer's length (an IN buffer may be
      // padded beyond wLength; wLength 0 has no data stage, whatever the buffer).
      const s = request.setup!;
      const dataLength = s.wLength;
      if (dataLength > view.length) {
        // The gate refuses this (parse.ts); a device is never asked to write past the guest's buffer.
        setImmediate(() => done({ status: EINVAL, actualLength: 0 }));
        return handle;
      }
      bounce = Buffer.allocUnsafe(8 + dataLength);
      bounce.writeUInt8(s.bmRequestType, 0);
      bounce.writeUInt8(s.bRequest, 1);
      bounce.writeUInt16LE(s.wValue, 2);
      bounce.writeUInt16LE(s.wIndex, 4);
      bounce.writeUInt16LE(dataLength, 6);
      if (!request.directionIn) bounce.set(view.subarray(0, dataLength), 8);
      this.stats.controlCopies++;
      this.stats.controlCopyBytes += dataLength;
      buffer = bounce;
    } else {
      buffer = Buffer.from(view.buffer, view.byteOffset, view.length);
      this.stats.zeroCopyTransfers++;
    }
    const entry: InFlight = { request, done, bounce, native: null, cancelledBy: null };
    const native = this.dev!.submit(
      request.kind === "control" ? 0 : endpointAddr,
      TYPE_BY_KIND[request.kind],
      buffer,
      (status, actual) => this.finish(handle, status, actual),
    );
    if (typeof native === "number") {
      if (isNoDevice(native)) this.markGone("submit failed: no device");
      setImmediate(() => done({ status: libusbStatus(native), actualLength: 0 }));
      return handle;
    }
    entry.native = native;
    this.inFlight.set(handle, entry);
    return handle;
  }

  /** libusb's completion (always from the event loop). */
  private finish(handle: number, code: number, actual: number): void {
    const entry = this.inFlight.get(handle);
    if (entry === undefined) return;
    this.inFlight.delete(handle);
    const r = entry.request;
    let status: UrbStatus = libusbStatus(code);
    const limit = entry.bounce === null ? r.buffer.length : entry.bounce.length - 8;
    const actualLength = Math.max(0, Math.min(actual, limit));
    if (code === LibusbTransferStatus.CANCELLED) {
      status = entry.cancelledBy === "close" ? ESHUTDOWN : entry.cancelledBy === "gone" ? ENODEV : ECONNRESET;
    }
    if (entry.bounce !== null && r.directionIn && actualLength > 0) {
      r.buffer.set(entry.bounce.subarray(8, 8 + actualLength));
    }
    if (status === OK && r.directionIn && r.shortNotOk && actualLength < limit) status = EREMOTEIO;
    if (isNoDevice(code)) this.markGone("a transfer found the device gone");
    const result: TransferResult = { status, actualLength };
    entry.done(result);
    if (this.inFlight.size === 0 && this.drained !== null) {
      const resolve = this.drained;
      this.drained = null;
      setImmediate(resolve); // never release or close inside a transfer callback
    }
  }

  cancel(handle: TransferHandle): void {
    if (this.usbfs?.cancel(handle) === true) {
      this.stats.cancels++;
      return;
    }
    const entry = this.inFlight.get(handle);
    if (entry === undefined || entry.cancelledBy !== null) return;
    entry.cancelledBy = "unlink";
    this.stats.cancels++;
    entry.native?.cancel();
  }

  /** Cancel everything in flight and wait (bounded) for libusb to complete it. */
  private async drain(why: "close" | "gone"): Promise<void> {
    const limit = this.options.drainTimeoutMs ?? 2000;
    const usbfsDrained = this.usbfs?.drain(why, limit);
    await this.drainLibusb(why, limit);
    await usbfsDrained;
  }

  private async drainLibusb(why: "close" | "gone", limit: number): Promise<void> {
    for (const entry of this.inFlight.values()) {
      if (entry.cancelledBy === null) entry.cancelledBy = why;
      entry.native?.cancel();
    }
    if (this.inFlight.size === 0) return;
    const settled = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), limit);
      this.drained = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
    this.drained = null;
    if (!settled) {
      // libusb never completed them (the device is gone for good): answer anyway; the handle stays open.
      this.log(`${this.inFlight.size} transfer(s) did not complete within ${limit} ms; failing them`);
      for (const [h, entry] of [...this.inFlight]) {
        this.inFlight.delete(h);
        entry.done({ status: why === "close" ? ESHUTDOWN : ENODEV, actualLength: 0 });
      }
    }
  }

  private markGone(reason: string): void {
    if (this.state !== "open") return;
    this.state = "gone";
    this.log(`${this.infoValue?.name ?? "host device"}: unplugged (${reason})`);
    this.goneDone = new Promise((resolve) => setImmediate(resolve)).then(() => this.afterGone(reason));
  }

  private async afterGone(reason: string): Promise<void> {
    await this.drain("gone");
    await this.releaseAll();
    await this.usbfs?.close();
    if (this.inFlight.size === 0) this.dev?.close();
    this.releaseClaim();
    const closing = this.state === "closing"; // close() is waiting: the port is being detached anyway
    this.state = "closed";
    if (!closing) {
      this.options.onGone?.(reason);
      for (const listener of this.goneListeners) listener(reason);
    }
  }

  private async control(run: () => Promise<number>): Promise<UrbStatus> {
    if (this.state === "gone" || this.state === "closed") return ENODEV;
    if (this.state !== "open") return ESHUTDOWN;
    this.touched = true;
    const rc = await run();
    if (isNoDevice(rc)) this.markGone("a request found the device gone");
    return libusbStatus(rc);
  }

  async setConfiguration(value: number): Promise<UrbStatus> {
    const dev = this.dev;
    if (dev !== null && this.state === "open" && dev.activeConfiguration?.bConfigurationValue === value) {
      return OK; // opened in this configuration: nothing to change
    }
    return await this.control(async () => {
      await this.releaseAll();
      const rc = await dev!.setConfiguration(value);
      // The kernel replaced the interfaces (and probed drivers on the new ones, which claimAll detaches):
      // the drivers detached from the old ones are not theirs to re-attach on close.
      if (rc === 0) this.detachedDrivers.clear();
      const claimError = this.claimAll();
      this.publishHeld();
      if (claimError !== null) this.log(`after SET_CONFIGURATION(${value}): ${claimError}`);
      return rc;
    });
  }

  async setInterface(interfaceNumber: number, alternateSetting: number): Promise<UrbStatus> {
    const usbfs = this.usbfs;
    if (this.state === "open" && usbfs?.owns(interfaceNumber) === true) {
      this.touched = true;
      return usbfs.setInterface(interfaceNumber, alternateSetting);
    }
    if (this.state === "open" && !this.claimed.includes(interfaceNumber))
      return libusbStatus(LibusbError.NOT_FOUND);
    return await this.control(() => this.dev!.setInterface(interfaceNumber, alternateSetting));
  }

  async clearHalt(endpointAddress: number): Promise<UrbStatus> {
    if (this.state === "open" && this.usbfs !== null && this.usbfsEndpoints.has(endpointAddress)) {
      this.touched = true;
      return this.usbfs.clearHalt(endpointAddress);
    }
    return await this.control(() => this.dev!.clearHalt(endpointAddress));
  }

  async reset(): Promise<UrbStatus> {
    if (this.state === "open" && !this.touched) return OK; // already in its default state
    const status = await this.control(async () => {
      const rc = await this.dev!.reset();
      // NOT_FOUND: the device re-enumerated as something else (or left): for the guest it is gone.
      return rc === LibusbError.NOT_FOUND ? LibusbError.NO_DEVICE : rc;
    });
    this.touched = false;
    const lost = status === OK ? (this.usbfs?.reclaim() ?? []) : [];
    this.publishHeld();
    if (lost.length > 0)
      this.log(`after a port reset: usbfs could not claim interface(s) ${lost.join(", ")} again`);
    return status;
  }

  async close(): Promise<void> {
    if (this.state === "new") {
      this.state = "closed";
      return;
    }
    if (this.state === "closing" || this.state === "closed") return;
    const wasGone = this.state === "gone";
    this.state = "closing";
    await this.drain("close");
    if (wasGone) {
      // The unplug path releases and closes; wait for it, so that nothing native is pending when
      // close resolves (the backend may terminate this worker right after).
      await this.goneDone;
      return;
    }
    const dev = this.dev!;
    await this.releaseAll();
    await this.usbfs?.close();
    this.held?.usbfsClosed();
    this.reattachDrivers(dev);
    if (this.inFlight.size === 0) dev.close();
    this.releaseClaim();
    this.state = "closed";
  }

  /**
   * Give each detached kernel driver back, taking it off the record (./held-record.ts) once asked for:
   * a worker killed part way leaves the spawning thread the drivers not yet re-attached, and no other.
   */
  private reattachDrivers(dev: LibusbDevice): void {
    for (const n of [...this.detachedDrivers]) {
      const rc = dev.attachKernelDriver(n);
      this.detachedDrivers.delete(n);
      this.held?.driverReattached(n);
      if (rc !== 0 && rc !== LibusbError.NO_DEVICE)
        this.log(`interface ${n}: reattaching the kernel driver failed (${rc})`);
    }
  }

  private releaseClaim(): void {
    this.claim?.release();
    this.claim = null;
    this.held?.clear(); // last: until the lock is gone, the spawning thread may still have to release it
  }

  /**
   * The port worker is ending without close(): the usbfs fd releases its interfaces and is closed, and
   * libusb's handle is closed when nothing is in flight on it (the kernel then drops its claims; libusb's
   * own releases would need the event loop). Kernel drivers are not re-attached here (libusb refuses while
   * an interface is claimed, and its release is asynchronous): said in one log line.
   */
  abandon(): void {
    if (this.state === "new" || this.state === "closed") return;
    this.state = "closed";
    const left: string[] = [];
    try {
      this.usbfs?.abandon();
    } catch (err) {
      left.push(`the usbfs fd (${err instanceof Error ? err.message : String(err)})`);
    }
    if (this.inFlight.size === 0 && this.dev !== null) {
      const rc = this.dev.close();
      if (rc !== 0) left.push(`libusb's handle (libusb error ${rc})`);
    } else if (this.dev !== null) {
      left.push(`libusb's handle (${this.inFlight.size} transfer(s) in flight)`);
    }
    if (this.detachedDrivers.size > 0)
      left.push(`kernel driver(s) of interface(s) ${[...this.detachedDrivers].join(", ")} (not re-attached)`);
    if (this.held !== null && this.detachedDrivers.size > 0) {
      // The spawning thread re-attaches the drivers once this thread is gone (./held-record.ts), then
      // lets go of the lock: the record keeps the drivers and the lock, without the fd closed above.
      this.publishHeld();
      left.pop();
      left.push(
        `kernel driver(s) of interface(s) ${[...this.detachedDrivers].join(", ")} (left to the backend)`,
      );
    } else this.releaseClaim(); // what is still held is said below; the device is no longer this thread's
    if (left.length > 0)
      this.log(`${this.infoValue?.name ?? "host device"}: abandoned; still held: ${left.join("; ")}`);
  }

  private warnOnce(key: string, message: string): void {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.log(`${this.infoValue?.name ?? "host device"}: ${message}`);
  }
}

const hex = (n: number) => n.toString(16).padStart(4, "0");

/**
 * Interfaces (of `configurations`) with an isochronous endpoint in any
 * alternate setting, each with the addresses of all its endpoints.
 */
function isoInterfaces(configurations: readonly ParsedConfiguration[]): Map<number, Set<number>> {
  const found = new Map<number, Set<number>>();
  for (const c of configurations) {
    for (const alts of c.interfaces ?? []) {
      if (!alts.some((a) => a.endpoints.some((e) => (e.bmAttributes & 3) === 1))) continue;
      const n = alts[0]?.bInterfaceNumber;
      if (n === undefined) continue;
      const endpoints = found.get(n) ?? new Set<number>();
      for (const a of alts) for (const e of a.endpoints) endpoints.add(e.bEndpointAddress);
      found.set(n, endpoints);
    }
  }
  return found;
}
