/**
 * What a server on the engine learns of a device before it offers it to a client (USB/IP's device
 * record, usbredir's device_connect, interface_info and ep_info): its device descriptor and every
 * configuration, and its serial number when it has one (iSerialNumber, in the first language its string
 * descriptor 0 lists, as Linux reads it), read through the engine at address 0 right after a port reset,
 * as a hub driver would. A device that stalls a string request has no serial; the serial is the device's
 * own text (any character, at most 126 of them): whoever prints it escapes it.
 */
import type { DevAddr, PortNum } from "../urb/types.js";
import { CONFIGURATION_DESCRIPTOR_LENGTH, DEVICE_DESCRIPTOR_LENGTH, DescriptorType } from "../usb/index.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import {
  GuestTransferError,
  type GuestUsbDriver,
  type InterfaceInfo,
  parseConfiguration,
} from "./guest-driver.js";

export interface ConfigurationInfo {
  /** bConfigurationValue. */
  readonly value: number;
  /** Every interface descriptor, alternates included, in descriptor order. */
  readonly interfaces: readonly InterfaceInfo[];
}

export interface DeviceDescription {
  readonly vendorId: number;
  readonly productId: number;
  readonly bcdDevice: number;
  readonly deviceClass: number;
  readonly deviceSubClass: number;
  readonly deviceProtocol: number;
  readonly configurations: readonly ConfigurationInfo[];
  /** The serial number string, when iSerialNumber names one the device gives. */
  readonly serial?: string;
}

/** A device whose descriptors cannot be read or make no sense. */
export class DeviceDescriptionError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_DEVICE_DESCRIPTION";
  constructor(message: string) {
    super("ERR_USBVIRT_DEVICE_DESCRIPTION", message);
  }
}
registerErrorClass(DeviceDescriptionError);

/** Reset the port's device and read its descriptors (it is left at address 0, unconfigured). */
export async function readDeviceDescription(
  guest: GuestUsbDriver,
  port: PortNum,
): Promise<DeviceDescription> {
  await guest.waitForConnect(port);
  await guest.hcd.resetPort(port);
  const zero = 0 as DevAddr;
  const dev = await guest.getDescriptor(port, zero, DescriptorType.DEVICE, 0, DEVICE_DESCRIPTOR_LENGTH);
  if (dev.length < 18) throw new DeviceDescriptionError(`short device descriptor (${dev.length} bytes)`);
  const configurations: ConfigurationInfo[] = [];
  for (let i = 0; i < dev[17]!; i++) {
    const head = await guest.getDescriptor(
      port,
      zero,
      DescriptorType.CONFIGURATION,
      i,
      CONFIGURATION_DESCRIPTOR_LENGTH,
    );
    const total = head[2]! | (head[3]! << 8);
    configurations.push(
      parseConfiguration(await guest.getDescriptor(port, zero, DescriptorType.CONFIGURATION, i, total)),
    );
  }
  const serial = await readSerial(guest, port, dev[16]!);
  return {
    vendorId: dev[8]! | (dev[9]! << 8),
    productId: dev[10]! | (dev[11]! << 8),
    bcdDevice: dev[12]! | (dev[13]! << 8),
    deviceClass: dev[4]!,
    deviceSubClass: dev[5]!,
    deviceProtocol: dev[6]!,
    configurations,
    ...(serial !== undefined ? { serial } : {}),
  };
}

/** A string descriptor is at most 255 bytes: its length byte, its type, then UTF-16LE. */
const STRING_DESCRIPTOR_MAX = 255;

/** The body of a string descriptor as the device sent it, or undefined when it is not one. */
function stringBody(d: Uint8Array): Uint8Array | undefined {
  if (d.length < 2 || d[1] !== DescriptorType.STRING) return undefined;
  const end = Math.min(d[0]!, d.length);
  return end < 2 ? undefined : d.subarray(2, end - (end % 2));
}

/** String `index` in the device's first language, or undefined when the device has none to give. */
async function readSerial(guest: GuestUsbDriver, port: PortNum, index: number): Promise<string | undefined> {
  if (index === 0) return undefined;
  const zero = 0 as DevAddr;
  try {
    const langs = stringBody(
      await guest.getDescriptor(port, zero, DescriptorType.STRING, 0, STRING_DESCRIPTOR_MAX),
    );
    if (langs === undefined || langs.length < 2) return undefined;
    const langId = langs[0]! | (langs[1]! << 8);
    const body = stringBody(
      await guest.getDescriptor(port, zero, DescriptorType.STRING, index, STRING_DESCRIPTOR_MAX, langId),
    );
    if (body === undefined || body.length === 0) return undefined;
    return Buffer.from(body).toString("utf16le");
  } catch (err) {
    // A stall (no strings, no such index) is the device saying it has none; anything else is a real failure.
    if (err instanceof GuestTransferError) return undefined;
    throw err;
  }
}
