/**
 * Public types of the virtual host controller (the usbfront / xen-hcd
 * analogue): what a VMM submits, what it gets back, what the root hub
 * reports. Every number that crosses the API is branded (GuestOffset,
 * PortNum, DevAddr, EndpointNum, UrbId, UrbStatus).
 */
import type { GuestOffset } from "../dma-map/types.js";
import type { SpinLimiter } from "../rings/spin.js";
import type { IsoPacketResult } from "../urb/iso.js";
import type { UrbStatus } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum, UrbId } from "../urb/types.js";
import type { SetupPacket } from "../usb/index.js";

export type { IsoPacketResult };

/** One piece of a transfer buffer in guest memory (never zero-length). */
export interface BufferSegment {
  /** Byte offset in guest memory. */
  readonly offset: GuestOffset;
  readonly length: number;
}

/** Where one iso packet lies in the transfer buffer (offsets count from the buffer's first byte). */
export interface IsoPacketSpec {
  readonly offset: number;
  readonly length: number;
}

export interface IsoSchedule {
  /** Frame to start at; ignored when `asap`. */
  readonly startFrame?: number;
  /** Start at the next possible frame (ISO_ASAP). */
  readonly asap: boolean;
  /** 1..MAX_ISO_PACKETS packets. */
  readonly packets: readonly IsoPacketSpec[];
}

interface TransferCommon {
  readonly port: PortNum;
  /** The device's address on its port (0 until SET_ADDRESS). */
  readonly device: DevAddr;
  readonly endpoint: EndpointNum;
  /** True for IN (device to host): the buffer is granted writable. */
  readonly directionIn: boolean;
  /** Guest memory segments, 0..256, total ≤ 4 MiB; empty or absent when there is no data stage. */
  readonly buffer?: readonly BufferSegment[];
  /** A short IN completes with -EREMOTEIO. */
  readonly shortNotOk?: boolean;
}

export interface ControlTransfer extends TransferCommon {
  readonly type: "control";
  readonly setup: SetupPacket;
}

export interface BulkTransfer extends TransferCommon {
  readonly type: "bulk";
  /** OUT only: end with a zero-length packet when the length is a multiple of the packet size. */
  readonly zeroPacket?: boolean;
  /**
   * SuperSpeed bulk streams: the stream 1..65533 this transfer belongs to, on an endpoint whose streams
   * were allocated (VirtualHostController.allocStreams); absent or 0: no stream.
   */
  readonly streamId?: number;
}

export interface InterruptTransfer extends TransferCommon {
  readonly type: "interrupt";
  /** Polling interval in (micro)frames, ≥ 1. */
  readonly interval: number;
  readonly zeroPacket?: boolean;
}

export interface IsochronousTransfer extends TransferCommon {
  readonly type: "isochronous";
  /** Service interval in (micro)frames, 1..65535. */
  readonly interval: number;
  readonly iso: IsoSchedule;
}

/** A USB request block as the VMM submits it. The object is also its handle for unlink(). */
export type Urb = ControlTransfer | BulkTransfer | InterruptTransfer | IsochronousTransfer;
export type UrbType = Urb["type"];

export interface UrbCompletion {
  readonly status: UrbStatus;
  /** Bytes transferred, clamped to [0, buffer length] (xen-hcd does the same). */
  readonly actualLength: number;
  readonly startFrame: number;
  /** Iso packets that completed with an error. */
  readonly errorCount: number;
  /** Per-packet results of an isochronous URB that reached the backend (actualLength clamped to the packet's). */
  readonly isoPackets?: readonly IsoPacketResult[];
  /** Why the frontend itself refused or ended the URB (absent when the backend answered). */
  readonly detail?: string;
}

/** Completion callback; called exactly once per submitted URB, never synchronously inside submit. */
export type UrbCallback = (completion: UrbCompletion) => void;

/** The root hub's change bits (USB 2.0 §11.24.2.7.2, the ones this hub produces). */
export type PortChange = "connection" | "enable" | "reset";

/** A snapshot of one root-hub port. */
export interface PortStatus {
  readonly port: PortNum;
  readonly connected: boolean;
  readonly enabled: boolean;
  /** usbif speed: 0 none, 1 low, 2 full, 3 high, 4 super. */
  readonly speed: number;
  readonly resetting: boolean;
  /** Address the frontend believes the port's device has (tracked from SET_ADDRESS and reset). */
  readonly address: DevAddr;
  readonly changes: { readonly connection: boolean; readonly enable: boolean; readonly reset: boolean };
}

/** Why the controller stopped talking to its backend. */
export interface BackendLossReason {
  /** "control-plane" (backendLost called), or "ring-fault" (detected by the controller). */
  readonly cause: "control-plane" | "ring-fault";
  readonly message: string;
  /** Which ring faulted and its RingFault code, for cause "ring-fault". */
  readonly ring?: "urb" | "conn";
  readonly fault?: number;
}

export interface ControllerEvents {
  /** A port's status changed (connect, disconnect, reset done, enable, address). */
  portChange: (status: PortStatus) => void;
  /** A protocol fault was detected; the controller has already handled it like a lost backend. */
  fault: (reason: BackendLossReason) => void;
  /** Every outstanding URB has been completed with -ESHUTDOWN; waiting for backendReady(). */
  backendLost: (reason: BackendLossReason) => void;
  /** Rings reset, conn ring re-posted: URBs flow again. */
  backendReady: () => void;
  /** A completion callback threw; the controller caught it and carried on. */
  callbackError: (error: unknown) => void;
}
export type ControllerEventName = keyof ControllerEvents;

export interface ControllerStats {
  /** URBs accepted by submit (including those refused at once). */
  readonly submitted: number;
  /** URBs whose callback has run. */
  readonly completed: number;
  /** Completions by non-zero status name, e.g. { ENODEV: 2, ESHUTDOWN: 5 }. */
  readonly errors: Readonly<Record<string, number>>;
  /** URBs waiting in the pending queue. */
  readonly pending: number;
  /** Ring requests (URBs and unlinks) published and not yet answered. */
  readonly inFlight: number;
  /** Sum of completed URBs' actual lengths. */
  readonly bytes: number;
  /** Unlink requests sent on the ring. */
  readonly unlinksSent: number;
  /** Times the backend was lost (control plane or fault). */
  readonly backendLosses: number;
}

export interface ControllerOptions {
  /** Longest adaptive spin before parking in start()'s loop, µs (default 50; 0 never spins). */
  readonly maxSpinMicros?: number;
  /** Shared cap on spinning threads. */
  readonly spinLimiter?: SpinLimiter;
  /**
   * start()'s loop yields to the event loop (setImmediate) after this many
   * back-to-back polls that found work without sleeping (default 32).
   */
  readonly pollsPerYield?: number;
}

/** What unlink() resolves with: the status the unlink request was answered with. */
export type UnlinkTarget = Urb | UrbId;
