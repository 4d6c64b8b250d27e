/**
 * The exported devices: each one's slot (its port and bus id, its USB/IP device record, its endpoint
 * table per configuration, its region of guest memory, who imported it) and describeDevice, which attaches
 * a device on its port and reads what the record and the table need through the engine, as a guest would.
 * The slot is generic in its owner (the importing client's session) so this file needs nothing above it.
 */
import { PortStartError } from "../backend/port-link.js";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import type { Connection } from "../engine/connection.js";
import {
  type DeviceDescription,
  DeviceDescriptionError,
  readDeviceDescription,
} from "../guest/device-description.js";
import type { GuestUsbDriver } from "../guest/guest-driver.js";
import type { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { ENDPOINT_TYPE_MASK, EndpointType } from "../usb/index.js";
import { type DeviceRecord, devidOf } from "../usbip/device-record.js";
import { usbipSpeedOf } from "../usbip/status-and-speed.js";
import { UsbipServerError } from "./options.js";

/** One exported device as `usbvirt serve` prints it. */
export interface ExportedDeviceInfo {
  readonly busid: string;
  readonly devid: number;
  readonly port: number;
  readonly name: string;
  readonly spec: DeviceSpec;
  readonly record: DeviceRecord;
  /** The device's serial number string, when it has one (what discovery announces). */
  readonly serial?: string;
}

export interface EndpointEntry {
  readonly type: number;
  readonly interval: number;
}

/** What endpoint 0 (and an endpoint no table names) is taken to be. */
export const CONTROL_ENTRY: EndpointEntry = { type: EndpointType.CONTROL, interval: 0 };

/** One exported device and its importer (`Owner`: the client session holding it, or null). */
export interface DeviceSlot<Owner> {
  readonly port: PortNum;
  readonly busid: string;
  readonly devid: number;
  readonly spec: DeviceSpec;
  readonly name: string;
  readonly record: DeviceRecord;
  readonly serial?: string;
  /** Endpoint address (bit 7 = IN) → type, per configuration value. */
  readonly endpoints: ReadonlyMap<number, ReadonlyMap<number, EndpointEntry>>;
  /** Every endpoint of every configuration (used while unconfigured). */
  readonly anyEndpoints: ReadonlyMap<number, EndpointEntry>;
  readonly address: DevAddr;
  /** This device's region of guest memory: its client's URB buffers and unsent IN data live here. */
  readonly memory: GuestBufferAllocator;
  readonly memoryBytes: number;
  owner: Owner | null;
  /** Resolves once the previous owner's URBs have all come back. */
  draining: Promise<void> | null;
  configuration: number;
  failed: string | null;
  /** The failure was the device going away (unplug), not misbehaving. */
  gone: boolean;
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

/** Attach one device on its port and read what the device record needs, through the engine. */
export async function describeDevice<Owner>(
  conn: Connection,
  guest: GuestUsbDriver,
  port: PortNum,
  spec: DeviceSpec,
  memory: GuestBufferAllocator,
  memoryBytes: number,
): Promise<DeviceSlot<Owner>> {
  let summary: Awaited<ReturnType<Connection["attach"]>>;
  try {
    summary = await conn.attach(port, spec);
  } catch (err) {
    // The device's own words, without the engine's "port N:" (an exported device has no port to a user).
    const why = err instanceof PortStartError && err.cause instanceof Error ? err.cause : (err as Error);
    throw new UsbipServerError(
      "ERR_USBVIRT_USBIP_DEVICE",
      `cannot export ${describeSpec(spec)}: ${why.message}`,
      { cause: err },
    );
  }
  const hcd = conn.frontend!;
  let d: DeviceDescription;
  try {
    d = await readDeviceDescription(guest, port);
  } catch (err) {
    if (!(err instanceof DeviceDescriptionError)) throw err;
    throw new UsbipServerError("ERR_USBVIRT_USBIP_DEVICE", `${summary.name}: ${err.message}`);
  }
  const endpoints = new Map<number, Map<number, EndpointEntry>>();
  const anyEndpoints = new Map<number, EndpointEntry>();
  for (const parsed of d.configurations) {
    const table = new Map<number, EndpointEntry>();
    for (const itf of parsed.interfaces) {
      for (const ep of itf.endpoints) {
        const entry = { type: ep.attributes & ENDPOINT_TYPE_MASK, interval: ep.interval };
        table.set(ep.address, entry);
        if (!anyEndpoints.has(ep.address)) anyEndpoints.set(ep.address, entry);
      }
    }
    endpoints.set(parsed.value, table);
  }
  const first = d.configurations[0] ?? { value: 0, interfaces: [] };
  const busid = `1-${port}`;
  const vendor = d.vendorId;
  const product = d.productId;
  const record: DeviceRecord = {
    path: `/sys/devices/platform/usbvirt/usb1/${busid}`,
    busid,
    busnum: 1,
    devnum: port,
    speed: usbipSpeedOf(hcd.portStatus(port).speed),
    idVendor: vendor,
    idProduct: product,
    bcdDevice: d.bcdDevice,
    bDeviceClass: d.deviceClass,
    bDeviceSubClass: d.deviceSubClass,
    bDeviceProtocol: d.deviceProtocol,
    bConfigurationValue: first.value,
    bNumConfigurations: d.configurations.length,
    interfaces: first.interfaces
      .filter((i) => i.alternate === 0)
      .map((i) => ({ cls: i.cls, subclass: i.subclass, protocol: i.protocol })),
  };
  return {
    port,
    busid,
    devid: devidOf(record),
    spec,
    name: `${summary.name} ${hex4(vendor)}:${hex4(product)}`,
    record,
    ...(d.serial !== undefined ? { serial: d.serial } : {}),
    endpoints,
    anyEndpoints,
    address: port as number as DevAddr,
    memory,
    memoryBytes,
    owner: null,
    draining: null,
    configuration: 0,
    failed: null,
    gone: false,
  };
}
