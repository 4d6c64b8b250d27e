/**
 * Typed USB descriptor builder for the emulated devices (USB 2.0 §9.6: device §9.6.1, device_qualifier
 * §9.6.2, configuration §9.6.3, other_speed_configuration §9.6.4, interface §9.6.5, endpoint §9.6.6,
 * string §9.6.7; HID 1.11 §6.2.1 for the HID class descriptor) and, for a SuperSpeed-capable device, USB 3.2
 * chapter 9: BOS with its USB 2.0 Extension and SuperSpeed USB device capabilities (§9.6.2), the SuperSpeed
 * endpoint companion after every endpoint at SuperSpeed (§9.6.7), bMaxPacketSize0 9 (2^9 = 512) and 1024-byte
 * bulk packets at SuperSpeed (§9.6.6), and no device_qualifier / other_speed_configuration at SuperSpeed
 * (§9.6.2: a request error there).
 *
 * A device is described once, speed-independently (`DescriptorSpec`); `buildDescriptors(spec, speed)` turns
 * it into the exact bytes a host reads at that speed (endpoint packet sizes and bInterval encodings
 * differ between full and high speed), computes wTotalLength / bNumInterfaces / bNumEndpoints, assigns
 * string indices, and builds the device_qualifier and other_speed_configuration descriptors a dual-speed
 * device must answer. It also returns a resolved layout (which endpoints each alternate setting has, with
 * their per-speed sizes) so the device base never re-parses its own bytes.
 *
 * Every spec value is checked when the descriptors are built (InvalidOptionError), never at request time.
 */
import {
  BOS_DESCRIPTOR_LENGTH,
  CONFIGURATION_DESCRIPTOR_LENGTH,
  DEVICE_DESCRIPTOR_LENGTH,
  DEVICE_QUALIFIER_LENGTH,
  DescriptorType,
  DeviceCapabilityType,
  ENDPOINT_DESCRIPTOR_LENGTH,
  ENDPOINT_DIR_IN,
  ENDPOINT_NUMBER_MASK,
  INTERFACE_DESCRIPTOR_LENGTH,
  MAX_STREAMS_EXPONENT,
  SS_ENDPOINT_COMPANION_LENGTH,
  UsbSpeed,
} from "../../usb/index.js";
import { InvalidOptionError } from "../../util/errors.js";

export const HID_DESCRIPTOR_LENGTH = 9;
/** A descriptor's bLength is one byte. */
export const MAX_DESCRIPTOR_LENGTH = 255;
/** wTotalLength is 16 bits. */
export const MAX_TOTAL_LENGTH = 0xffff;

/** USB 2.0 (bcdUSB 0x0200): a device that is not SuperSpeed-capable. */
export const BCD_USB_2_0 = 0x0200;
/** A SuperSpeed-capable device below SuperSpeed says 2.1: it has a BOS descriptor (USB 3.2 §9.6.1). */
export const BCD_USB_2_1 = 0x0210;
/** A device running at SuperSpeed (Gen 1, 5 Gb/s). */
export const BCD_USB_3_0 = 0x0300;
/** LANGID for US English, the only language the emulated devices speak (USB LANGID table). */
export const LANGID_EN_US = 0x0409;
/** bMaxPacketSize0: 64 is valid at full and high speed (§9.6.1; high speed requires 64). */
export const EP0_MAX_PACKET_SIZE = 64;
/** At SuperSpeed bMaxPacketSize0 is an exponent: 9 means 512 bytes (USB 3.2 §9.6.1). */
export const SUPER_SPEED_EP0_EXPONENT = 9;
/** SuperSpeed bulk packets are 1024 bytes (USB 3.2 §9.6.6); periodic ones at most 1024 per burst packet. */
export const SUPER_SPEED_BULK_MAX_PACKET = 1024;
const SUPER_SPEED_PERIODIC_MAX = 1024;
/** bMaxBurst 0..15: packets per burst minus one (§9.6.7). */
const MAX_BURST = 15;
/** USB 2.0 Extension bmAttributes bit 1: Link Power Management, required of a SuperSpeed device at HS. */
const USB2_EXT_LPM = 0x02;
/** SuperSpeed USB device capability: wSpeedsSupported full | high | 5 Gb/s; lowest full function: full. */
const SS_SPEEDS_SUPPORTED = 0x000e;
const SS_FUNCTIONALITY_SUPPORT = 1;
/** Exit latencies the capability must state; a virtual link has none worth waiting for. */
const SS_U1_EXIT_LATENCY_US = 0x0a;
const SS_U2_EXIT_LATENCY_US = 0x0020;
const USB2_EXTENSION_LENGTH = 7;
const SS_DEVICE_CAPABILITY_LENGTH = 10;

/** bmAttributes of a configuration (§9.6.3): bit 7 is reserved and must be set. */
const CONFIG_ATTR_RESERVED_ONE = 0x80;
const CONFIG_ATTR_SELF_POWERED = 0x40;
const CONFIG_ATTR_REMOTE_WAKEUP = 0x20;
/** bMaxPower is in 2 mA units. */
const MAX_POWER_UNIT_MA = 2;
const MAX_POWER_MA = 500;

/** bmAttributes transfer-type bits of an endpoint (§9.6.6). */
export const EndpointTransferType = { control: 0, isochronous: 1, bulk: 2, interrupt: 3 } as const;
export type EndpointType = "bulk" | "interrupt" | "isochronous";

/** Full-speed bulk may use 8, 16, 32 or 64; high-speed bulk must use 512 (§5.8.3). */
const FULL_SPEED_BULK_SIZES: readonly number[] = [8, 16, 32, 64];
export const FULL_SPEED_BULK_MAX_PACKET = 64;
export const HIGH_SPEED_BULK_MAX_PACKET = 512;
/** §5.7.3: full-speed interrupt ≤ 64 bytes; §5.6.3: full-speed iso ≤ 1023; high speed ≤ 1024 for both. */
const FULL_SPEED_INTERRUPT_MAX = 64;
const FULL_SPEED_ISO_MAX = 1023;
const HIGH_SPEED_PERIODIC_MAX = 1024;
/** High-speed intervals are counted in 125 µs microframes, eight per 1 ms frame. */
export const MICROFRAMES_PER_FRAME = 8;
/** bInterval as an exponent (2^(bInterval-1)) ranges 1..16 (§9.6.6). */
const MAX_INTERVAL_EXPONENT = 16;
/** Full-speed interrupt bInterval is a frame count 1..255. */
const MAX_FULL_SPEED_INTERRUPT_INTERVAL = 255;
/** A string descriptor holds at most (255 - 2) / 2 UTF-16 code units. */
export const MAX_STRING_CODE_UNITS = (MAX_DESCRIPTOR_LENGTH - 2) >> 1;

export interface EndpointSpec {
  /** bEndpointAddress: number 1..15, bit 7 set for IN. */
  readonly address: number;
  readonly type: EndpointType;
  /**
   * Largest packet payload. Bulk defaults to 64 (full) / 512 (high); interrupt and isochronous must say,
   * either one value for both speeds or one per speed.
   */
  readonly maxPacketSize?: number | { readonly full: number; readonly high: number; readonly super?: number };
  /** Interrupt and isochronous: polling period in milliseconds (rounded down to what the speed encodes). */
  readonly intervalMs?: number;
  /** SuperSpeed: packets per burst minus one, 0..15 (the companion's bMaxBurst). Default 0. */
  readonly maxBurst?: number;
  /**
   * Bulk at SuperSpeed: the streams the endpoint offers, a power of two 2..65536 (the companion's
   * MaxStreams exponent). Default none. Below SuperSpeed an endpoint has no streams.
   */
  readonly maxStreams?: number;
}

export interface AlternateSettingSpec {
  readonly alternateSetting: number;
  readonly interfaceClass: number;
  readonly interfaceSubClass: number;
  readonly interfaceProtocol: number;
  readonly name?: string;
  /** Class-specific descriptors placed after the interface descriptor, before its endpoints (e.g. HID). */
  readonly classDescriptors?: readonly Uint8Array[];
  readonly endpoints: readonly EndpointSpec[];
}

export interface InterfaceSpec {
  readonly interfaceNumber: number;
  /** Alternate settings; the first must be 0. */
  readonly alternates: readonly AlternateSettingSpec[];
}

export interface ConfigurationSpec {
  readonly configurationValue: number;
  readonly name?: string;
  readonly selfPowered?: boolean;
  readonly remoteWakeup?: boolean;
  readonly maxPowerMa?: number;
  readonly interfaces: readonly InterfaceSpec[];
}

/**
 * What an emulated device is, to build its descriptors from: classes, ids, strings, configurations. Not
 * `DeviceSpec` (src/devices/spec.ts), which says which device to put on a port.
 */
export interface DescriptorSpec {
  readonly deviceClass: number;
  readonly deviceSubClass: number;
  readonly deviceProtocol: number;
  readonly vendorId: number;
  readonly productId: number;
  /** bcdDevice, the device release number in BCD. */
  readonly bcdDevice: number;
  readonly manufacturer?: string;
  readonly product?: string;
  readonly serialNumber?: string;
  /**
   * Whether the device can also run at the other speed (full ↔ high). A dual-speed device answers
   * device_qualifier and other_speed_configuration; a single-speed device stalls them (§9.6.2).
   */
  readonly dualSpeed: boolean;
  /**
   * Whether the device also runs at SuperSpeed: it then has a BOS descriptor at every speed (bcdUSB 2.1
   * below SuperSpeed, 3.0 at it) and may be built at UsbSpeed.SUPER.
   */
  readonly superSpeed?: boolean;
  readonly configurations: readonly ConfigurationSpec[];
}

/** One endpoint as it is at the built speed. */
export interface EndpointLayout {
  readonly address: number;
  readonly type: EndpointType;
  readonly maxPacketSize: number;
  /** Interrupt and iso: the period the encoded bInterval means at this speed, in milliseconds (fractions at HS). */
  readonly intervalMs: number;
  /** Bulk streams the endpoint offers at this speed (0: none; only SuperSpeed bulk has them). */
  readonly maxStreams: number;
  readonly interfaceNumber: number;
  readonly alternateSetting: number;
}

export interface AlternateLayout {
  readonly alternateSetting: number;
  readonly endpoints: readonly EndpointLayout[];
}

export interface InterfaceLayout {
  readonly interfaceNumber: number;
  readonly alternates: readonly AlternateLayout[];
}

export interface ConfigurationLayout {
  readonly configurationValue: number;
  readonly selfPowered: boolean;
  readonly remoteWakeup: boolean;
  readonly interfaces: readonly InterfaceLayout[];
}

export interface DeviceDescriptors {
  readonly speed: UsbSpeed;
  readonly device: Uint8Array;
  /** Full configuration descriptor sets at this speed, by index (GET_DESCRIPTOR(CONFIGURATION, index)). */
  readonly configurations: readonly Uint8Array[];
  /** The same sets as they would be at the other speed, with bDescriptorType 7; null when single-speed. */
  readonly otherSpeedConfigurations: readonly Uint8Array[] | null;
  readonly deviceQualifier: Uint8Array | null;
  /** The BOS descriptor set (header and capabilities) of a SuperSpeed-capable device; null otherwise. */
  readonly bos: Uint8Array | null;
  /** String descriptors by index; index 0 is the LANGID list. */
  readonly strings: ReadonlyMap<number, Uint8Array>;
  readonly layout: readonly ConfigurationLayout[];
}

function fail(message: string): never {
  throw new InvalidOptionError(`descriptors: ${message}`);
}

function checkByte(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) fail(`${what} must be a byte, got ${value}`);
  return value;
}

function checkWord(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) fail(`${what} must be a u16, got ${value}`);
  return value;
}

function putU16(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value & 0xff;
  bytes[at + 1] = (value >>> 8) & 0xff;
}

/** Encode a string descriptor: bLength, bDescriptorType 3, UTF-16LE code units (§9.6.7). */
export function stringDescriptor(text: string): Uint8Array {
  if (text.length > MAX_STRING_CODE_UNITS)
    fail(`string "${text.slice(0, 16)}…" is longer than ${MAX_STRING_CODE_UNITS} UTF-16 code units`);
  const bytes = new Uint8Array(2 + text.length * 2);
  bytes[0] = bytes.length;
  bytes[1] = DescriptorType.STRING;
  for (let i = 0; i < text.length; i++) putU16(bytes, 2 + i * 2, text.charCodeAt(i));
  return bytes;
}

/** Decode a string descriptor back to text (for tests and `usbvirt list`); null when malformed. */
export function decodeStringDescriptor(bytes: Uint8Array): string | null {
  const length = bytes[0] ?? 0;
  if (length < 2 || length > bytes.length || bytes[1] !== DescriptorType.STRING || length % 2 !== 0)
    return null;
  let text = "";
  for (let at = 2; at < length; at += 2) text += String.fromCharCode(bytes[at]! | (bytes[at + 1]! << 8));
  return text;
}

/** The HID class descriptor (HID 1.11 §6.2.1) announcing one report descriptor of `reportLength` bytes. */
export function hidDescriptor(reportLength: number, bcdHid = 0x0111, countryCode = 0): Uint8Array {
  const bytes = new Uint8Array(HID_DESCRIPTOR_LENGTH);
  bytes[0] = HID_DESCRIPTOR_LENGTH;
  bytes[1] = DescriptorType.HID;
  putU16(bytes, 2, checkWord("bcdHID", bcdHid));
  bytes[4] = checkByte("bCountryCode", countryCode);
  bytes[5] = 1; // bNumDescriptors: one report descriptor
  bytes[6] = DescriptorType.HID_REPORT;
  putU16(bytes, 7, checkWord("wDescriptorLength", reportLength));
  return bytes;
}

/** One descriptor found by `walkDescriptors`. */
export interface DescriptorEntry {
  readonly offset: number;
  readonly length: number;
  readonly type: number;
}

/**
 * Walk the descriptors in a configuration set (or any concatenation). Stops at the first malformed
 * entry (bLength < 2 or running past the end) and reports it in `error`. Bounded by the buffer: each step
 * advances at least 2 bytes.
 */
export function walkDescriptors(bytes: Uint8Array): { entries: DescriptorEntry[]; error: string | null } {
  const entries: DescriptorEntry[] = [];
  let at = 0;
  while (at < bytes.length) {
    const length = bytes[at]!;
    if (length < 2) return { entries, error: `bLength ${length} at offset ${at}` };
    if (at + length > bytes.length) return { entries, error: `descriptor at ${at} runs past the end` };
    entries.push({ offset: at, length, type: bytes[at + 1]! });
    at += length;
  }
  return { entries, error: null };
}

/** Assigns string indices in order of first use; identical strings share an index. */
class StringTable {
  readonly byIndex = new Map<number, Uint8Array>();
  private readonly byText = new Map<string, number>();

  constructor() {
    // Index 0: the LANGID array (§9.6.7), a single language.
    const langids = new Uint8Array(4);
    langids[0] = langids.length;
    langids[1] = DescriptorType.STRING;
    putU16(langids, 2, LANGID_EN_US);
    this.byIndex.set(0, langids);
  }

  index(text: string | undefined): number {
    if (text === undefined || text === "") return 0;
    const known = this.byText.get(text);
    if (known !== undefined) return known;
    const index = this.byIndex.size;
    if (index > 0xff) fail("more than 255 strings");
    this.byIndex.set(index, stringDescriptor(text));
    this.byText.set(text, index);
    return index;
  }
}

function otherSpeed(speed: UsbSpeed): UsbSpeed {
  return speed === UsbSpeed.HIGH ? UsbSpeed.FULL : UsbSpeed.HIGH;
}

function floorLog2(value: number): number {
  return Math.floor(Math.log2(value));
}

/** Resolve an endpoint's packet size and bInterval at `speed`, checking both against the spec limits. */
function resolveEndpoint(
  ep: EndpointSpec,
  speed: UsbSpeed,
): { maxPacketSize: number; bInterval: number; intervalMs: number } {
  const superSpeed = speed === UsbSpeed.SUPER;
  // SuperSpeed encodes bInterval as high speed does (2^(bInterval-1) × 125 µs, USB 3.2 §9.6.6).
  const high = speed === UsbSpeed.HIGH || superSpeed;
  const num = ep.address & ENDPOINT_NUMBER_MASK;
  if ((ep.address & ~(ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK)) !== 0 || num === 0)
    fail(`endpoint address 0x${ep.address.toString(16)} is not 0x01..0x0f or 0x81..0x8f`);
  const given = ep.maxPacketSize;
  let size =
    typeof given === "number"
      ? given
      : given === undefined
        ? undefined
        : superSpeed
          ? (given.super ?? given.high)
          : high
            ? given.high
            : given.full;
  if (ep.type === "bulk") {
    const standard = superSpeed
      ? SUPER_SPEED_BULK_MAX_PACKET
      : high
        ? HIGH_SPEED_BULK_MAX_PACKET
        : FULL_SPEED_BULK_MAX_PACKET;
    // A size given for one speed (e.g. 512) does not bind another: SuperSpeed bulk is always 1024.
    if (superSpeed && typeof given !== "object") size = standard;
    size ??= standard;
    const ok = high ? size === standard : FULL_SPEED_BULK_SIZES.includes(size);
    if (!ok) fail(`bulk endpoint 0x${ep.address.toString(16)}: max packet ${size} not allowed at this speed`);
    return { maxPacketSize: size, bInterval: 0, intervalMs: 0 };
  }
  if (size === undefined) fail(`${ep.type} endpoint 0x${ep.address.toString(16)} needs maxPacketSize`);
  const limit = superSpeed
    ? SUPER_SPEED_PERIODIC_MAX
    : high
      ? HIGH_SPEED_PERIODIC_MAX
      : ep.type === "interrupt"
        ? FULL_SPEED_INTERRUPT_MAX
        : FULL_SPEED_ISO_MAX;
  if (!Number.isInteger(size) || size < 1 || size > limit)
    fail(`${ep.type} endpoint 0x${ep.address.toString(16)}: max packet ${size} outside 1..${limit}`);
  const ms = ep.intervalMs ?? 1;
  if (!(ms >= 1)) fail(`endpoint 0x${ep.address.toString(16)}: intervalMs must be ≥ 1`);
  if (high) {
    // 2^(bInterval-1) microframes.
    const exponent = Math.min(floorLog2(ms * MICROFRAMES_PER_FRAME), MAX_INTERVAL_EXPONENT - 1);
    return {
      maxPacketSize: size,
      bInterval: exponent + 1,
      intervalMs: 2 ** exponent / MICROFRAMES_PER_FRAME,
    };
  }
  if (ep.type === "interrupt") {
    const frames = Math.min(Math.floor(ms), MAX_FULL_SPEED_INTERRUPT_INTERVAL);
    return { maxPacketSize: size, bInterval: frames, intervalMs: frames };
  }
  // Full-speed iso: 2^(bInterval-1) frames.
  const exponent = Math.min(floorLog2(ms), MAX_INTERVAL_EXPONENT - 1);
  return { maxPacketSize: size, bInterval: exponent + 1, intervalMs: 2 ** exponent };
}

function endpointDescriptor(ep: EndpointSpec, maxPacketSize: number, bInterval: number): Uint8Array {
  const bytes = new Uint8Array(ENDPOINT_DESCRIPTOR_LENGTH);
  bytes[0] = ENDPOINT_DESCRIPTOR_LENGTH;
  bytes[1] = DescriptorType.ENDPOINT;
  bytes[2] = ep.address;
  // Iso endpoints: no synchronisation, data endpoint (bits 2..5 zero).
  bytes[3] = EndpointTransferType[ep.type];
  putU16(bytes, 4, maxPacketSize);
  bytes[6] = bInterval;
  return bytes;
}

/** Streams and burst of an endpoint, checked once whatever the speed (a bad spec fails at every speed). */
function resolveSuperSpeed(ep: EndpointSpec): { maxBurst: number; streamsExponent: number } {
  const where = `endpoint 0x${ep.address.toString(16)}`;
  const maxBurst = ep.maxBurst ?? 0;
  if (!Number.isInteger(maxBurst) || maxBurst < 0 || maxBurst > MAX_BURST)
    fail(`${where}: maxBurst must be 0..${MAX_BURST}, got ${maxBurst}`);
  const streams = ep.maxStreams ?? 0;
  if (streams === 0) return { maxBurst, streamsExponent: 0 };
  if (ep.type !== "bulk") fail(`${where}: only bulk endpoints have streams`);
  const exponent = Math.log2(streams);
  if (!Number.isInteger(exponent) || exponent < 1 || exponent > MAX_STREAMS_EXPONENT)
    fail(`${where}: maxStreams must be a power of two 2..${2 ** MAX_STREAMS_EXPONENT}, got ${streams}`);
  return { maxBurst, streamsExponent: exponent };
}

/** SuperSpeed endpoint companion (USB 3.2 §9.6.7), placed right after its endpoint descriptor. */
function companionDescriptor(
  ep: EndpointSpec,
  maxPacketSize: number,
  ss: { maxBurst: number; streamsExponent: number },
): Uint8Array {
  const bytes = new Uint8Array(SS_ENDPOINT_COMPANION_LENGTH);
  bytes[0] = SS_ENDPOINT_COMPANION_LENGTH;
  bytes[1] = DescriptorType.SS_ENDPOINT_COMPANION;
  bytes[2] = ss.maxBurst;
  // Bulk: bits 4..0 MaxStreams; iso: bits 1..0 Mult (0, one burst per interval); interrupt: 0.
  bytes[3] = ep.type === "bulk" ? ss.streamsExponent : 0;
  // wBytesPerInterval: what a periodic endpoint moves per service interval; 0 for bulk.
  putU16(bytes, 4, ep.type === "bulk" ? 0 : maxPacketSize * (ss.maxBurst + 1));
  return bytes;
}

/** BOS (USB 3.2 §9.6.2): USB 2.0 Extension and SuperSpeed USB device capabilities. */
function bosDescriptor(): Uint8Array {
  const bytes = new Uint8Array(BOS_DESCRIPTOR_LENGTH + USB2_EXTENSION_LENGTH + SS_DEVICE_CAPABILITY_LENGTH);
  bytes[0] = BOS_DESCRIPTOR_LENGTH;
  bytes[1] = DescriptorType.BOS;
  putU16(bytes, 2, bytes.length);
  bytes[4] = 2; // bNumDeviceCaps
  let at = BOS_DESCRIPTOR_LENGTH;
  bytes[at] = USB2_EXTENSION_LENGTH;
  bytes[at + 1] = DescriptorType.DEVICE_CAPABILITY;
  bytes[at + 2] = DeviceCapabilityType.USB_2_0_EXTENSION;
  bytes[at + 3] = USB2_EXT_LPM; // bmAttributes, u32 (upper bytes 0)
  at += USB2_EXTENSION_LENGTH;
  bytes[at] = SS_DEVICE_CAPABILITY_LENGTH;
  bytes[at + 1] = DescriptorType.DEVICE_CAPABILITY;
  bytes[at + 2] = DeviceCapabilityType.SUPERSPEED_USB;
  bytes[at + 3] = 0; // bmAttributes: no Latency Tolerance Messages
  putU16(bytes, at + 4, SS_SPEEDS_SUPPORTED);
  bytes[at + 6] = SS_FUNCTIONALITY_SUPPORT;
  bytes[at + 7] = SS_U1_EXIT_LATENCY_US;
  putU16(bytes, at + 8, SS_U2_EXIT_LATENCY_US);
  return bytes;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Build one configuration set at `speed`; `type` is CONFIGURATION or OTHER_SPEED_CONFIGURATION. */
function buildConfiguration(
  config: ConfigurationSpec,
  speed: UsbSpeed,
  type: number,
  strings: StringTable,
): { bytes: Uint8Array; layout: ConfigurationLayout } {
  const parts: Uint8Array[] = [new Uint8Array(CONFIGURATION_DESCRIPTOR_LENGTH)];
  const interfaces: InterfaceLayout[] = [];
  const seenInterfaces = new Set<number>();
  for (const iface of config.interfaces) {
    checkByte("bInterfaceNumber", iface.interfaceNumber);
    if (seenInterfaces.has(iface.interfaceNumber)) fail(`interface ${iface.interfaceNumber} listed twice`);
    seenInterfaces.add(iface.interfaceNumber);
    if (iface.alternates[0]?.alternateSetting !== 0)
      fail(`interface ${iface.interfaceNumber}: first alternate setting must be 0`);
    const alternates: AlternateLayout[] = [];
    for (const alt of iface.alternates) {
      if (alternates.some((a) => a.alternateSetting === alt.alternateSetting))
        fail(`interface ${iface.interfaceNumber}: alternate ${alt.alternateSetting} listed twice`);
      const head = new Uint8Array(INTERFACE_DESCRIPTOR_LENGTH);
      head[0] = INTERFACE_DESCRIPTOR_LENGTH;
      head[1] = DescriptorType.INTERFACE;
      head[2] = iface.interfaceNumber;
      head[3] = checkByte("bAlternateSetting", alt.alternateSetting);
      head[4] = checkByte("bNumEndpoints", alt.endpoints.length);
      head[5] = checkByte("bInterfaceClass", alt.interfaceClass);
      head[6] = checkByte("bInterfaceSubClass", alt.interfaceSubClass);
      head[7] = checkByte("bInterfaceProtocol", alt.interfaceProtocol);
      head[8] = strings.index(alt.name);
      parts.push(head);
      for (const extra of alt.classDescriptors ?? []) {
        if (extra.length < 2 || extra[0] !== extra.length)
          fail("class descriptor bLength does not match its size");
        parts.push(extra);
      }
      const endpoints: EndpointLayout[] = [];
      for (const ep of alt.endpoints) {
        if (endpoints.some((e) => e.address === ep.address))
          fail(`endpoint 0x${ep.address.toString(16)} listed twice in one alternate setting`);
        const r = resolveEndpoint(ep, speed);
        const ss = resolveSuperSpeed(ep);
        parts.push(endpointDescriptor(ep, r.maxPacketSize, r.bInterval));
        if (speed === UsbSpeed.SUPER) parts.push(companionDescriptor(ep, r.maxPacketSize, ss));
        endpoints.push({
          address: ep.address,
          type: ep.type,
          maxPacketSize: r.maxPacketSize,
          intervalMs: r.intervalMs,
          maxStreams: speed === UsbSpeed.SUPER && ss.streamsExponent > 0 ? 2 ** ss.streamsExponent : 0,
          interfaceNumber: iface.interfaceNumber,
          alternateSetting: alt.alternateSetting,
        });
      }
      alternates.push({ alternateSetting: alt.alternateSetting, endpoints });
    }
    interfaces.push({ interfaceNumber: iface.interfaceNumber, alternates });
  }
  const bytes = concat(parts);
  if (bytes.length > MAX_TOTAL_LENGTH) fail("configuration set longer than wTotalLength can say");
  const maxPower = config.maxPowerMa ?? 100;
  if (!(maxPower >= 0 && maxPower <= MAX_POWER_MA)) fail(`maxPowerMa must be 0..${MAX_POWER_MA}`);
  bytes[0] = CONFIGURATION_DESCRIPTOR_LENGTH;
  bytes[1] = type;
  putU16(bytes, 2, bytes.length);
  bytes[4] = checkByte("bNumInterfaces", config.interfaces.length);
  bytes[5] = checkByte("bConfigurationValue", config.configurationValue);
  if (config.configurationValue === 0) fail("bConfigurationValue 0 means unconfigured");
  bytes[6] = strings.index(config.name);
  bytes[7] =
    CONFIG_ATTR_RESERVED_ONE |
    (config.selfPowered ? CONFIG_ATTR_SELF_POWERED : 0) |
    (config.remoteWakeup ? CONFIG_ATTR_REMOTE_WAKEUP : 0);
  bytes[8] = Math.ceil(maxPower / MAX_POWER_UNIT_MA);
  return {
    bytes,
    layout: {
      configurationValue: config.configurationValue,
      selfPowered: config.selfPowered ?? false,
      remoteWakeup: config.remoteWakeup ?? false,
      interfaces,
    },
  };
}

/** Build every descriptor of `spec` as the device presents itself at `speed` (FULL, HIGH or SUPER). */
export function buildDescriptors(spec: DescriptorSpec, speed: UsbSpeed): DeviceDescriptors {
  const superCapable = spec.superSpeed ?? false;
  if (speed === UsbSpeed.SUPER && !superCapable) fail("speed super: the device is not SuperSpeed-capable");
  if (speed !== UsbSpeed.FULL && speed !== UsbSpeed.HIGH && speed !== UsbSpeed.SUPER)
    fail(`speed ${speed}: only full, high and super speed`);
  const superSpeed = speed === UsbSpeed.SUPER;
  const bcdUsb = superSpeed ? BCD_USB_3_0 : superCapable ? BCD_USB_2_1 : BCD_USB_2_0;
  if (spec.configurations.length === 0) fail("a device needs at least one configuration");
  const values = new Set(spec.configurations.map((c) => c.configurationValue));
  if (values.size !== spec.configurations.length) fail("duplicate bConfigurationValue");
  const strings = new StringTable();

  const device = new Uint8Array(DEVICE_DESCRIPTOR_LENGTH);
  device[0] = DEVICE_DESCRIPTOR_LENGTH;
  device[1] = DescriptorType.DEVICE;
  putU16(device, 2, bcdUsb);
  device[4] = checkByte("bDeviceClass", spec.deviceClass);
  device[5] = checkByte("bDeviceSubClass", spec.deviceSubClass);
  device[6] = checkByte("bDeviceProtocol", spec.deviceProtocol);
  device[7] = superSpeed ? SUPER_SPEED_EP0_EXPONENT : EP0_MAX_PACKET_SIZE;
  putU16(device, 8, checkWord("idVendor", spec.vendorId));
  putU16(device, 10, checkWord("idProduct", spec.productId));
  putU16(device, 12, checkWord("bcdDevice", spec.bcdDevice));
  device[14] = strings.index(spec.manufacturer);
  device[15] = strings.index(spec.product);
  device[16] = strings.index(spec.serialNumber);
  device[17] = checkByte("bNumConfigurations", spec.configurations.length);

  const built = spec.configurations.map((c) =>
    buildConfiguration(c, speed, DescriptorType.CONFIGURATION, strings),
  );
  let otherSpeedConfigurations: Uint8Array[] | null = null;
  let deviceQualifier: Uint8Array | null = null;
  // §9.6.2: a device running at SuperSpeed has no "other speed" to describe.
  if (spec.dualSpeed && !superSpeed) {
    const other = otherSpeed(speed);
    otherSpeedConfigurations = spec.configurations.map(
      (c) => buildConfiguration(c, other, DescriptorType.OTHER_SPEED_CONFIGURATION, strings).bytes,
    );
    // §9.6.2: the fields of the device descriptor that would change at the other speed.
    deviceQualifier = new Uint8Array(DEVICE_QUALIFIER_LENGTH);
    deviceQualifier[0] = DEVICE_QUALIFIER_LENGTH;
    deviceQualifier[1] = DescriptorType.DEVICE_QUALIFIER;
    putU16(deviceQualifier, 2, bcdUsb);
    deviceQualifier[4] = spec.deviceClass;
    deviceQualifier[5] = spec.deviceSubClass;
    deviceQualifier[6] = spec.deviceProtocol;
    deviceQualifier[7] = EP0_MAX_PACKET_SIZE;
    deviceQualifier[8] = spec.configurations.length;
    deviceQualifier[9] = 0; // bReserved
  }
  return {
    speed,
    device,
    configurations: built.map((b) => b.bytes),
    otherSpeedConfigurations,
    deviceQualifier,
    bos: superCapable ? bosDescriptor() : null,
    strings: strings.byIndex,
    layout: built.map((b) => b.layout),
  };
}
