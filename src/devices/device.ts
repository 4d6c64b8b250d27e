/**
 * The one interface every device backend implements: the emulated devices
 * (src/devices/emulated), host devices through libusb (src/devices/host) and
 * devices imported over USB/IP (src/devices/remote). The device contract sits
 * below the port service: one port service (src/port/port-service.ts, on a
 * port worker or on the backend's thread) owns exactly one UsbDevice and
 * drives it; nothing else touches it. Modelled on crosvm's devices/src/usb/backend/device.rs and the
 * libusb calls it maps onto.
 *
 * Contract
 * - submit() never calls `done` synchronously (node-usb's rule): completion
 *   always comes from a later task (queueMicrotask / setImmediate / I/O).
 * - `done` is called exactly once per submitted transfer: with its result,
 *   or with -ECONNRESET when cancel() caught it first. cancel() of a transfer
 *   that already completed (or an unknown handle) does nothing.
 * - Buffers are views straight into guest memory (zero copy). For OUT the
 *   device reads `buffer`; for IN it writes into `buffer` and reports how many
 *   bytes it wrote in actualLength (≤ buffer.length). The view is valid only
 *   until `done` is called: a device must not keep it.
 * - USB outcomes are statuses (negative errno, src/urb/status.ts), never
 *   exceptions: stall -EPIPE, babble -EOVERFLOW, short with SHORT_NOT_OK
 *   -EREMOTEIO, device gone -ENODEV / -ESHUTDOWN.
 * - Standard requests that change device state reach the device through the
 *   dedicated methods, never as control transfers: the port service intercepts
 *   SET_CONFIGURATION, SET_INTERFACE, CLEAR_FEATURE(ENDPOINT_HALT) and the port
 *   reset; the backend virtualises SET_ADDRESS (the device never sees it).
 *   Everything else on endpoint 0 (GET_DESCRIPTOR, GET_STATUS, class and
 *   vendor requests, …) arrives through submit() as a control transfer.
 */

import type { IsoPacketResult } from "../urb/iso.js";
import type { UrbStatus } from "../urb/status.js";
import type { SetupPacket, TransferKind, UsbSpeed } from "../usb/index.js";

export type { IsoPacketResult };

/**
 * The buffer of a transfer with no data stage, shared by the port service and the device models: zero
 * bytes long, nothing can be written to it, so one serves every such transfer (no allocation per URB).
 */
export const NO_DATA: Uint8Array = new Uint8Array(0);

export interface IsoPacketRequest {
  /** Offset of this packet's data in the transfer buffer. */
  readonly offset: number;
  readonly length: number;
}

export interface TransferRequest {
  readonly kind: TransferKind;
  /** Endpoint number 0..15 (without the direction bit). */
  readonly endpoint: number;
  /** true: device to host. */
  readonly directionIn: boolean;
  /** Control transfers only: the 8-byte setup packet, decoded. */
  readonly setup: SetupPacket | null;
  /** The data stage: OUT data to consume, or IN space to fill. Its length is the requested length. */
  readonly buffer: Uint8Array;
  /** An IN transfer that ends short is an error (-EREMOTEIO). */
  readonly shortNotOk: boolean;
  /** An OUT transfer whose length is a multiple of wMaxPacketSize ends with a zero-length packet. */
  readonly zeroPacket: boolean;
  /** Interrupt and isochronous: polling interval as requested by the guest. */
  readonly interval: number;
  /** Isochronous only: the packets, in order. */
  readonly isoPackets: readonly IsoPacketRequest[] | null;
  /** Bulk only: the stream 1..n of the endpoint's allocated streams (0: none); checked by the port. */
  readonly streamId: number;
}

export interface TransferResult {
  status: UrbStatus;
  actualLength: number;
  /** Isochronous only: one entry per requested packet. */
  isoPackets?: IsoPacketResult[];
  /** Isochronous only: frame number the transfer started in. */
  startFrame?: number;
  /** Isochronous only: packets that failed. */
  errorCount?: number;
}

export type TransferDone = (result: TransferResult) => void;

/** A submitted transfer, for cancel(). */
export type TransferHandle = number;

export interface DeviceInfo {
  readonly speed: UsbSpeed;
  /** The 18-byte device descriptor. */
  readonly deviceDescriptor: Uint8Array;
  /** Each full configuration descriptor set (configuration + interfaces + endpoints …), by index. */
  readonly configurations: readonly Uint8Array[];
  /** Human-readable identity for logs and `usbvirt list`. */
  readonly name: string;
}

export interface UsbDevice {
  readonly info: DeviceInfo;

  /** Make the device ready (claim interfaces for libusb). Resolves once transfers may be submitted. */
  open(): Promise<void>;

  submit(request: TransferRequest, done: TransferDone): TransferHandle;

  cancel(handle: TransferHandle): void;

  /** SET_CONFIGURATION. Resolves to a status (-EPIPE when the value is not a configuration). */
  setConfiguration(value: number): Promise<UrbStatus>;

  /** SET_INTERFACE. */
  setInterface(interfaceNumber: number, alternateSetting: number): Promise<UrbStatus>;

  /** CLEAR_FEATURE(ENDPOINT_HALT) on the endpoint address (bit 7 = IN). Resets its data toggle too. */
  clearHalt(endpointAddress: number): Promise<UrbStatus>;

  /** Port reset: the device returns to the default state (address 0, unconfigured). */
  reset(): Promise<UrbStatus>;
  /**
   * SuperSpeed bulk streams: ids 1..`streams` on bulk endpoint `endpointAddress` of the active settings
   * (USB 3.2 §8.12.1.4; xHCI's stream contexts, usbfs USBDEVFS_ALLOC_STREAMS). OK, or -EINVAL when the
   * endpoint offers fewer (or the device cannot do streams at all). Absent: no streams (-EINVAL).
   */
  allocStreams?(endpointAddress: number, streams: number): Promise<UrbStatus>;
  freeStreams?(endpointAddress: number): Promise<UrbStatus>;

  /**
   * Release the device. Transfers still in flight complete with -ESHUTDOWN
   * before close resolves.
   */
  close(): Promise<void>;

  /**
   * The thread is ending without close() (an uncaught exception, process.exit
   * on a port worker): give back, synchronously and without waiting for any
   * completion, what the device holds outside this thread (file descriptors,
   * claimed interfaces). Nothing is answered; a no-op after close().
   */
  abandon?(): void;

  /**
   * Publish what the device holds outside this thread into `record` (a
   * src/devices/host/held-record.ts buffer) from now on, so the thread that
   * spawned this one can give it back if this thread is killed. Call before open().
   */
  trackHoldings?(record: SharedArrayBuffer): void;

  /**
   * Devices that can disappear (unplug) call `listener` once, after every
   * transfer in flight has completed (-ENODEV). The port worker then tells
   * the backend, which reports a disconnect on the port.
   */
  onGone?(listener: (reason: string) => void): void;

  /** Devices with something to tell the operator (not an error of a transfer) call `listener` with one line. */
  onLog?(listener: (line: string) => void): void;
}
