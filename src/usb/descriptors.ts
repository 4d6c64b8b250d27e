/**
 * Descriptor type codes (bDescriptorType, USB 2.0 Table 9-5; HID 1.11 §7.1 for the HID class ones) and the
 * fixed lengths of the standard descriptors (§9.6). Building and walking descriptors is the devices' work
 * (src/devices/emulated/descriptors.ts); this is only their names.
 */

export const DescriptorType = {
  DEVICE: 0x01,
  CONFIGURATION: 0x02,
  STRING: 0x03,
  INTERFACE: 0x04,
  ENDPOINT: 0x05,
  DEVICE_QUALIFIER: 0x06,
  OTHER_SPEED_CONFIGURATION: 0x07,
  HID: 0x21,
  HID_REPORT: 0x22,
} as const;
export type DescriptorType = (typeof DescriptorType)[keyof typeof DescriptorType];

export const DEVICE_DESCRIPTOR_LENGTH = 18;
export const DEVICE_QUALIFIER_LENGTH = 10;
export const CONFIGURATION_DESCRIPTOR_LENGTH = 9;
export const INTERFACE_DESCRIPTOR_LENGTH = 9;
export const ENDPOINT_DESCRIPTOR_LENGTH = 7;
/** US English, the language id hosts ask strings in (USB LANGID table). */
export const LANGID_EN_US = 0x0409;
