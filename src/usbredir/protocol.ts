/**
 * The usbredir wire format (spice/usbredir docs/usb-redirection-protocol.md, version 0.7; the facts
 * QEMU's side depends on are in DESIGN.md's usbredir notes): packet types, capabilities, the
 * type-specific header layouts, and the encoders for both directions. Little-endian, packed.
 *
 * A packet is `type u32, length u32, id u32|u64` (the id is 64-bit once both hellos carried
 * cap_64bits_ids), then a type-specific header whose size depends on the capabilities both sides
 * have, then data. `length` counts the type header and the data. QEMU's parser is strict and a
 * packet it refuses aborts the VM (it asserts on the leftover bytes), so every encoder here writes
 * exactly the size the negotiated capabilities call for, and the data rules of `dataAllowed`.
 */
import { endpointAddressOfIndex, endpointIndex, endpointIsIn } from "../usb/index.js";

export const REDIR_VERSION_SIZE = 64;

export const RedirType = {
  HELLO: 0,
  DEVICE_CONNECT: 1,
  DEVICE_DISCONNECT: 2,
  RESET: 3,
  INTERFACE_INFO: 4,
  EP_INFO: 5,
  SET_CONFIGURATION: 6,
  GET_CONFIGURATION: 7,
  CONFIGURATION_STATUS: 8,
  SET_ALT_SETTING: 9,
  GET_ALT_SETTING: 10,
  ALT_SETTING_STATUS: 11,
  START_ISO_STREAM: 12,
  STOP_ISO_STREAM: 13,
  ISO_STREAM_STATUS: 14,
  START_INTERRUPT_RECEIVING: 15,
  STOP_INTERRUPT_RECEIVING: 16,
  INTERRUPT_RECEIVING_STATUS: 17,
  ALLOC_BULK_STREAMS: 18,
  FREE_BULK_STREAMS: 19,
  BULK_STREAMS_STATUS: 20,
  CANCEL_DATA_PACKET: 21,
  FILTER_REJECT: 22,
  FILTER_FILTER: 23,
  DEVICE_DISCONNECT_ACK: 24,
  START_BULK_RECEIVING: 25,
  STOP_BULK_RECEIVING: 26,
  BULK_RECEIVING_STATUS: 27,
  CONTROL_PACKET: 100,
  BULK_PACKET: 101,
  ISO_PACKET: 102,
  INTERRUPT_PACKET: 103,
  BUFFERED_BULK_PACKET: 104,
} as const;
export type RedirType = (typeof RedirType)[keyof typeof RedirType];

const TYPE_NAMES = new Map<number, string>(Object.entries(RedirType).map(([k, v]) => [v, k.toLowerCase()]));

/** "bulk_packet" for 101; "type 77" for a number that is no packet type. */
export function redirTypeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `type ${type}`;
}

/** Status codes of replies and stream statuses. */
export const RedirStatus = {
  SUCCESS: 0,
  CANCELLED: 1,
  INVAL: 2,
  IOERROR: 3,
  STALL: 4,
  TIMEOUT: 5,
  BABBLE: 6,
} as const;
export type RedirStatus = (typeof RedirStatus)[keyof typeof RedirStatus];

export const RedirSpeed = { LOW: 0, FULL: 1, HIGH: 2, SUPER: 3, UNKNOWN: 255 } as const;

/** Endpoint types in ep_info (the USB bmAttributes transfer types, plus "none"). */
export const RedirEpType = { CONTROL: 0, ISO: 1, BULK: 2, INTERRUPT: 3, INVALID: 255 } as const;

/** Capability bit numbers (bit n of caps word 0). */
export const RedirCap = {
  BULK_STREAMS: 0,
  CONNECT_DEVICE_VERSION: 1,
  FILTER: 2,
  DEVICE_DISCONNECT_ACK: 3,
  EP_INFO_MAX_PACKET_SIZE: 4,
  IDS_64BIT: 5,
  BULK_LENGTH_32BIT: 6,
  BULK_RECEIVING: 7,
} as const;

/** Capabilities as a bit set (word 0; no later word is defined). */
export type Caps = number;

export function hasCap(caps: Caps, cap: number): boolean {
  return (caps & (1 << cap)) !== 0;
}

export function capsOf(...caps: number[]): Caps {
  return caps.reduce((set, cap) => set | (1 << cap), 0);
}

/** The side of the link: the usb-host owns the device (usbvirt redirect), the usb-guest uses it (QEMU). */
export type RedirRole = "host" | "guest";

/** What both sides negotiated: the intersection of the two hellos' capabilities. */
export interface Negotiated {
  readonly caps: Caps;
  /** 12 or 16. */
  readonly headerSize: number;
}

export const HELLO_NEGOTIATED: Negotiated = { caps: 0, headerSize: 12 };

export function negotiate(ours: Caps, theirs: Caps): Negotiated {
  let caps = ours & theirs;
  // The reference parser drops bulk_streams when ep_info cannot carry max_packet_size.
  if (!hasCap(caps, RedirCap.EP_INFO_MAX_PACKET_SIZE)) caps &= ~(1 << RedirCap.BULK_STREAMS);
  return { caps, headerSize: hasCap(caps, RedirCap.IDS_64BIT) ? 16 : 12 };
}

/** Largest data part the readers accept (an OUT transfer or IN reply; usbvirt's URB ceiling is 4 MiB). */
export const MAX_REDIR_DATA = 4 * 1024 * 1024;
/** Largest hello capability list accepted (16 words; one is defined). */
export const MAX_HELLO_CAPS_BYTES = 64;
/** Largest filter string accepted, with its NUL. */
export const MAX_FILTER_BYTES = 4096;

/**
 * Size of a type's own header under `caps`, or -1 when that type is not sent by `from`. The sizes are
 * the protocol header's structs (usbredirproto.h), shortened where a capability is missing.
 */
export function typeHeaderSize(type: number, caps: Caps, from: RedirRole): number {
  const host = from === "host";
  switch (type) {
    case RedirType.HELLO:
      return REDIR_VERSION_SIZE;
    case RedirType.DEVICE_CONNECT:
      return host ? (hasCap(caps, RedirCap.CONNECT_DEVICE_VERSION) ? 10 : 8) : -1;
    case RedirType.DEVICE_DISCONNECT:
      return host ? 0 : -1;
    case RedirType.RESET:
      return host ? -1 : 0;
    case RedirType.INTERFACE_INFO:
      return host ? 132 : -1;
    case RedirType.EP_INFO:
      if (!host) return -1;
      if (hasCap(caps, RedirCap.BULK_STREAMS)) return 288;
      return hasCap(caps, RedirCap.EP_INFO_MAX_PACKET_SIZE) ? 160 : 96;
    case RedirType.SET_CONFIGURATION:
      return host ? -1 : 1;
    case RedirType.GET_CONFIGURATION:
      return host ? -1 : 0;
    case RedirType.CONFIGURATION_STATUS:
      return host ? 2 : -1;
    case RedirType.SET_ALT_SETTING:
      return host ? -1 : 2;
    case RedirType.GET_ALT_SETTING:
      return host ? -1 : 1;
    case RedirType.ALT_SETTING_STATUS:
      return host ? 3 : -1;
    case RedirType.START_ISO_STREAM:
      return host ? -1 : 3;
    case RedirType.STOP_ISO_STREAM:
      return host ? -1 : 1;
    case RedirType.ISO_STREAM_STATUS:
      return host ? 2 : -1;
    case RedirType.START_INTERRUPT_RECEIVING:
    case RedirType.STOP_INTERRUPT_RECEIVING:
      return host ? -1 : 1;
    case RedirType.INTERRUPT_RECEIVING_STATUS:
      return host ? 2 : -1;
    case RedirType.ALLOC_BULK_STREAMS:
      return host ? -1 : 8;
    case RedirType.FREE_BULK_STREAMS:
      return host ? -1 : 4;
    case RedirType.BULK_STREAMS_STATUS:
      return host ? 9 : -1;
    case RedirType.CANCEL_DATA_PACKET:
      return host ? -1 : 0;
    case RedirType.FILTER_REJECT:
      return host ? -1 : 0;
    case RedirType.FILTER_FILTER:
      return 0;
    case RedirType.DEVICE_DISCONNECT_ACK:
      return host ? -1 : 0;
    case RedirType.START_BULK_RECEIVING:
      return host ? -1 : 10;
    case RedirType.STOP_BULK_RECEIVING:
      return host ? -1 : 5;
    case RedirType.BULK_RECEIVING_STATUS:
      return host ? 6 : -1;
    case RedirType.CONTROL_PACKET:
      return 10;
    case RedirType.BULK_PACKET:
      return hasCap(caps, RedirCap.BULK_LENGTH_32BIT) ? 10 : 8;
    case RedirType.ISO_PACKET:
    case RedirType.INTERRUPT_PACKET:
      return 4;
    case RedirType.BUFFERED_BULK_PACKET:
      return host ? 10 : -1;
    default:
      return -1;
  }
}

// ---------------------------------------------------------------- decoded packets

/**
 * One packet's header fields, decoded. A reader reuses one object per connection: copy what you keep.
 * Fields a type does not have keep stale values; read only the ones its type defines.
 */
export interface RedirPacket {
  type: number;
  /** The id's low and high 32 bits (high is 0 with 32-bit ids). */
  idLow: number;
  idHigh: number;
  /** Bytes of data after the type header. */
  dataLength: number;
  endpoint: number;
  status: number;
  /** The transfer length a data packet's header names (bulk: with length_high). */
  length: number;
  request: number;
  requestType: number;
  value: number;
  index: number;
  streamId: number;
  configuration: number;
  interface: number;
  alt: number;
  pktsPerUrb: number;
  noUrbs: number;
  endpoints: number;
  noStreams: number;
  bytesPerTransfer: number;
  noTransfers: number;
}

export function emptyPacket(): RedirPacket {
  return {
    type: 0,
    idLow: 0,
    idHigh: 0,
    dataLength: 0,
    endpoint: 0,
    status: 0,
    length: 0,
    request: 0,
    requestType: 0,
    value: 0,
    index: 0,
    streamId: 0,
    configuration: 0,
    interface: 0,
    alt: 0,
    pktsPerUrb: 0,
    noUrbs: 0,
    endpoints: 0,
    noStreams: 0,
    bytesPerTransfer: 0,
    noTransfers: 0,
  };
}

/**
 * Decode a type header (typeHeaderSize bytes of `h` from `at`) into `p`. Device info headers (interface_info,
 * ep_info, device_connect, hello) are read by their own functions below: the host never receives them.
 */
export function decodeTypeHeader(p: RedirPacket, h: DataView, at: number, caps: Caps): void {
  switch (p.type) {
    case RedirType.CONTROL_PACKET:
      p.endpoint = h.getUint8(at + 0);
      p.request = h.getUint8(at + 1);
      p.requestType = h.getUint8(at + 2);
      p.status = h.getUint8(at + 3);
      p.value = h.getUint16(at + 4, true);
      p.index = h.getUint16(at + 6, true);
      p.length = h.getUint16(at + 8, true);
      break;
    case RedirType.BULK_PACKET:
      p.endpoint = h.getUint8(at + 0);
      p.status = h.getUint8(at + 1);
      p.length = h.getUint16(at + 2, true);
      p.streamId = h.getUint32(at + 4, true);
      if (hasCap(caps, RedirCap.BULK_LENGTH_32BIT)) p.length += h.getUint16(at + 8, true) * 0x10000;
      break;
    case RedirType.ISO_PACKET:
    case RedirType.INTERRUPT_PACKET:
      p.endpoint = h.getUint8(at + 0);
      p.status = h.getUint8(at + 1);
      p.length = h.getUint16(at + 2, true);
      break;
    case RedirType.BUFFERED_BULK_PACKET:
      p.streamId = h.getUint32(at + 0, true);
      p.length = h.getUint32(at + 4, true);
      p.endpoint = h.getUint8(at + 8);
      p.status = h.getUint8(at + 9);
      break;
    case RedirType.SET_CONFIGURATION:
      p.configuration = h.getUint8(at + 0);
      break;
    case RedirType.CONFIGURATION_STATUS:
      p.status = h.getUint8(at + 0);
      p.configuration = h.getUint8(at + 1);
      break;
    case RedirType.SET_ALT_SETTING:
      p.interface = h.getUint8(at + 0);
      p.alt = h.getUint8(at + 1);
      break;
    case RedirType.GET_ALT_SETTING:
      p.interface = h.getUint8(at + 0);
      break;
    case RedirType.ALT_SETTING_STATUS:
      p.status = h.getUint8(at + 0);
      p.interface = h.getUint8(at + 1);
      p.alt = h.getUint8(at + 2);
      break;
    case RedirType.START_ISO_STREAM:
      p.endpoint = h.getUint8(at + 0);
      p.pktsPerUrb = h.getUint8(at + 1);
      p.noUrbs = h.getUint8(at + 2);
      break;
    case RedirType.STOP_ISO_STREAM:
    case RedirType.START_INTERRUPT_RECEIVING:
    case RedirType.STOP_INTERRUPT_RECEIVING:
      p.endpoint = h.getUint8(at + 0);
      break;
    case RedirType.ISO_STREAM_STATUS:
    case RedirType.INTERRUPT_RECEIVING_STATUS:
      p.status = h.getUint8(at + 0);
      p.endpoint = h.getUint8(at + 1);
      break;
    case RedirType.ALLOC_BULK_STREAMS:
      p.endpoints = h.getUint32(at + 0, true);
      p.noStreams = h.getUint32(at + 4, true);
      break;
    case RedirType.FREE_BULK_STREAMS:
      p.endpoints = h.getUint32(at + 0, true);
      break;
    case RedirType.BULK_STREAMS_STATUS:
      p.endpoints = h.getUint32(at + 0, true);
      p.noStreams = h.getUint32(at + 4, true);
      p.status = h.getUint8(at + 8);
      break;
    case RedirType.START_BULK_RECEIVING:
      p.streamId = h.getUint32(at + 0, true);
      p.bytesPerTransfer = h.getUint32(at + 4, true);
      p.endpoint = h.getUint8(at + 8);
      p.noTransfers = h.getUint8(at + 9);
      break;
    case RedirType.STOP_BULK_RECEIVING:
      p.streamId = h.getUint32(at + 0, true);
      p.endpoint = h.getUint8(at + 4);
      break;
    case RedirType.BULK_RECEIVING_STATUS:
      p.streamId = h.getUint32(at + 0, true);
      p.endpoint = h.getUint8(at + 4);
      p.status = h.getUint8(at + 5);
      break;
    default:
      break;
  }
}

/**
 * The data rule for a decoded packet sent by `from` (the reference parser's): the exact number of data
 * bytes it must carry, or -1 when it carries whatever its type allows (hello capabilities, a filter
 * string, device info arrays that have none). Transfers carry data only in their data direction: OUT
 * requests from the guest, IN replies from the host.
 */
export function expectedDataLength(p: RedirPacket, from: RedirRole): number {
  switch (p.type) {
    case RedirType.CONTROL_PACKET:
    case RedirType.BULK_PACKET:
    case RedirType.ISO_PACKET:
    case RedirType.INTERRUPT_PACKET: {
      const directionIn = endpointIsIn(p.endpoint);
      return directionIn === (from === "host") ? p.length : 0;
    }
    case RedirType.BUFFERED_BULK_PACKET:
      return p.length;
    case RedirType.HELLO:
    case RedirType.FILTER_FILTER:
      return -1;
    default:
      return 0;
  }
}

/** Why a decoded packet breaks the framing rules for its sender, or null when it is sound. */
export function framingProblem(p: RedirPacket, from: RedirRole): string | null {
  const expect = expectedDataLength(p, from);
  if (expect >= 0 && p.dataLength !== expect) {
    return `${redirTypeName(p.type)} carries ${p.dataLength} data bytes, its header calls for ${expect}`;
  }
  switch (p.type) {
    case RedirType.HELLO:
      if (p.dataLength % 4 !== 0 || p.dataLength > MAX_HELLO_CAPS_BYTES)
        return `hello capability list of ${p.dataLength} bytes (a multiple of 4, at most ${MAX_HELLO_CAPS_BYTES})`;
      return null;
    case RedirType.FILTER_FILTER:
      if (p.dataLength < 1 || p.dataLength > MAX_FILTER_BYTES)
        return `filter string of ${p.dataLength} bytes (1 to ${MAX_FILTER_BYTES} with its NUL)`;
      return null;
    case RedirType.BULK_PACKET:
    case RedirType.BUFFERED_BULK_PACKET:
      if (p.length > MAX_REDIR_DATA)
        return `${redirTypeName(p.type)} of ${p.length} bytes (at most ${MAX_REDIR_DATA})`;
      return null;
    case RedirType.INTERRUPT_RECEIVING_STATUS:
    case RedirType.BULK_RECEIVING_STATUS:
      return !endpointIsIn(p.endpoint)
        ? `${redirTypeName(p.type)} for OUT endpoint 0x${p.endpoint.toString(16)}`
        : null;
    default:
      return null;
  }
}

// ---------------------------------------------------------------- encoders

/** Builds one packet: header, type header (written by `fill`), then `data`. */
function packet(
  n: Negotiated,
  type: number,
  idLow: number,
  idHigh: number,
  typeHeader: number,
  dataLength: number,
  fill: (h: DataView) => void,
): Buffer {
  const out = Buffer.allocUnsafe(n.headerSize + typeHeader + dataLength);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  v.setUint32(0, type, true);
  v.setUint32(4, typeHeader + dataLength, true);
  v.setUint32(8, idLow, true);
  if (n.headerSize === 16) v.setUint32(12, idHigh, true);
  out.fill(0, n.headerSize, n.headerSize + typeHeader);
  fill(new DataView(out.buffer, out.byteOffset + n.headerSize, typeHeader));
  return out;
}

/** The data part of a packet built by an encoder (to copy data in without another buffer). */
export function dataOf(n: Negotiated, pkt: Buffer, typeHeader: number): Buffer {
  return pkt.subarray(n.headerSize + typeHeader);
}

/** hello: always with the 12-byte header. */
export function encodeHello(version: string, caps: Caps): Buffer {
  const out = packet(HELLO_NEGOTIATED, RedirType.HELLO, 0, 0, REDIR_VERSION_SIZE, 4, (h) => {
    const bytes = Buffer.from(version, "utf8").subarray(0, REDIR_VERSION_SIZE - 1);
    new Uint8Array(h.buffer, h.byteOffset, REDIR_VERSION_SIZE).set(bytes);
  });
  out.writeUInt32LE(caps >>> 0, 12 + REDIR_VERSION_SIZE);
  return out;
}

/** A hello's version string (up to its NUL) and capability word 0. */
export function decodeHello(typeHeader: Uint8Array, data: Uint8Array): { version: string; caps: Caps } {
  const nul = typeHeader.indexOf(0);
  const version = Buffer.from(typeHeader.subarray(0, nul < 0 ? REDIR_VERSION_SIZE : nul)).toString("latin1");
  const caps = data.length >= 4 ? new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true) : 0;
  return { version, caps };
}

export interface DeviceConnectInfo {
  readonly speed: number;
  readonly deviceClass: number;
  readonly deviceSubClass: number;
  readonly deviceProtocol: number;
  readonly vendorId: number;
  readonly productId: number;
  readonly bcdDevice: number;
}

export function encodeDeviceConnect(n: Negotiated, d: DeviceConnectInfo): Buffer {
  const size = typeHeaderSize(RedirType.DEVICE_CONNECT, n.caps, "host");
  return packet(n, RedirType.DEVICE_CONNECT, 0, 0, size, 0, (h) => {
    h.setUint8(0, d.speed);
    h.setUint8(1, d.deviceClass);
    h.setUint8(2, d.deviceSubClass);
    h.setUint8(3, d.deviceProtocol);
    h.setUint16(4, d.vendorId, true);
    h.setUint16(6, d.productId, true);
    if (size === 10) h.setUint16(8, d.bcdDevice, true);
  });
}

export function decodeDeviceConnect(h: DataView): DeviceConnectInfo {
  return {
    speed: h.getUint8(0),
    deviceClass: h.getUint8(1),
    deviceSubClass: h.getUint8(2),
    deviceProtocol: h.getUint8(3),
    vendorId: h.getUint16(4, true),
    productId: h.getUint16(6, true),
    bcdDevice: h.byteLength >= 10 ? h.getUint16(8, true) : 0,
  };
}

export interface InterfaceEntry {
  readonly number: number;
  readonly cls: number;
  readonly subclass: number;
  readonly protocol: number;
}

/** interface_info: the active configuration's interfaces (at most 32). */
export function encodeInterfaceInfo(n: Negotiated, interfaces: readonly InterfaceEntry[]): Buffer {
  if (interfaces.length > 32) throw new RangeError(`${interfaces.length} interfaces (usbredir carries 32)`);
  return packet(n, RedirType.INTERFACE_INFO, 0, 0, 132, 0, (h) => {
    h.setUint32(0, interfaces.length, true);
    interfaces.forEach((itf, i) => {
      h.setUint8(4 + i, itf.number);
      h.setUint8(36 + i, itf.cls);
      h.setUint8(68 + i, itf.subclass);
      h.setUint8(100 + i, itf.protocol);
    });
  });
}

export function decodeInterfaceInfo(h: DataView): InterfaceEntry[] {
  const count = Math.min(h.getUint32(0, true), 32);
  const out: InterfaceEntry[] = [];
  for (let i = 0; i < count; i++) {
    out.push({
      number: h.getUint8(4 + i),
      cls: h.getUint8(36 + i),
      subclass: h.getUint8(68 + i),
      protocol: h.getUint8(100 + i),
    });
  }
  return out;
}

export interface EndpointEntry {
  /** RedirEpType. */
  readonly type: number;
  readonly interval: number;
  readonly interface: number;
  /** Bytes per (micro)frame: wMaxPacketSize's size times its high-bandwidth multiplier. */
  readonly maxPacketSize: number;
  /** Bulk streams the endpoint offers (SuperSpeed companion); sent only with cap bulk_streams. */
  readonly maxStreams: number;
}

/** The ep_info index of an endpoint address: OUT 0..15, IN 16..31. */
export function epIndex(address: number): number {
  return endpointIndex(address);
}

/**
 * ep_info: 32 entries by epIndex; endpoint 0 both ways is control (64-byte packets; 512 at SuperSpeed),
 * absent ones invalid.
 */
export function encodeEpInfo(
  n: Negotiated,
  endpoints: ReadonlyMap<number, EndpointEntry>,
  controlMaxPacket = 64,
): Buffer {
  const size = typeHeaderSize(RedirType.EP_INFO, n.caps, "host");
  return packet(n, RedirType.EP_INFO, 0, 0, size, 0, (h) => {
    for (let i = 0; i < 32; i++) h.setUint8(i, RedirEpType.INVALID);
    h.setUint8(0, RedirEpType.CONTROL);
    h.setUint8(16, RedirEpType.CONTROL);
    if (size >= 160) {
      h.setUint16(96, controlMaxPacket, true);
      h.setUint16(96 + 32, controlMaxPacket, true);
    }
    for (const [address, ep] of endpoints) {
      const i = epIndex(address);
      h.setUint8(i, ep.type);
      h.setUint8(32 + i, ep.interval);
      h.setUint8(64 + i, ep.interface);
      if (size >= 160) h.setUint16(96 + 2 * i, ep.maxPacketSize, true);
      if (size >= 288) h.setUint32(160 + 4 * i, ep.maxStreams, true);
    }
  });
}

/** Decode ep_info into a map by endpoint address (control and invalid entries left out). */
export function decodeEpInfo(h: DataView): Map<number, EndpointEntry> {
  const out = new Map<number, EndpointEntry>();
  for (let i = 0; i < 32; i++) {
    const type = h.getUint8(i);
    if (type === RedirEpType.INVALID || type === RedirEpType.CONTROL) continue;
    out.set(endpointAddressOfIndex(i), {
      type,
      interval: h.getUint8(32 + i),
      interface: h.getUint8(64 + i),
      maxPacketSize: h.byteLength >= 160 ? h.getUint16(96 + 2 * i, true) : 0,
      maxStreams: h.byteLength >= 288 ? h.getUint32(160 + 4 * i, true) : 0,
    });
  }
  return out;
}

export function encodeEmpty(n: Negotiated, type: number, idLow = 0, idHigh = 0): Buffer {
  return packet(n, type, idLow, idHigh, 0, 0, () => undefined);
}

/** Two-byte status headers: configuration_status, iso_stream_status, interrupt_receiving_status. */
export function encodeStatusPair(n: Negotiated, type: number, id: Id, first: number, second: number): Buffer {
  return packet(n, type, id.low, id.high, 2, 0, (h) => {
    h.setUint8(0, first);
    h.setUint8(1, second);
  });
}

export function encodeAltSettingStatus(
  n: Negotiated,
  id: Id,
  status: number,
  itf: number,
  alt: number,
): Buffer {
  return packet(n, RedirType.ALT_SETTING_STATUS, id.low, id.high, 3, 0, (h) => {
    h.setUint8(0, status);
    h.setUint8(1, itf);
    h.setUint8(2, alt);
  });
}

export function encodeBulkStreamsStatus(
  n: Negotiated,
  id: Id,
  endpoints: number,
  streams: number,
  status: number,
) {
  return packet(n, RedirType.BULK_STREAMS_STATUS, id.low, id.high, 9, 0, (h) => {
    h.setUint32(0, endpoints, true);
    h.setUint32(4, streams, true);
    h.setUint8(8, status);
  });
}

export function encodeBulkReceivingStatus(n: Negotiated, id: Id, stream: number, ep: number, status: number) {
  return packet(n, RedirType.BULK_RECEIVING_STATUS, id.low, id.high, 6, 0, (h) => {
    h.setUint32(0, stream, true);
    h.setUint8(4, ep);
    h.setUint8(5, status);
  });
}

/** A packet id, as its two 32-bit halves. */
export interface Id {
  readonly low: number;
  readonly high: number;
}

export const ID_ZERO: Id = { low: 0, high: 0 };

export interface ControlFields {
  readonly endpoint: number;
  readonly request: number;
  readonly requestType: number;
  readonly status: number;
  readonly value: number;
  readonly index: number;
  readonly length: number;
}

/** control_packet with room for `dataLength` bytes of data (fill them through dataOf). */
export function encodeControlPacket(n: Negotiated, id: Id, c: ControlFields, dataLength: number): Buffer {
  return packet(n, RedirType.CONTROL_PACKET, id.low, id.high, 10, dataLength, (h) => {
    h.setUint8(0, c.endpoint);
    h.setUint8(1, c.request);
    h.setUint8(2, c.requestType);
    h.setUint8(3, c.status);
    h.setUint16(4, c.value, true);
    h.setUint16(6, c.index, true);
    h.setUint16(8, c.length, true);
  });
}

/** bulk_packet (length split into length/length_high when 32-bit lengths were negotiated). */
export function encodeBulkPacket(
  n: Negotiated,
  id: Id,
  endpoint: number,
  status: number,
  length: number,
  dataLength: number,
  streamId = 0,
): Buffer {
  const size = typeHeaderSize(RedirType.BULK_PACKET, n.caps, "host");
  if (size === 8 && length > 0xffff)
    throw new RangeError(`bulk length ${length} without 32-bit bulk lengths`);
  return packet(n, RedirType.BULK_PACKET, id.low, id.high, size, dataLength, (h) => {
    h.setUint8(0, endpoint);
    h.setUint8(1, status);
    h.setUint16(2, length & 0xffff, true);
    h.setUint32(4, streamId, true);
    if (size === 10) h.setUint16(8, Math.floor(length / 0x10000), true);
  });
}

/** iso_packet or interrupt_packet (the same 4-byte header). */
export function encodeSmallDataPacket(
  n: Negotiated,
  type: typeof RedirType.ISO_PACKET | typeof RedirType.INTERRUPT_PACKET,
  id: Id,
  endpoint: number,
  status: number,
  length: number,
  dataLength: number,
): Buffer {
  return packet(n, type, id.low, id.high, 4, dataLength, (h) => {
    h.setUint8(0, endpoint);
    h.setUint8(1, status);
    h.setUint16(2, length, true);
  });
}

/** Guest-side requests with one- to three-byte headers (set/get configuration and alt, streams). */
export function encodeBytes(n: Negotiated, type: number, id: Id, bytes: readonly number[]): Buffer {
  return packet(n, type, id.low, id.high, bytes.length, 0, (h) => {
    for (let i = 0; i < bytes.length; i++) h.setUint8(i, bytes[i]!);
  });
}

/** filter_filter: the rule string and its NUL. */
export function encodeFilter(n: Negotiated, rules: string): Buffer {
  const text = Buffer.from(`${rules}\0`, "latin1");
  const out = packet(n, RedirType.FILTER_FILTER, 0, 0, 0, text.length, () => undefined);
  text.copy(out, n.headerSize);
  return out;
}
