/**
 * The 8-byte control setup packet (USB 2.0 §9.3): its one type, its codec (u16 fields little-endian, on the
 * wire as on the bus — usbif, USB/IP and usbredir's data all carry it so), and builders for the standard
 * requests the engine and its tools send, so no caller spells a request as raw numbers.
 *
 *   0 bmRequestType u8 | 1 bRequest u8 | 2 wValue u16 | 4 wIndex u16 | 6 wLength u16
 */
import { DescriptorType, LANGID_EN_US } from "./descriptors.js";
import { Feature, HubPortFeature, RequestTypeByte, StandardRequest, StreamsRequest } from "./requests.js";

export const SETUP_PACKET_SIZE = 8;

/** The control setup packet, decoded, fields in the spec's names. */
export interface SetupPacket {
  readonly bmRequestType: number;
  readonly bRequest: number;
  readonly wValue: number;
  readonly wIndex: number;
  readonly wLength: number;
}

/** A setup packet a decoder fills in place (one per reader, no allocation per URB). */
export type MutableSetupPacket = { -readonly [K in keyof SetupPacket]: SetupPacket[K] };

/** A zeroed setup packet to fill with decodeSetupInto. */
export function emptySetup(): MutableSetupPacket {
  return { bmRequestType: 0, bRequest: 0, wValue: 0, wIndex: 0, wLength: 0 };
}

/** Decode the 8 setup bytes at `offset` of `bytes` into `into` (allocates nothing). */
export function decodeSetupInto(
  bytes: Uint8Array,
  offset: number,
  into: MutableSetupPacket,
): MutableSetupPacket {
  into.bmRequestType = bytes[offset]!;
  into.bRequest = bytes[offset + 1]!;
  into.wValue = bytes[offset + 2]! | (bytes[offset + 3]! << 8);
  into.wIndex = bytes[offset + 4]! | (bytes[offset + 5]! << 8);
  into.wLength = bytes[offset + 6]! | (bytes[offset + 7]! << 8);
  return into;
}

/** Decode the 8 setup bytes at `offset` (default 0) of `bytes`. */
export function decodeSetup(bytes: Uint8Array, offset = 0): SetupPacket {
  if (bytes.length < offset + SETUP_PACKET_SIZE) {
    throw new RangeError(`setup packet: need ${SETUP_PACKET_SIZE} bytes at ${offset}, have ${bytes.length}`);
  }
  return decodeSetupInto(bytes, offset, emptySetup());
}

/** Write the setup packet's 8 bytes at `offset` of `into` (allocates nothing). */
export function encodeSetupInto(s: SetupPacket, into: Uint8Array, offset: number): void {
  into[offset] = s.bmRequestType;
  into[offset + 1] = s.bRequest;
  into[offset + 2] = s.wValue & 0xff;
  into[offset + 3] = (s.wValue >>> 8) & 0xff;
  into[offset + 4] = s.wIndex & 0xff;
  into[offset + 5] = (s.wIndex >>> 8) & 0xff;
  into[offset + 6] = s.wLength & 0xff;
  into[offset + 7] = (s.wLength >>> 8) & 0xff;
}

/** The setup packet's 8 bytes, a new array. */
export function encodeSetup(s: SetupPacket): Uint8Array {
  const bytes = new Uint8Array(SETUP_PACKET_SIZE);
  encodeSetupInto(s, bytes, 0);
  return bytes;
}

/** Whether `s` is the standard request `request` with request type `type`. */
export function isRequest(
  s: Pick<SetupPacket, "bmRequestType" | "bRequest">,
  type: number,
  request: number,
): boolean {
  return s.bmRequestType === type && s.bRequest === request;
}

// ---------------------------------------------------------------- standard requests, built

/** GET_DESCRIPTOR(type, index): wValue is type << 8 | index, wIndex the language id (strings) or 0. */
export function getDescriptorSetup(type: number, index: number, length: number, langId = 0): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.DEVICE_IN,
    bRequest: StandardRequest.GET_DESCRIPTOR,
    wValue: ((type & 0xff) << 8) | (index & 0xff),
    wIndex: langId,
    wLength: length,
  };
}

/** GET_DESCRIPTOR(STRING, index) in US English. */
export function getStringSetup(index: number, length: number, langId = LANGID_EN_US): SetupPacket {
  return getDescriptorSetup(DescriptorType.STRING, index, length, langId);
}

/** GET_STATUS(device): two bytes back. */
export function getDeviceStatusSetup(): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.DEVICE_IN,
    bRequest: StandardRequest.GET_STATUS,
    wValue: 0,
    wIndex: 0,
    wLength: 2,
  };
}

/** GET_CONFIGURATION: one byte back, the current bConfigurationValue. */
export function getConfigurationSetup(): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.DEVICE_IN,
    bRequest: StandardRequest.GET_CONFIGURATION,
    wValue: 0,
    wIndex: 0,
    wLength: 1,
  };
}

/** GET_INTERFACE: one byte back, the interface's current alternate setting. */
export function getInterfaceSetup(interfaceNumber: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.INTERFACE_IN,
    bRequest: StandardRequest.GET_INTERFACE,
    wValue: 0,
    wIndex: interfaceNumber,
    wLength: 1,
  };
}

export function setAddressSetup(address: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.DEVICE_OUT,
    bRequest: StandardRequest.SET_ADDRESS,
    wValue: address,
    wIndex: 0,
    wLength: 0,
  };
}

export function setConfigurationSetup(value: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.DEVICE_OUT,
    bRequest: StandardRequest.SET_CONFIGURATION,
    wValue: value,
    wIndex: 0,
    wLength: 0,
  };
}

export function setInterfaceSetup(interfaceNumber: number, alternateSetting: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.INTERFACE_OUT,
    bRequest: StandardRequest.SET_INTERFACE,
    wValue: alternateSetting,
    wIndex: interfaceNumber,
    wLength: 0,
  };
}

/** CLEAR_FEATURE(ENDPOINT_HALT) on an endpoint address (bit 7 = IN). */
export function clearHaltSetup(endpointAddress: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.ENDPOINT_OUT,
    bRequest: StandardRequest.CLEAR_FEATURE,
    wValue: Feature.ENDPOINT_HALT,
    wIndex: endpointAddress,
    wLength: 0,
  };
}

/** A hub's SET_FEATURE(PORT_RESET) on port `port` (what vhci sends down a USB/IP link for a reset). */
export function portResetSetup(port: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.PORT_OUT,
    bRequest: StandardRequest.SET_FEATURE,
    wValue: HubPortFeature.PORT_RESET,
    wIndex: port,
    wLength: 0,
  };
}

/** usbvirt's ALLOC_STREAMS port request (requests.ts StreamsRequest): `streams` ids on `endpointAddress`. */
export function allocStreamsSetup(endpointAddress: number, streams: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.PORT_OUT,
    bRequest: StreamsRequest.ALLOC_STREAMS,
    wValue: streams,
    wIndex: endpointAddress,
    wLength: 0,
  };
}

/** usbvirt's FREE_STREAMS port request: the streams of `endpointAddress` go. */
export function freeStreamsSetup(endpointAddress: number): SetupPacket {
  return {
    bmRequestType: RequestTypeByte.PORT_OUT,
    bRequest: StreamsRequest.FREE_STREAMS,
    wValue: 0,
    wIndex: endpointAddress,
    wLength: 0,
  };
}

// ---------------------------------------------------------------- standard requests, recognised

export function isSetAddress(s: SetupPacket): boolean {
  return isRequest(s, RequestTypeByte.DEVICE_OUT, StandardRequest.SET_ADDRESS);
}

export function isSetConfiguration(s: SetupPacket): boolean {
  return isRequest(s, RequestTypeByte.DEVICE_OUT, StandardRequest.SET_CONFIGURATION);
}

export function isSetInterface(s: SetupPacket): boolean {
  return isRequest(s, RequestTypeByte.INTERFACE_OUT, StandardRequest.SET_INTERFACE);
}

export function isClearHalt(s: SetupPacket): boolean {
  return (
    isRequest(s, RequestTypeByte.ENDPOINT_OUT, StandardRequest.CLEAR_FEATURE) &&
    s.wValue === Feature.ENDPOINT_HALT
  );
}

export function isAllocStreams(s: SetupPacket): boolean {
  return isRequest(s, RequestTypeByte.PORT_OUT, StreamsRequest.ALLOC_STREAMS) && s.wLength === 0;
}

export function isFreeStreams(s: SetupPacket): boolean {
  return isRequest(s, RequestTypeByte.PORT_OUT, StreamsRequest.FREE_STREAMS) && s.wLength === 0;
}

/** SET_FEATURE(PORT_RESET) sent down the port, as USB/IP's vhci does for a port reset. */
export function isPortReset(s: SetupPacket): boolean {
  return (
    isRequest(s, RequestTypeByte.PORT_OUT, StandardRequest.SET_FEATURE) &&
    s.wValue === HubPortFeature.PORT_RESET
  );
}
