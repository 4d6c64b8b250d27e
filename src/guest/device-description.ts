/**
 * What a server on the engine learns of a device before it offers it to a client (USB/IP's device
 * record, usbredir's device_connect, interface_info and ep_info): its device descriptor and every
 * configuration, read through the engine at address 0 right after a port reset, as a hub driver would.
 */
import type { DevAddr, PortNum } from "../urb/types.js";
import { CONFIGURATION_DESCRIPTOR_LENGTH, DEVICE_DESCRIPTOR_LENGTH, DescriptorType } from "../usb/index.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { type GuestUsbDriver, type InterfaceInfo, parseConfiguration } from "./guest-driver.js";

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
  return {
    vendorId: dev[8]! | (dev[9]! << 8),
    productId: dev[10]! | (dev[11]! << 8),
    bcdDevice: dev[12]! | (dev[13]! << 8),
    deviceClass: dev[4]!,
    deviceSubClass: dev[5]!,
    deviceProtocol: dev[6]!,
    configurations,
  };
}
