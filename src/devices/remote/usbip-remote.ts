/**
 * A device backend that is a USB/IP client (what Linux's vhci-hcd is): it
 * imports one device from a USB/IP server (usbvirt's or Linux's usbipd) and
 * turns each transfer into CMD_SUBMIT / CMD_UNLINK on that connection, so a
 * VMM can use a device that sits on another machine. It runs in a port
 * worker like every other backend.
 *
 * open(): connect, OP_REQ_IMPORT, then read the device descriptor and every
 * configuration descriptor over the link (GET_DESCRIPTOR). Speed comes from
 * the import reply's record. SET_ADDRESS never reaches this backend (the
 * engine virtualises it), matching vhci, which never forwards it either; the
 * intercepted standard requests (SET_CONFIGURATION, SET_INTERFACE,
 * CLEAR_FEATURE(HALT), port reset) are sent as the control requests they
 * are, which the server's stub intercepts in turn.
 *
 * Statuses from the server go through the USB/IP boundary's translation
 * (src/usbip/status-and-speed.ts statusFromUsbip). A lost connection completes every
 * transfer in flight with -ESHUTDOWN, then `onGone` says why in plain words
 * (the port worker reports the port empty: the guest sees a disconnect; the
 * connection then reconnects and re-imports, src/engine/reconnect.ts). Nothing
 * waits forever: open() as a whole (connect, import, descriptors) is bounded
 * by the spec's `timeoutMs` (connect, import, descriptors: each), and once open the client's keepalive
 * (src/usbip/client.ts startKeepalive, `keepaliveMs`) notices a silent server.
 */

import { ECONNRESET, EPIPE, ESHUTDOWN, OK, type UrbStatus } from "../../urb/status.js";
import {
  CONFIGURATION_DESCRIPTOR_LENGTH,
  clearHaltSetup,
  DEVICE_DESCRIPTOR_LENGTH,
  DescriptorType,
  encodeSetup,
  getDescriptorSetup,
  portResetSetup,
  REQUEST_DIR_IN,
  REQUEST_DIR_MASK,
  type SetupPacket,
  setConfigurationSetup,
  setInterfaceSetup,
  UsbSpeed,
} from "../../usb/index.js";
import {
  DEFAULT_CLIENT_TIMEOUT_MS,
  type SubmitResult,
  UsbipClient,
  UsbipTimeoutError,
} from "../../usbip/client.js";
import { TransferFlag } from "../../usbip/protocol.js";
import { statusFromUsbip, usbifSpeedOf } from "../../usbip/status-and-speed.js";
import { registerErrorClass, UsbvirtError } from "../../util/errors.js";
import type {
  DeviceInfo,
  IsoPacketResult,
  TransferDone,
  TransferHandle,
  TransferRequest,
  TransferResult,
  UsbDevice,
} from "../device.js";
import type { UsbipDeviceSpec } from "../spec.js";

/** A device imported over USB/IP that cannot be used. */
export type UsbipRemoteCode =
  | "ERR_USBVIRT_USBIP_NOT_OPEN"
  | "ERR_USBVIRT_USBIP_CLOSED"
  | "ERR_USBVIRT_USBIP_DESCRIPTOR";

/** A device imported over USB/IP that cannot be used. The class owns its codes: UsbipRemoteCode lists every one. */
export class UsbipRemoteError extends UsbvirtError {
  declare readonly code: UsbipRemoteCode;
  constructor(code: UsbipRemoteCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbipRemoteError);

/** How long the link may be quiet before the client probes the server (see UsbipClient.startKeepalive). */
export const DEFAULT_KEEPALIVE_MS = 5000;

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

export class UsbipRemoteDevice implements UsbDevice {
  private client: UsbipClient | null = null;
  private infoValue: DeviceInfo | null = null;
  /** Transfers whose `done` has not been called, by seqnum. */
  private readonly live = new Set<number>();
  private closed = false;
  private goneListener: ((reason: string) => void) | null = null;
  private logListener: ((line: string) => void) | null = null;
  /** The server stalled our SET_FEATURE(PORT_RESET) once: resets are local from then on. */
  private localReset = false;

  constructor(readonly spec: UsbipDeviceSpec) {}

  private get timeoutMs(): number {
    return this.spec.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
  }

  get info(): DeviceInfo {
    if (this.infoValue === null) {
      throw new UsbipRemoteError("ERR_USBVIRT_USBIP_NOT_OPEN", "the USB/IP device is not open yet");
    }
    return this.infoValue;
  }

  private get where(): string {
    return `${this.spec.busid} on ${this.spec.host}:${this.spec.port ?? 3240}`;
  }

  async open(): Promise<void> {
    if (this.closed) throw new UsbipRemoteError("ERR_USBVIRT_USBIP_CLOSED", "device was closed");
    const client = await UsbipClient.connect({
      host: this.spec.host,
      port: this.spec.port ?? 3240,
      timeoutMs: this.timeoutMs,
      ...(this.spec.tls !== undefined ? { tls: this.spec.tls } : {}),
    });
    this.client = client;
    let deadline: NodeJS.Timeout | undefined;
    try {
      const record = await client.import(this.spec.busid); // bounded by the client's own timeout
      // One deadline for every descriptor read that follows.
      deadline = setTimeout(
        () =>
          client.abort(
            new UsbipTimeoutError(
              `the USB/IP server ${client.server} did not give ${this.spec.busid}'s descriptors within ${this.timeoutMs} ms`,
            ),
          ),
        this.timeoutMs,
      );
      const device = await this.getDescriptor(DescriptorType.DEVICE, 0, DEVICE_DESCRIPTOR_LENGTH);
      if (device.length !== DEVICE_DESCRIPTOR_LENGTH || device[1] !== DescriptorType.DEVICE) {
        throw new UsbipRemoteError(
          "ERR_USBVIRT_USBIP_DESCRIPTOR",
          `${this.where} sent a bad device descriptor`,
        );
      }
      const configurations: Uint8Array[] = [];
      for (let i = 0; i < device[17]!; i++) {
        const head = await this.getDescriptor(
          DescriptorType.CONFIGURATION,
          i,
          CONFIGURATION_DESCRIPTOR_LENGTH,
        );
        const total = head[2]! | (head[3]! << 8);
        configurations.push(await this.getDescriptor(DescriptorType.CONFIGURATION, i, total));
      }
      const speed = usbifSpeedOf(record.speed);
      this.infoValue = {
        speed: speed === UsbSpeed.NONE ? UsbSpeed.FULL : speed,
        deviceDescriptor: device,
        configurations,
        name: `usbip ${this.where} ${hex4(record.idVendor)}:${hex4(record.idProduct)}`,
      };
    } catch (err) {
      client.close();
      this.client = null;
      throw err;
    } finally {
      clearTimeout(deadline);
    }
    client.once("close", (err: Error) => {
      if (this.closed) return;
      // After the -ESHUTDOWN completions the close produced (onGone's contract).
      setImmediate(() => this.goneListener?.(err.message));
    });
    client.startKeepalive(this.spec.keepaliveMs ?? DEFAULT_KEEPALIVE_MS);
  }

  onGone(listener: (reason: string) => void): void {
    this.goneListener = listener;
  }

  onLog(listener: (line: string) => void): void {
    this.logListener = listener;
  }

  private async getDescriptor(type: number, index: number, length: number): Promise<Uint8Array> {
    const r = await this.control(getDescriptorSetup(type, index, length));
    if (r.status !== 0) {
      // A connection that ended (timeout, server gone) says why; a device that refused says that.
      const ended = this.client?.error ?? null;
      if (ended !== null) throw ended;
      throw new UsbipRemoteError(
        "ERR_USBVIRT_USBIP_DESCRIPTOR",
        `${this.where} did not give its ${type === DescriptorType.DEVICE ? "device" : `configuration ${index}`} descriptor (status ${r.status})`,
      );
    }
    return r.data;
  }

  private async control(setup: SetupPacket, data?: Uint8Array): Promise<SubmitResult> {
    const client = this.requireClient();
    const directionIn = (setup.bmRequestType & REQUEST_DIR_MASK) === REQUEST_DIR_IN;
    return await client.submit({
      ep: 0,
      directionIn,
      setup: encodeSetup(setup),
      ...(directionIn ? { length: setup.wLength } : { data: data ?? new Uint8Array(0) }),
    }).done;
  }

  private requireClient(): UsbipClient {
    if (this.client === null || this.client.closed) {
      throw new UsbipRemoteError(
        "ERR_USBVIRT_USBIP_CLOSED",
        `the connection to the USB/IP server for ${this.where} is closed`,
      );
    }
    return this.client;
  }

  submit(request: TransferRequest, done: TransferDone): TransferHandle {
    const client = this.client;
    if (client === null || client.closed) {
      queueMicrotask(() => done({ status: ESHUTDOWN, actualLength: 0 }));
      return -1;
    }
    let flags = 0;
    if (request.shortNotOk && request.directionIn) flags |= TransferFlag.SHORT_NOT_OK;
    if (request.zeroPacket && !request.directionIn) flags |= TransferFlag.ZERO_PACKET;
    if (request.kind === "isochronous") flags |= TransferFlag.ISO_ASAP;
    if (request.directionIn) flags |= TransferFlag.DIR_IN;
    const buffer = request.buffer;
    const { seqnum, done: reply } = client.submit({
      ep: request.endpoint,
      directionIn: request.directionIn,
      length: buffer.length,
      // The view is valid until done: OUT data is copied into the PDU right here.
      ...(request.directionIn ? {} : { data: buffer }),
      ...(request.setup !== null ? { setup: encodeSetup(request.setup) } : {}),
      transferFlags: flags,
      interval: request.interval,
      ...(request.isoPackets !== null ? { iso: request.isoPackets } : {}),
    });
    this.live.add(seqnum);
    void reply.then((r) => {
      if (!this.live.delete(seqnum)) return;
      done(this.resultOf(request, r));
    });
    return seqnum;
  }

  private resultOf(request: TransferRequest, r: SubmitResult): TransferResult {
    const status: UrbStatus = r.unlinked ? ECONNRESET : statusFromUsbip(r.status);
    const buffer = request.buffer;
    if (request.kind !== "isochronous") {
      const actual = Math.min(r.actualLength, buffer.length);
      if (request.directionIn && actual > 0) buffer.set(r.data.subarray(0, actual));
      return { status, actualLength: actual };
    }
    // Iso IN data arrives compacted: put each packet back at its offset.
    const packets = request.isoPackets ?? [];
    const isoPackets: IsoPacketResult[] = [];
    let at = 0;
    let total = 0;
    let errors = 0;
    for (let i = 0; i < packets.length; i++) {
      const p = packets[i]!;
      const d = r.iso[i];
      const actual = Math.min(d?.actualLength ?? 0, p.length);
      const packetStatus = d === undefined ? status : statusFromUsbip(d.status);
      if (request.directionIn && actual > 0 && at + actual <= r.data.length) {
        buffer.set(r.data.subarray(at, at + actual), p.offset);
      }
      at += request.directionIn ? (d?.actualLength ?? 0) : 0;
      total += actual;
      if (packetStatus !== OK) errors++;
      isoPackets.push({ status: packetStatus, actualLength: actual });
    }
    return { status, actualLength: total, isoPackets, startFrame: r.startFrame >>> 0, errorCount: errors };
  }

  cancel(handle: TransferHandle): void {
    if (!this.live.has(handle) || this.client === null || this.client.closed) return;
    // RET_UNLINK -ECONNRESET resolves the transfer as cancelled; 0 means its RET_SUBMIT already came.
    void this.client.unlink(handle);
  }

  private async standard(setup: SetupPacket): Promise<UrbStatus> {
    if (this.client === null || this.client.closed) return ESHUTDOWN;
    const r = await this.control(setup);
    return r.unlinked ? ECONNRESET : statusFromUsbip(r.status);
  }

  setConfiguration(value: number): Promise<UrbStatus> {
    return this.standard(setConfigurationSetup(value));
  }

  setInterface(interfaceNumber: number, alternateSetting: number): Promise<UrbStatus> {
    return this.standard(setInterfaceSetup(interfaceNumber, alternateSetting));
  }

  clearHalt(endpointAddress: number): Promise<UrbStatus> {
    return this.standard(clearHaltSetup(endpointAddress));
  }

  /**
   * SET_FEATURE(PORT_RESET) over the link: Linux's stub resets the device, usbvirt's server resets it in
   * its engine. That is a Linux convention (vhci-hcd itself never sends the request: it resets its port
   * locally); a server that hands the request to the device gets a stall (-EPIPE) back. Then the reset is
   * local, as vhci's: the port's state (address, configuration) was already reset by the engine, the
   * device keeps its own, and the next SET_CONFIGURATION brings both in line. Logged once per import.
   */
  async reset(): Promise<UrbStatus> {
    if (this.localReset) return this.client === null || this.client.closed ? ESHUTDOWN : OK;
    const status = await this.standard(portResetSetup(0));
    if (status !== EPIPE) return status;
    this.localReset = true;
    this.logListener?.(
      `the USB/IP server ${this.spec.host}:${this.spec.port ?? 3240} stalled the port reset of ${this.spec.busid} ` +
        "(it is not Linux's usbip-host and hands the request to the device); resets of this device are local from now on",
    );
    return OK;
  }

  async close(): Promise<void> {
    this.closed = true;
    const client = this.client;
    this.client = null;
    if (client === null) return;
    // Detach as vhci does: close the socket; the client completes what is in flight with -ESHUTDOWN.
    const closed = client.whenClosed();
    client.close();
    await closed;
    // Let the completions the close produced run before close resolves.
    await new Promise((r) => setImmediate(r));
  }
}
