/**
 * The backend's end of one port: the port ring (the backend is its
 * frontend), the ids of the port-ring requests in flight and what each one
 * stands for, and the host that runs the device: its own port worker
 * (worker-port.ts) or the backend's thread (inline-port.ts). The backend
 * speaks the same ring protocol to both.
 */

import type { GrantRef } from "../dma-map/types.js";
import type { PortStats } from "../port/port-service.js";
import { createPortIsoTable, PORT_RESPONSE_SIZE, PORT_RING_GEOMETRY } from "../port/port-wire.js";
import { FrontRing } from "../rings/front-ring.js";
import { IdPool } from "../rings/id-pool.js";
import type { PortNum, UrbId } from "../urb/types.js";
import type { UsbSpeed } from "../usb/index.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

/** One guest URB while it is on a port: what to answer and what to unpin when it completes (reused by the backend). */
export interface InFlightUrb {
  frontId: UrbId;
  port: PortNum;
  /** Port-ring id, or -1 for an unlink (it never reaches the port). */
  portId: number;
  bufferLength: number;
  /** Grant refs pinned for this URB (data segments and the iso descriptor array); swapped with the gate's. */
  pins: GrantRef[];
  /** Guest ids of unlink requests waiting for this URB to complete. */
  unlinkWaiters: UrbId[] | null;
  cancelSent: boolean;
  isPortReset: boolean;
}

export interface DeviceSummary {
  readonly name: string;
  readonly speed: UsbSpeed;
  readonly deviceDescriptor: Uint8Array;
  /** Where the device runs: on the backend's thread, or on a port worker of its own. */
  readonly placement: PortPlacement;
}

/**
 * Where a device runs. `worker`: a thread of its own, so a device or driver
 * that blocks or crashes takes down only its port (always so for host and
 * USB/IP devices). `backend`: on the backend worker's thread, for emulated
 * devices: no thread hand-off on the data path (see README, Benchmarks).
 */
export type PortPlacement = "backend" | "worker";

/**
 * How a port crashes (fault injection): "throw", an exception nothing catches — in the port worker's
 * event loop, or in the port service while the backend runs it (an inline port); "exit", process.exit on
 * the port worker (an inline port refuses: it would end the backend's thread).
 */
export type PortCrash = "throw" | "exit";

/** What a port host reports to the backend worker (each at most once). */
export interface PortHostEvents {
  /** The device disappeared; every completion it produced is already on the port ring. */
  gone(reason: string): void;
  /** The host failed (a worker crashed or exited, a device threw). */
  failed(reason: string): void;
  /** The device logged a line for the operator (UsbDevice.onLog). */
  log?(line: string): void;
}

/** What runs a port's device, seen from the backend worker. */
export interface PortHost {
  readonly placement: PortPlacement;
  /**
   * After the backend's publish: `notify` is the ring's verdict (the worker
   * asked to be woken). A device on the backend's thread is run regardless.
   */
  kick(notify: boolean): void;
  /** Publish the answers the device has made so far (before the backend reads them). */
  collect(): void;
  watch(events: PortHostEvents): void;
  stats(): Promise<PortStats & { inFlight: number }>;
  /** Call a device-specific method (e.g. the keyboard's pressKeys) by name, from an allowlist. */
  command(method: string, args: unknown[]): Promise<unknown>;
  /** Close the device: its in-flight transfers complete with -ESHUTDOWN first. */
  close(): Promise<void>;
  /** True when the host's event loop has not turned for `hungMs`. */
  isHung(now: number, hungMs: number): boolean;
  /** Release the host (terminate the worker, drop the device); idempotent. */
  retire(): Promise<void>;
  /** Fault injection: end the host abruptly. */
  kill(): Promise<void>;
  /** Fault injection: stall the host's event loop for `ms`. */
  freeze(ms: number): Promise<void>;
  /** Fault injection: crash the host for real (no close, no exit hook of ours is skipped or added). */
  crash(how: PortCrash): Promise<void>;
}

export class PortLink {
  readonly front: FrontRing;
  readonly ids = new IdPool(PORT_RING_GEOMETRY.slots);
  /** What each port-ring id stands for: a guest URB, or null for a cancel request. */
  readonly byPortId: (InFlightUrb | null)[] = new Array(PORT_RING_GEOMETRY.slots).fill(null);
  /** Set by detach: new URBs to this port get -ENODEV from then on. */
  closing = false;
  /** The port's iso table (port-wire.ts), over `isoTable`: the backend writes each iso URB's copied packets. */
  readonly isoPackets: Uint32Array;

  constructor(
    readonly port: number,
    readonly summary: DeviceSummary,
    ring: SharedArrayBuffer,
    readonly host: PortHost,
    /** Shared with the port service (PortServiceOptions.isoTable). */
    readonly isoTable: SharedArrayBuffer = createPortIsoTable(),
  ) {
    this.isoPackets = new Uint32Array(isoTable);
    this.front = new FrontRing(ring, PORT_RING_GEOMETRY, {
      ids: this.ids,
      responseBytes: PORT_RESPONSE_SIZE,
    });
  }
}

/**
 * A port whose device could not be started. Its code is ERR_USBVIRT_PORT_START
 * when the worker itself failed (no READY, crashed on start); when the device
 * refused to open (`PortStartError.deviceOpen`) the device's error is the
 * `cause` and its code is kept (ERR_USBVIRT_HOST_DEVICE_NOT_FOUND …), or
 * ERR_USBVIRT_DEVICE_OPEN when the device threw something without a code.
 */
export class PortStartError extends UsbvirtError {
  constructor(port: number, message: string, options?: { cause?: unknown; deviceOpen?: boolean }) {
    const cause = options?.cause;
    const code =
      options?.deviceOpen !== true
        ? "ERR_USBVIRT_PORT_START"
        : cause instanceof UsbvirtError
          ? cause.code
          : "ERR_USBVIRT_DEVICE_OPEN";
    super(code, `port ${port}: ${message}`, cause === undefined ? undefined : { cause });
  }

  /** The device on `port` refused to open with `cause`. */
  static deviceOpen(port: number, cause: unknown): PortStartError {
    return new PortStartError(port, cause instanceof Error ? cause.message : String(cause), {
      cause,
      deviceOpen: true,
    });
  }
}
registerErrorClass(PortStartError);
