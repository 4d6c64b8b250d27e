/**
 * Descriptor type codes (bDescriptorType, USB 2.0 Table 9-5, USB 3.2 Table 9-6; HID 1.11 §7.1 for the HID class ones) and the
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
  /** USB 3.2 Table 9-6: Binary Device Object Store, its device capabilities, the endpoint companion. */
  BOS: 0x0f,
  DEVICE_CAPABILITY: 0x10,
  SS_ENDPOINT_COMPANION: 0x30,
  HID: 0x21,
  HID_REPORT: 0x22,
} as const;
export type DescriptorType = (typeof DescriptorType)[keyof typeof DescriptorType];

export const DEVICE_DESCRIPTOR_LENGTH = 18;
export const DEVICE_QUALIFIER_LENGTH = 10;
export const CONFIGURATION_DESCRIPTOR_LENGTH = 9;
export const INTERFACE_DESCRIPTOR_LENGTH = 9;
export const ENDPOINT_DESCRIPTOR_LENGTH = 7;
/** USB 3.2 §9.6.2 (BOS header), §9.6.7 (SuperSpeed endpoint companion). */
export const BOS_DESCRIPTOR_LENGTH = 5;
export const SS_ENDPOINT_COMPANION_LENGTH = 6;
/** bDevCapabilityType (USB 3.2 Table 9-14). */
/** A SuperSpeed bulk endpoint's MaxStreams (companion bmAttributes bits 4..0) is an exponent 1..16. */
export const MAX_STREAMS_EXPONENT = 16;
export const SS_COMPANION_STREAMS_MASK = 0x1f;
/** The streams a companion's MaxStreams exponent offers (0: none). */
export function streamsOfExponent(exponent: number): number {
  const e = exponent & SS_COMPANION_STREAMS_MASK;
  return e === 0 ? 0 : 2 ** Math.min(e, MAX_STREAMS_EXPONENT);
}
export const DeviceCapabilityType = { USB_2_0_EXTENSION: 0x02, SUPERSPEED_USB: 0x03 } as const;
/** US English, the language id hosts ask strings in (USB LANGID table). */
export const LANGID_EN_US = 0x0409;
