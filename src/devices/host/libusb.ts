/**
 * The native boundary: the ONLY module that loads npm `usb` (major version 2,
 * libusb 1.0 bundled; `usb@3` is a different, non-libusb library). Everything
 * else in usbvirt talks to libusb through the small typed surface below, in
 * which failures are libusb codes (numbers), never exceptions, and callbacks
 * always come from a later event-loop turn (node-usb's rule: completions
 * arrive through the thread's event loop via uv_async, AsyncWorker for the
 * blocking calls — the caller's loop must stay free).
 *
 * Facts this relies on (node-usb src/transfer.cc, src/device.cc):
 * - `Transfer.submit(buffer)` hands `buffer.Data()` to libusb_submit_transfer and
 *   keeps a reference until completion: a Buffer over a SharedArrayBuffer is
 *   used in place (zero copy; checked under umockdev, test/host).
 * - Transfer flags are never set (no SHORT_NOT_OK, no ADD_ZERO_PACKET), and a
 *   control transfer's buffer must start with the 8-byte setup packet.
 * - A cancelled transfer still completes (status CANCELLED); the device cannot
 *   be closed while a transfer is pending.
 * - reset / clear halt / set configuration / set interface run on the libuv pool.
 */
import { createRequire } from "node:module";
import type * as UsbModule from "usb";
import { registerErrorClass, UsbvirtError } from "../../util/errors.js";

/** libusb_transfer_status (libusb.h). */
export const LibusbTransferStatus = {
  COMPLETED: 0,
  ERROR: 1,
  TIMED_OUT: 2,
  CANCELLED: 3,
  STALL: 4,
  NO_DEVICE: 5,
  OVERFLOW: 6,
} as const;

/** libusb_error (libusb.h). */
export const LibusbError = {
  SUCCESS: 0,
  IO: -1,
  INVALID_PARAM: -2,
  ACCESS: -3,
  NO_DEVICE: -4,
  NOT_FOUND: -5,
  BUSY: -6,
  TIMEOUT: -7,
  OVERFLOW: -8,
  PIPE: -9,
  INTERRUPTED: -10,
  NO_MEM: -11,
  NOT_SUPPORTED: -12,
  OTHER: -99,
} as const;

/** libusb_transfer_type (libusb.h). */
export const LibusbTransferType = { CONTROL: 0, ISOCHRONOUS: 1, BULK: 2, INTERRUPT: 3 } as const;
export type LibusbTransferType = (typeof LibusbTransferType)[keyof typeof LibusbTransferType];

/** libusb cannot be loaded or initialised in this process. */
export class LibusbUnavailableError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_LIBUSB_UNAVAILABLE";
  constructor(message: string, cause?: unknown) {
    super("ERR_USBVIRT_LIBUSB_UNAVAILABLE", message, cause === undefined ? undefined : { cause });
  }
}
registerErrorClass(LibusbUnavailableError);

/** The parts of a node-usb Device usbvirt reads without opening it. */
export interface LibusbDeviceIdentity {
  readonly busNumber: number;
  readonly deviceAddress: number;
  /** Port numbers from the root hub down, e.g. [1, 2] for "1-1.2". */
  readonly portNumbers: readonly number[];
  readonly idVendor: number;
  readonly idProduct: number;
  readonly bcdUSB: number;
  readonly bcdDevice: number;
  readonly bDeviceClass: number;
  readonly bMaxPacketSize0: number;
  readonly iManufacturer: number;
  readonly iProduct: number;
  readonly iSerialNumber: number;
}

/** One raw descriptor as libusb parsed it, plus the bytes it did not parse ("extra"). */
export type ParsedConfiguration = UsbModule.ConfigDescriptor;
export type ParsedDeviceDescriptor = UsbModule.DeviceDescriptor;

export interface TransferHandleNative {
  /** libusb_cancel_transfer; false when the transfer was no longer pending. */
  cancel(): boolean;
}

export type TransferCallback = (status: number, actualLength: number) => void;

/** A host device as libusb sees it. Methods that can fail return a libusb code (0 = success). */
export class LibusbDevice {
  readonly identity: LibusbDeviceIdentity;

  constructor(
    private readonly lib: Libusb,
    /** @internal */ readonly native: UsbModule.Device,
  ) {
    const d = native.deviceDescriptor;
    this.identity = {
      busNumber: native.busNumber,
      deviceAddress: native.deviceAddress,
      portNumbers: native.portNumbers ?? [],
      idVendor: d.idVendor,
      idProduct: d.idProduct,
      bcdUSB: d.bcdUSB,
      bcdDevice: d.bcdDevice,
      bDeviceClass: d.bDeviceClass,
      bMaxPacketSize0: d.bMaxPacketSize0,
      iManufacturer: d.iManufacturer,
      iProduct: d.iProduct,
      iSerialNumber: d.iSerialNumber,
    };
  }

  get deviceDescriptor(): ParsedDeviceDescriptor {
    return this.native.deviceDescriptor;
  }

  /** Every configuration descriptor as libusb parsed it ([] when unreadable). */
  get configurations(): readonly ParsedConfiguration[] {
    return this.native.allConfigDescriptors;
  }

  /** The active configuration (undefined when unconfigured or unreadable). */
  get activeConfiguration(): ParsedConfiguration | undefined {
    return this.native.configDescriptor;
  }

  /** libusb_open (no configuration is set, no interface claimed). */
  open(): number {
    return code(() => this.native.open(false));
  }

  /** libusb_close. Fails (returns OTHER) while transfers are pending. */
  close(): number {
    return code(() => this.native.close());
  }

  claimInterface(n: number): number {
    return code(() => this.native.__claimInterface(n));
  }

  releaseInterface(n: number): Promise<number> {
    return viaCallback((cb) => this.native.__releaseInterface(n, cb));
  }

  /** 1 active, 0 not, or a negative libusb code (NOT_SUPPORTED where the OS cannot tell). */
  kernelDriverActive(n: number): number {
    try {
      return this.native.__isKernelDriverActive(n) ? 1 : 0;
    } catch (err) {
      return errno(err);
    }
  }

  detachKernelDriver(n: number): number {
    return code(() => this.native.__detachKernelDriver(n));
  }

  attachKernelDriver(n: number): number {
    return code(() => this.native.__attachKernelDriver(n));
  }

  setConfiguration(value: number): Promise<number> {
    return viaCallback((cb) => this.native.__setConfiguration(value, cb));
  }

  setInterface(n: number, alternate: number): Promise<number> {
    return viaCallback((cb) => this.native.__setInterface(n, alternate, cb));
  }

  clearHalt(endpointAddress: number): Promise<number> {
    return viaCallback((cb) => this.native.__clearHalt(endpointAddress, cb));
  }

  reset(): Promise<number> {
    return viaCallback((cb) => this.native.reset(cb));
  }

  /**
   * Submit one transfer on `buffer` in place (no copy). `callback` runs exactly
   * once, from the event loop, with a libusb_transfer_status and the actual
   * length. Returns the handle, or a negative libusb code when submit failed
   * (the callback then never runs).
   */
  submit(
    endpointAddress: number,
    type: LibusbTransferType,
    buffer: Buffer,
    callback: TransferCallback,
  ): TransferHandleNative | number {
    try {
      const t = new this.lib.module.Transfer(this.native, endpointAddress, type, 0, (error, _buf, actual) => {
        callback(
          error === undefined || error === null ? LibusbTransferStatus.COMPLETED : error.errno,
          actual,
        );
      });
      t.submit(buffer);
      return { cancel: () => cancelQuietly(t) };
    } catch (err) {
      return errno(err);
    }
  }
}

function cancelQuietly(t: UsbModule.Transfer): boolean {
  try {
    return t.cancel();
  } catch {
    return false;
  }
}

function errno(err: unknown): number {
  const e = (err as { errno?: unknown } | null)?.errno;
  return typeof e === "number" ? e : LibusbError.OTHER;
}

function code(fn: () => void): number {
  try {
    fn();
    return LibusbError.SUCCESS;
  } catch (err) {
    return errno(err);
  }
}

function viaCallback(start: (cb: (error?: { errno: number }) => void) => void): Promise<number> {
  return new Promise((resolve) => {
    try {
      start((error) => resolve(error === undefined || error === null ? 0 : errno(error)));
    } catch (err) {
      resolve(errno(err));
    }
  });
}

export interface Libusb {
  /** @internal */ readonly module: typeof UsbModule;
  devices(): LibusbDevice[];
  /** Hotplug: `listener` gets each attached / detached device. Returns the unsubscribe. */
  onHotplug(listener: (event: "attach" | "detach", device: LibusbDevice) => void): () => void;
  /** Let the process exit while hotplug listeners are registered. */
  unrefHotplug(): void;
}

let loaded: Libusb | null = null;

/** What requireUsb needs of Node's `require` (tests pass one that cannot find the package). */
export interface UsbRequire {
  (id: string): unknown;
  resolve(id: string): string;
}

export const USB_PACKAGE_MISSING = "host USB devices need the optional package 'usb' (npm install usb)";

/**
 * Load npm `usb`, which is an optionalDependency: emulated devices and USB/IP
 * work without it. It is required on demand (never imported statically), so a
 * process without it only fails where a host device is asked for. A package
 * that cannot be found says how to get it; one that is there but does not load
 * (no native binary for this platform) says why.
 */
export function requireUsb(req: UsbRequire = createRequire(import.meta.url)): typeof UsbModule {
  try {
    req.resolve("usb");
  } catch (err) {
    throw new LibusbUnavailableError(USB_PACKAGE_MISSING, err);
  }
  try {
    return req("usb") as typeof UsbModule;
  } catch (err) {
    throw new LibusbUnavailableError(
      `libusb cannot be used: loading npm 'usb' failed (${(err as Error).message})`,
      err,
    );
  }
}

/** Load npm `usb` once per thread (each worker gets its own libusb context). */
export function loadLibusb(): Libusb {
  if (loaded !== null) return loaded;
  const mod = requireUsb();
  if (mod.usb.INIT_ERROR !== 0) {
    throw new LibusbUnavailableError(`libusb cannot be used: libusb_init failed (${mod.usb.INIT_ERROR})`);
  }
  const lib: Libusb = {
    module: mod,
    devices() {
      try {
        return mod.getDeviceList().map((d) => new LibusbDevice(lib, d));
      } catch (err) {
        throw new LibusbUnavailableError(`libusb cannot list devices: ${(err as Error).message}`, err);
      }
    },
    onHotplug(listener) {
      const attach = (d: UsbModule.Device) => listener("attach", new LibusbDevice(lib, d));
      const detach = (d: UsbModule.Device) => listener("detach", new LibusbDevice(lib, d));
      mod.usb.on("attach", attach);
      mod.usb.on("detach", detach);
      return () => {
        mod.usb.off("attach", attach);
        mod.usb.off("detach", detach);
      };
    },
    unrefHotplug() {
      mod.usb.unrefHotplugEvents();
    },
  };
  loaded = lib;
  return lib;
}
