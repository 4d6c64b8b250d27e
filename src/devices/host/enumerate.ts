/**
 * Listing the host's USB devices through libusb: identity from the device
 * descriptor, bus and port path from libusb, speed from sysfs (Linux) or a
 * guess from the descriptor, and the manufacturer / product / serial strings
 * when the device can be opened (each read bounded by a timeout). Used by
 * `usbvirt list`, the selectors and the hotplug watcher.
 */
import { readFileSync } from "node:fs";
import { encodeSetupInto, endpointAddress, getStringSetup, UsbSpeed } from "../../usb/index.js";
import { type LibusbDevice, LibusbTransferStatus, LibusbTransferType, loadLibusb } from "./libusb.js";

export { LibusbUnavailableError } from "./libusb.js";

export type HostSpeed = "low" | "full" | "high" | "super" | "super-plus" | "unknown";

export interface HostDeviceInfo {
  readonly vendorId: number;
  readonly productId: number;
  readonly busNumber: number;
  readonly deviceAddress: number;
  /** Bus and port path as Linux names the device in sysfs, e.g. "1-1.2" ("usb1" for a root hub). */
  readonly portPath: string;
  readonly serial?: string;
  readonly speed: HostSpeed;
  readonly deviceClass: number;
  /** The device's release number (device descriptor bcdDevice). */
  readonly bcdDevice?: number;
  /** bInterfaceClass of each interface of the active configuration (absent when it cannot be read). */
  readonly interfaceClasses?: readonly number[];
  readonly manufacturer?: string;
  readonly product?: string;
}

export interface ListOptions {
  /** Open each device to read its strings (default true). */
  readonly strings?: boolean;
  /** Per string read (default 500 ms). */
  readonly stringTimeoutMs?: number;
}

export function portPathOf(d: LibusbDevice): string {
  const ports = d.identity.portNumbers;
  return ports.length === 0 ? `usb${d.identity.busNumber}` : `${d.identity.busNumber}-${ports.join(".")}`;
}

const SPEED_BY_MBPS: ReadonlyMap<string, HostSpeed> = new Map([
  ["1.5", "low"],
  ["12", "full"],
  ["480", "high"],
  ["5000", "super"],
  ["10000", "super-plus"],
  ["20000", "super-plus"],
]);

/** Speed from sysfs (`/sys/bus/usb/devices/<port path>/speed`), else a guess from the descriptor. */
export function speedOf(d: LibusbDevice): HostSpeed {
  try {
    const mbps = readFileSync(`/sys/bus/usb/devices/${portPathOf(d)}/speed`, "utf8").trim();
    const s = SPEED_BY_MBPS.get(mbps);
    if (s !== undefined) return s;
  } catch {
    // not Linux, or no sysfs: guess below
  }
  if (d.identity.bcdUSB >= 0x0300 && d.identity.bMaxPacketSize0 === 9) return "super";
  return "unknown";
}

/** The engine's speed for a host speed (unknown and faster-than-super are presented as full and super). */
export function usbSpeedOf(s: HostSpeed): UsbSpeed {
  switch (s) {
    case "low":
      return UsbSpeed.LOW;
    case "high":
      return UsbSpeed.HIGH;
    case "super":
    case "super-plus":
      return UsbSpeed.SUPER;
    default:
      return UsbSpeed.FULL;
  }
}

/** Identity without opening the device. */
export function describeDevice(d: LibusbDevice): HostDeviceInfo {
  return {
    vendorId: d.identity.idVendor,
    productId: d.identity.idProduct,
    busNumber: d.identity.busNumber,
    deviceAddress: d.identity.deviceAddress,
    portPath: portPathOf(d),
    speed: speedOf(d),
    deviceClass: d.identity.bDeviceClass,
    bcdDevice: d.identity.bcdDevice,
    ...interfaceClassesOf(d),
  };
}

/** The interface classes of the active configuration (read from sysfs / the cached descriptors, no open). */
function interfaceClassesOf(d: LibusbDevice): { interfaceClasses?: readonly number[] } {
  try {
    const config = d.activeConfiguration;
    if (config === undefined) return {};
    return { interfaceClasses: config.interfaces.map((alts) => alts[0]?.bInterfaceClass ?? 0) };
  } catch {
    return {}; // unconfigured or unreadable: judged on the device class alone
  }
}

/** GET_DESCRIPTOR(STRING, index, en-US) on an open device; undefined on any failure or timeout. */
export function readString(d: LibusbDevice, index: number, timeoutMs: number): Promise<string | undefined> {
  if (index === 0) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const buf = Buffer.alloc(8 + 255);
    encodeSetupInto(getStringSetup(index, 255), buf, 0);
    let timer: NodeJS.Timeout | undefined;
    const h = d.submit(endpointAddress(0, true), LibusbTransferType.CONTROL, buf, (status, actual) => {
      clearTimeout(timer);
      if (status !== LibusbTransferStatus.COMPLETED || actual < 2) resolve(undefined);
      else resolve(buf.toString("utf16le", 10, 8 + Math.min(actual, buf[8]!)));
    });
    if (typeof h === "number") resolve(undefined);
    else timer = setTimeout(() => h.cancel(), timeoutMs);
  });
}

/** Open `d` briefly and read its strings. Devices that cannot be opened keep only their identity. */
export async function describeWithStrings(d: LibusbDevice, timeoutMs = 500): Promise<HostDeviceInfo> {
  const base = describeDevice(d);
  if (d.open() !== 0) return base;
  try {
    const manufacturer = await readString(d, d.identity.iManufacturer, timeoutMs);
    const product = await readString(d, d.identity.iProduct, timeoutMs);
    const serial = await readString(d, d.identity.iSerialNumber, timeoutMs);
    return {
      ...base,
      ...(manufacturer !== undefined ? { manufacturer } : {}),
      ...(product !== undefined ? { product } : {}),
      ...(serial !== undefined ? { serial } : {}),
    };
  } finally {
    d.close();
  }
}

/**
 * Every USB device libusb sees (root hubs included), sorted by port path.
 * Throws LibusbUnavailableError (code ERR_USBVIRT_LIBUSB_UNAVAILABLE) when libusb cannot be used;
 * an empty list means libusb works and sees no device.
 */
export async function listHostDevices(options: ListOptions = {}): Promise<HostDeviceInfo[]> {
  const devices = loadLibusb().devices();
  const out: HostDeviceInfo[] = [];
  for (const d of devices) {
    out.push(
      options.strings === false ? describeDevice(d) : await describeWithStrings(d, options.stringTimeoutMs),
    );
  }
  return out.sort((a, b) => a.portPath.localeCompare(b.portPath, "en", { numeric: true }));
}
