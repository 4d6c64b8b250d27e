/**
 * The USB/IP wire format (Linux Documentation/usb/usbip_protocol.rst,
 * include/uapi/linux/usbip.h, drivers/usb/usbip/usbip_common.h): TCP port
 * 3240, version 0x0111, every field big-endian except the setup packet, which
 * travels as the 8 bytes USB defines (its u16 fields little-endian).
 *
 * Management phase (one request per exchange):
 *
 *   op header, 8 bytes     0 version u16   2 code u16   4 status u32
 *   OP_REQ_DEVLIST 0x8005  header only
 *   OP_REP_DEVLIST 0x0005  header, ndev u32, ndev × (device record + bNumInterfaces × interface record)
 *   OP_REQ_IMPORT  0x8003  header, busid[32]
 *   OP_REP_IMPORT  0x0003  header, device record (only when status is 0)
 *
 *   device record, 312 bytes
 *     0 path[256]  256 busid[32]  288 busnum u32  292 devnum u32  296 speed u32
 *   300 idVendor u16  302 idProduct u16  304 bcdDevice u16  306 bDeviceClass  307 bDeviceSubClass
 *   308 bDeviceProtocol  309 bConfigurationValue  310 bNumConfigurations  311 bNumInterfaces
 *   interface record, 4 bytes: class, subclass, protocol, padding
 *
 * URB phase (after a successful import, on the same connection), 48-byte header:
 *
 *    0 command u32  4 seqnum u32  8 devid u32  12 direction u32 (0 out, 1 in)  16 ep u32
 *   CMD_SUBMIT 1   20 transfer_flags u32  24 transfer_buffer_length s32  28 start_frame s32
 *                  32 number_of_packets s32  36 interval s32  40 setup[8]
 *                  then OUT data (transfer_buffer_length bytes), then number_of_packets iso descriptors
 *   RET_SUBMIT 3   20 status s32  24 actual_length s32  28 start_frame s32  32 number_of_packets s32
 *                  36 error_count s32  40 padding[8]
 *                  then IN data (actual_length bytes; iso: the packets' data compacted), then iso descriptors
 *   CMD_UNLINK 2   20 unlink_seqnum u32, padding[24]
 *   RET_UNLINK 4   20 status s32, padding[24]
 *
 *   iso descriptor, 16 bytes: 0 offset u32  4 length u32  8 actual_length u32  12 status s32
 *
 * The frame readers below split a byte stream into whole PDUs with hard limits and tell "need more bytes"
 * from "malformed: framing is lost, drop the connection". Checks that leave the stream in sync (a bad
 * endpoint, a setup packet that makes no sense) are the server's, answered per URB.
 */
import { MAX_BUFFER_LENGTH, MAX_ISO_PACKETS } from "../urb/limits.js";
import { createStatusTranslation, ESHUTDOWN, STATUS_TABLE, type UrbStatus } from "../urb/status.js";
import { UsbSpeed } from "../usb/index.js";
import { ByteQueue } from "../util/byte-queue.js";

export const USBIP_PORT = 3240;
export const USBIP_VERSION = 0x0111;

export const OpCode = {
  REQ_DEVLIST: 0x8005,
  REP_DEVLIST: 0x0005,
  REQ_IMPORT: 0x8003,
  REP_IMPORT: 0x0003,
} as const;

/** Management status (usbip_common.h / usbip_network.h ST_*). */
export const OpStatus = { OK: 0, NA: 1, DEV_BUSY: 2, DEV_ERR: 3, NODEV: 4, ERROR: 5 } as const;
export type OpStatus = (typeof OpStatus)[keyof typeof OpStatus];

export function opStatusName(status: number): string {
  return Object.entries(OpStatus).find(([, v]) => v === status)?.[0] ?? `unknown(${status})`;
}

export const UsbipCommand = { CMD_SUBMIT: 1, CMD_UNLINK: 2, RET_SUBMIT: 3, RET_UNLINK: 4 } as const;

/** Linux `enum usb_device_speed`, as the device record carries it. */
export const UsbipSpeed = {
  UNKNOWN: 0,
  LOW: 1,
  FULL: 2,
  HIGH: 3,
  WIRELESS: 4,
  SUPER: 5,
  SUPER_PLUS: 6,
} as const;

/** URB transfer_flags (include/linux/usb.h) that mean something to usbvirt. */
export const TransferFlag = {
  SHORT_NOT_OK: 0x0001,
  ISO_ASAP: 0x0002,
  ZERO_PACKET: 0x0040,
  DIR_IN: 0x0200,
} as const;

export const OP_HEADER_SIZE = 8;
export const PATH_SIZE = 256;
export const BUSID_SIZE = 32;
export const DEVICE_RECORD_SIZE = 312;
export const INTERFACE_RECORD_SIZE = 4;
export const IMPORT_REQUEST_SIZE = OP_HEADER_SIZE + BUSID_SIZE;
export const URB_HEADER_SIZE = 48;
export const ISO_DESCRIPTOR_SIZE = 16;

/** Hard limits of the frame readers: the engine's own URB limits, and a bound on devlist replies. */
export const MAX_TRANSFER_LENGTH: number = MAX_BUFFER_LENGTH;
export const MAX_PACKETS: number = MAX_ISO_PACKETS;
export const MAX_DEVLIST_DEVICES = 256;

/** number_of_packets of a non-iso URB: the doc says 0, its own capture shows 0xffffffff; both are accepted. */
export const NON_ISO_PACKETS = 0xffff_ffff;

// Layout assertions at load: the record is 312 bytes, the URB header 48.
if (PATH_SIZE + BUSID_SIZE + 3 * 4 + 3 * 2 + 6 !== DEVICE_RECORD_SIZE || 20 + 28 !== URB_HEADER_SIZE) {
  throw new Error("usbip: wire layout constants are inconsistent");
}

// ---------------------------------------------------------------- statuses

/**
 * The USB/IP boundary's status translation. USB/IP carries Linux's negative errno values, the same
 * numbers src/urb/status.ts uses, so the table is the identity over STATUS_TABLE; a status outside it
 * (a peer writing nonsense, or an errno usbvirt has no meaning for) becomes -ESHUTDOWN, as xen-hcd does.
 */
export const statusFromUsbip: (raw: number) => UrbStatus = createStatusTranslation(
  "USB/IP RET_SUBMIT/RET_UNLINK status",
  new Map<number, UrbStatus>(STATUS_TABLE.map((s) => [s.status as number, s.status])),
  ESHUTDOWN,
);

// ---------------------------------------------------------------- records

export interface InterfaceRecord {
  readonly cls: number;
  readonly subclass: number;
  readonly protocol: number;
}

/** One exported device as the device record describes it (bNumInterfaces is interfaces.length). */
export interface DeviceRecord {
  readonly path: string;
  readonly busid: string;
  readonly busnum: number;
  readonly devnum: number;
  /** Linux speed (UsbipSpeed). */
  readonly speed: number;
  readonly idVendor: number;
  readonly idProduct: number;
  readonly bcdDevice: number;
  readonly bDeviceClass: number;
  readonly bDeviceSubClass: number;
  readonly bDeviceProtocol: number;
  readonly bConfigurationValue: number;
  readonly bNumConfigurations: number;
  readonly interfaces: readonly InterfaceRecord[];
}

/** devid as vhci builds it: busnum << 16 | devnum. */
export function devidOf(record: Pick<DeviceRecord, "busnum" | "devnum">): number {
  return ((record.busnum << 16) | (record.devnum & 0xffff)) >>> 0;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function writeCString(out: Uint8Array, at: number, size: number, text: string): void {
  const encoded = new TextEncoder().encode(text);
  // Always NUL-terminated: at most size − 1 bytes of text.
  out.set(encoded.subarray(0, size - 1), at);
}

function readCString(bytes: Uint8Array, at: number, size: number): string {
  const field = bytes.subarray(at, at + size);
  const nul = field.indexOf(0);
  return new TextDecoder("utf-8", { fatal: false }).decode(nul < 0 ? field : field.subarray(0, nul));
}

/** Write the 312-byte device record at `at`. */
export function writeDeviceRecord(out: Uint8Array, at: number, d: DeviceRecord): void {
  out.fill(0, at, at + DEVICE_RECORD_SIZE);
  writeCString(out, at, PATH_SIZE, d.path);
  writeCString(out, at + 256, BUSID_SIZE, d.busid);
  const v = view(out);
  v.setUint32(at + 288, d.busnum);
  v.setUint32(at + 292, d.devnum);
  v.setUint32(at + 296, d.speed);
  v.setUint16(at + 300, d.idVendor);
  v.setUint16(at + 302, d.idProduct);
  v.setUint16(at + 304, d.bcdDevice);
  out[at + 306] = d.bDeviceClass;
  out[at + 307] = d.bDeviceSubClass;
  out[at + 308] = d.bDeviceProtocol;
  out[at + 309] = d.bConfigurationValue;
  out[at + 310] = d.bNumConfigurations;
  out[at + 311] = d.interfaces.length;
}

/** Read a device record; `interfaces` come from the bytes after it when `withInterfaces`. */
export function readDeviceRecord(bytes: Uint8Array, at: number, withInterfaces: boolean): DeviceRecord {
  const v = view(bytes);
  const count = bytes[at + 311]!;
  const interfaces: InterfaceRecord[] = [];
  if (withInterfaces) {
    for (let i = 0; i < count; i++) {
      const p = at + DEVICE_RECORD_SIZE + i * INTERFACE_RECORD_SIZE;
      interfaces.push({ cls: bytes[p]!, subclass: bytes[p + 1]!, protocol: bytes[p + 2]! });
    }
  }
  return {
    path: readCString(bytes, at, PATH_SIZE),
    busid: readCString(bytes, at + 256, BUSID_SIZE),
    busnum: v.getUint32(at + 288),
    devnum: v.getUint32(at + 292),
    speed: v.getUint32(at + 296),
    idVendor: v.getUint16(at + 300),
    idProduct: v.getUint16(at + 302),
    bcdDevice: v.getUint16(at + 304),
    bDeviceClass: bytes[at + 306]!,
    bDeviceSubClass: bytes[at + 307]!,
    bDeviceProtocol: bytes[at + 308]!,
    bConfigurationValue: bytes[at + 309]!,
    bNumConfigurations: bytes[at + 310]!,
    // Without the interface records (import reply) keep the count visible as empty placeholders.
    interfaces: withInterfaces
      ? interfaces
      : Array.from({ length: count }, () => ({ cls: 0, subclass: 0, protocol: 0 })),
  };
}

// ---------------------------------------------------------------- management PDUs

export function encodeOpHeader(code: number, status: number): Uint8Array {
  const out = new Uint8Array(OP_HEADER_SIZE);
  const v = view(out);
  v.setUint16(0, USBIP_VERSION);
  v.setUint16(2, code);
  v.setUint32(4, status);
  return out;
}

export function encodeDevlistRequest(): Uint8Array {
  return encodeOpHeader(OpCode.REQ_DEVLIST, 0);
}

export function encodeImportRequest(busid: string): Uint8Array {
  const out = new Uint8Array(IMPORT_REQUEST_SIZE);
  out.set(encodeOpHeader(OpCode.REQ_IMPORT, 0), 0);
  writeCString(out, OP_HEADER_SIZE, BUSID_SIZE, busid);
  return out;
}

export function encodeDevlistReply(devices: readonly DeviceRecord[]): Uint8Array {
  let size = OP_HEADER_SIZE + 4;
  for (const d of devices) size += DEVICE_RECORD_SIZE + d.interfaces.length * INTERFACE_RECORD_SIZE;
  const out = new Uint8Array(size);
  out.set(encodeOpHeader(OpCode.REP_DEVLIST, OpStatus.OK), 0);
  view(out).setUint32(OP_HEADER_SIZE, devices.length);
  let at = OP_HEADER_SIZE + 4;
  for (const d of devices) {
    writeDeviceRecord(out, at, d);
    at += DEVICE_RECORD_SIZE;
    for (const i of d.interfaces) {
      out[at] = i.cls;
      out[at + 1] = i.subclass;
      out[at + 2] = i.protocol;
      at += INTERFACE_RECORD_SIZE;
    }
  }
  return out;
}

/** A refused import is the 8-byte header alone; an accepted one carries the full record. */
export function encodeImportReply(status: OpStatus, device?: DeviceRecord): Uint8Array {
  if (status !== OpStatus.OK || device === undefined) return encodeOpHeader(OpCode.REP_IMPORT, status);
  const out = new Uint8Array(OP_HEADER_SIZE + DEVICE_RECORD_SIZE);
  out.set(encodeOpHeader(OpCode.REP_IMPORT, OpStatus.OK), 0);
  writeDeviceRecord(out, OP_HEADER_SIZE, device);
  return out;
}

// ---------------------------------------------------------------- URB PDUs

export interface IsoDescriptor {
  readonly offset: number;
  readonly length: number;
  readonly actualLength: number;
  readonly status: number;
}

interface UrbHeaderBase {
  readonly seqnum: number;
  readonly devid: number;
  /** Direction field: true for 1 (in). */
  readonly directionIn: boolean;
  readonly ep: number;
}

export interface CmdSubmit extends UrbHeaderBase {
  readonly command: "submit";
  readonly transferFlags: number;
  readonly transferBufferLength: number;
  readonly startFrame: number;
  /** -1 (0xffffffff on the wire) or 0 for a non-iso URB; 1..MAX_PACKETS for iso. */
  readonly numberOfPackets: number;
  readonly interval: number;
  /** The 8 setup bytes as sent (meaningful for endpoint 0). */
  readonly setup: Uint8Array;
  /** OUT data, transfer_buffer_length bytes; empty for IN. */
  readonly data: Uint8Array;
  readonly iso: readonly IsoDescriptor[];
}

export interface CmdUnlink extends UrbHeaderBase {
  readonly command: "unlink";
  readonly unlinkSeqnum: number;
}

export interface RetSubmit extends UrbHeaderBase {
  readonly command: "ret-submit";
  readonly status: number;
  readonly actualLength: number;
  readonly startFrame: number;
  readonly numberOfPackets: number;
  readonly errorCount: number;
  /** IN data: actual_length bytes (iso: packets compacted). */
  readonly data: Uint8Array;
  readonly iso: readonly IsoDescriptor[];
}

export interface RetUnlink extends UrbHeaderBase {
  readonly command: "ret-unlink";
  readonly status: number;
}

export type ClientPdu = CmdSubmit | CmdUnlink;
export type ServerPdu = RetSubmit | RetUnlink;

function isoPacketCount(raw: number): number {
  return raw === NON_ISO_PACKETS || raw === 0 ? 0 : raw;
}

function writeBase(v: DataView, command: number, h: UrbHeaderBase): void {
  v.setUint32(0, command);
  v.setUint32(4, h.seqnum >>> 0);
  v.setUint32(8, h.devid >>> 0);
  v.setUint32(12, h.directionIn ? 1 : 0);
  v.setUint32(16, h.ep >>> 0);
}

function writeIso(v: DataView, at: number, iso: readonly IsoDescriptor[]): void {
  for (let i = 0; i < iso.length; i++) {
    const d = iso[i]!;
    const p = at + i * ISO_DESCRIPTOR_SIZE;
    v.setUint32(p, d.offset >>> 0);
    v.setUint32(p + 4, d.length >>> 0);
    v.setUint32(p + 8, d.actualLength >>> 0);
    v.setInt32(p + 12, d.status | 0);
  }
}

function readIso(bytes: Uint8Array, at: number, count: number): IsoDescriptor[] {
  const v = view(bytes);
  const out: IsoDescriptor[] = [];
  for (let i = 0; i < count; i++) {
    const p = at + i * ISO_DESCRIPTOR_SIZE;
    out.push({
      offset: v.getUint32(p),
      length: v.getUint32(p + 4),
      actualLength: v.getUint32(p + 8),
      status: v.getInt32(p + 12),
    });
  }
  return out;
}

/** CMD_SUBMIT with its OUT data and iso descriptors, as one buffer. */
export function encodeCmdSubmit(c: Omit<CmdSubmit, "command">): Uint8Array {
  const data = c.directionIn ? new Uint8Array(0) : c.data;
  const out = new Uint8Array(URB_HEADER_SIZE + data.length + c.iso.length * ISO_DESCRIPTOR_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.CMD_SUBMIT, c);
  v.setUint32(20, c.transferFlags >>> 0);
  v.setInt32(24, c.transferBufferLength | 0);
  v.setInt32(28, c.startFrame | 0);
  v.setInt32(32, c.iso.length > 0 ? c.iso.length : c.numberOfPackets | 0);
  v.setInt32(36, c.interval | 0);
  out.set(c.setup.subarray(0, 8), 40);
  out.set(data, URB_HEADER_SIZE);
  writeIso(v, URB_HEADER_SIZE + data.length, c.iso);
  return out;
}

export function encodeCmdUnlink(c: Omit<CmdUnlink, "command">): Uint8Array {
  const out = new Uint8Array(URB_HEADER_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.CMD_UNLINK, c);
  v.setUint32(20, c.unlinkSeqnum >>> 0);
  return out;
}

/** RET_SUBMIT header followed by `data` (already compacted for iso) and the iso descriptors. */
export function encodeRetSubmit(r: Omit<RetSubmit, "command">): Uint8Array {
  const out = new Uint8Array(URB_HEADER_SIZE + r.data.length + r.iso.length * ISO_DESCRIPTOR_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.RET_SUBMIT, r);
  v.setInt32(20, r.status | 0);
  v.setInt32(24, r.actualLength | 0);
  v.setInt32(28, r.startFrame | 0);
  v.setInt32(32, r.iso.length);
  v.setInt32(36, r.errorCount | 0);
  out.set(r.data, URB_HEADER_SIZE);
  writeIso(v, URB_HEADER_SIZE + r.data.length, r.iso);
  return out;
}

export function encodeRetUnlink(r: Omit<RetUnlink, "command">): Uint8Array {
  const out = new Uint8Array(URB_HEADER_SIZE);
  const v = view(out);
  writeBase(v, UsbipCommand.RET_UNLINK, r);
  v.setInt32(20, r.status | 0);
  return out;
}

// ---------------------------------------------------------------- byte queue

export { ByteQueue };

// ---------------------------------------------------------------- frame readers

/** A reader's verdict: a whole frame, "need more bytes", or malformed (framing lost: drop the connection). */
export type ReadResult<T> =
  | { readonly kind: "frame"; readonly frame: T }
  | { readonly kind: "need" }
  | { readonly kind: "malformed"; readonly reason: string };

const NEED = { kind: "need" } as const;
function malformed(reason: string): { kind: "malformed"; reason: string } {
  return { kind: "malformed", reason };
}

export type OpRequest =
  | { readonly op: "devlist" }
  | { readonly op: "import"; readonly busid: string; readonly busidValid: boolean };

/** Server side, management phase: OP_REQ_DEVLIST or OP_REQ_IMPORT. */
export function readOpRequest(q: ByteQueue): ReadResult<OpRequest> {
  if (q.length < OP_HEADER_SIZE) return NEED;
  const h = view(q.peek(OP_HEADER_SIZE));
  const version = h.getUint16(0);
  const code = h.getUint16(2);
  if (version !== USBIP_VERSION) {
    return malformed(`unsupported USB/IP version 0x${version.toString(16).padStart(4, "0")} (want 0x0111)`);
  }
  if (code === OpCode.REQ_DEVLIST) {
    q.take(OP_HEADER_SIZE);
    return { kind: "frame", frame: { op: "devlist" } };
  }
  if (code === OpCode.REQ_IMPORT) {
    if (q.length < IMPORT_REQUEST_SIZE) return NEED;
    const bytes = q.take(IMPORT_REQUEST_SIZE);
    const field = bytes.subarray(OP_HEADER_SIZE);
    return {
      kind: "frame",
      frame: { op: "import", busid: readCString(field, 0, BUSID_SIZE), busidValid: field.includes(0) },
    };
  }
  return malformed(`unknown management code 0x${code.toString(16).padStart(4, "0")}`);
}

/** Server side, URB phase: CMD_SUBMIT (with its OUT data and iso descriptors) or CMD_UNLINK. */
export function readClientPdu(q: ByteQueue): ReadResult<ClientPdu> {
  if (q.length < URB_HEADER_SIZE) return NEED;
  const head = q.peek(URB_HEADER_SIZE);
  const h = view(head);
  const command = h.getUint32(0);
  const direction = h.getUint32(12);
  if (command !== UsbipCommand.CMD_SUBMIT && command !== UsbipCommand.CMD_UNLINK) {
    if (command >>> 16 === USBIP_VERSION) {
      return malformed("management request after import");
    }
    return malformed(`unknown command 0x${command.toString(16)}`);
  }
  if (direction !== 0 && direction !== 1) return malformed(`direction ${direction} is neither 0 nor 1`);
  const base = {
    seqnum: h.getUint32(4),
    devid: h.getUint32(8),
    directionIn: direction === 1,
    ep: h.getUint32(16),
  };
  if (command === UsbipCommand.CMD_UNLINK) {
    q.take(URB_HEADER_SIZE);
    return { kind: "frame", frame: { command: "unlink", ...base, unlinkSeqnum: h.getUint32(20) } };
  }
  const length = h.getInt32(24);
  const rawPackets = h.getUint32(32);
  if (length < 0 || length > MAX_TRANSFER_LENGTH) {
    return malformed(`transfer_buffer_length ${length} is outside [0, ${MAX_TRANSFER_LENGTH}]`);
  }
  const packets = isoPacketCount(rawPackets);
  if (packets > MAX_PACKETS) return malformed(`number_of_packets ${rawPackets} is above ${MAX_PACKETS}`);
  const dataLength = base.directionIn ? 0 : length;
  const total = URB_HEADER_SIZE + dataLength + packets * ISO_DESCRIPTOR_SIZE;
  if (q.length < total) return NEED;
  const bytes = q.take(total);
  return {
    kind: "frame",
    frame: {
      command: "submit",
      ...base,
      transferFlags: h.getUint32(20),
      transferBufferLength: length,
      startFrame: h.getInt32(28),
      numberOfPackets: packets === 0 ? h.getInt32(32) : packets,
      interval: h.getInt32(36),
      setup: bytes.slice(40, 48),
      data: bytes.subarray(URB_HEADER_SIZE, URB_HEADER_SIZE + dataLength),
      iso: readIso(bytes, URB_HEADER_SIZE + dataLength, packets),
    },
  };
}

export type OpReply =
  | { readonly op: "devlist"; readonly status: number; readonly devices: readonly DeviceRecord[] }
  | { readonly op: "import"; readonly status: number; readonly device: DeviceRecord | null };

/** Client side, management phase: the reply to the request the client sent. */
export function readOpReply(q: ByteQueue, expect: "devlist" | "import"): ReadResult<OpReply> {
  if (q.length < OP_HEADER_SIZE) return NEED;
  const h = view(q.peek(OP_HEADER_SIZE));
  const version = h.getUint16(0);
  const code = h.getUint16(2);
  const status = h.getUint32(4);
  if (version !== USBIP_VERSION) {
    return malformed(`unsupported USB/IP version 0x${version.toString(16).padStart(4, "0")} in reply`);
  }
  const want = expect === "devlist" ? OpCode.REP_DEVLIST : OpCode.REP_IMPORT;
  if (code !== want)
    return malformed(`reply code 0x${code.toString(16)} where 0x${want.toString(16)} was due`);
  if (expect === "import") {
    if (status !== OpStatus.OK) {
      q.take(OP_HEADER_SIZE);
      return { kind: "frame", frame: { op: "import", status, device: null } };
    }
    if (q.length < OP_HEADER_SIZE + DEVICE_RECORD_SIZE) return NEED;
    const bytes = q.take(OP_HEADER_SIZE + DEVICE_RECORD_SIZE);
    return {
      kind: "frame",
      frame: { op: "import", status, device: readDeviceRecord(bytes, OP_HEADER_SIZE, false) },
    };
  }
  if (status !== OpStatus.OK) {
    q.take(OP_HEADER_SIZE);
    return { kind: "frame", frame: { op: "devlist", status, devices: [] } };
  }
  if (q.length < OP_HEADER_SIZE + 4) return NEED;
  const count = view(q.peek(OP_HEADER_SIZE + 4)).getUint32(OP_HEADER_SIZE);
  if (count > MAX_DEVLIST_DEVICES)
    return malformed(`devlist of ${count} devices (limit ${MAX_DEVLIST_DEVICES})`);
  // Walk the variable-length records without consuming, bounded by `count`.
  let size = OP_HEADER_SIZE + 4;
  for (let i = 0; i < count; i++) {
    if (q.length < size + DEVICE_RECORD_SIZE) return NEED;
    const interfaces = q.peek(size + DEVICE_RECORD_SIZE)[size + DEVICE_RECORD_SIZE - 1]!;
    size += DEVICE_RECORD_SIZE + interfaces * INTERFACE_RECORD_SIZE;
  }
  if (q.length < size) return NEED;
  const bytes = q.take(size);
  const devices: DeviceRecord[] = [];
  let at = OP_HEADER_SIZE + 4;
  for (let i = 0; i < count; i++) {
    const d = readDeviceRecord(bytes, at, true);
    devices.push(d);
    at += DEVICE_RECORD_SIZE + d.interfaces.length * INTERFACE_RECORD_SIZE;
  }
  return { kind: "frame", frame: { op: "devlist", status, devices } };
}

/** What the client knows of a request it sent, to frame the reply (RET_SUBMIT carries no direction). */
export interface SentSubmit {
  readonly directionIn: boolean;
  readonly transferBufferLength: number;
}

/** Client side, URB phase. An unknown seqnum or an IN reply longer than asked is malformed (vhci drops too). */
export function readServerPdu(
  q: ByteQueue,
  lookup: (seqnum: number) => SentSubmit | undefined,
): ReadResult<ServerPdu> {
  if (q.length < URB_HEADER_SIZE) return NEED;
  const head = q.peek(URB_HEADER_SIZE);
  const h = view(head);
  const command = h.getUint32(0);
  const base = {
    seqnum: h.getUint32(4),
    devid: h.getUint32(8),
    directionIn: h.getUint32(12) === 1,
    ep: h.getUint32(16),
  };
  if (command === UsbipCommand.RET_UNLINK) {
    q.take(URB_HEADER_SIZE);
    return { kind: "frame", frame: { command: "ret-unlink", ...base, status: h.getInt32(20) } };
  }
  if (command !== UsbipCommand.RET_SUBMIT) return malformed(`unknown command 0x${command.toString(16)}`);
  const sent = lookup(base.seqnum);
  if (sent === undefined) return malformed(`RET_SUBMIT for seqnum ${base.seqnum}, which is not in flight`);
  const actual = h.getInt32(24);
  if (actual < 0 || actual > sent.transferBufferLength) {
    return malformed(
      `actual_length ${actual} outside [0, ${sent.transferBufferLength}] for seqnum ${base.seqnum}`,
    );
  }
  const rawPackets = h.getUint32(32);
  const packets = isoPacketCount(rawPackets);
  if (packets > MAX_PACKETS) return malformed(`number_of_packets ${rawPackets} is above ${MAX_PACKETS}`);
  const dataLength = sent.directionIn ? actual : 0;
  const total = URB_HEADER_SIZE + dataLength + packets * ISO_DESCRIPTOR_SIZE;
  if (q.length < total) return NEED;
  const bytes = q.take(total);
  return {
    kind: "frame",
    frame: {
      command: "ret-submit",
      ...base,
      status: h.getInt32(20),
      actualLength: actual,
      startFrame: h.getInt32(28),
      numberOfPackets: packets,
      errorCount: h.getInt32(36),
      data: bytes.subarray(URB_HEADER_SIZE, URB_HEADER_SIZE + dataLength),
      iso: readIso(bytes, URB_HEADER_SIZE + dataLength, packets),
    },
  };
}

/** The engine's speed (src/usb/speed.ts UsbSpeed) → Linux's enum in the record. */
export function usbipSpeedOf(speed: number): number {
  switch (speed) {
    case UsbSpeed.LOW:
      return UsbipSpeed.LOW;
    case UsbSpeed.FULL:
      return UsbipSpeed.FULL;
    case UsbSpeed.HIGH:
      return UsbipSpeed.HIGH;
    case UsbSpeed.SUPER:
      return UsbipSpeed.SUPER;
    default:
      return UsbipSpeed.UNKNOWN;
  }
}

/** Linux speed from a device record → the engine's speed (wireless counts as high, super-plus as super). */
export function usbifSpeedOf(usbipSpeed: number): UsbSpeed {
  switch (usbipSpeed) {
    case UsbipSpeed.LOW:
      return UsbSpeed.LOW;
    case UsbipSpeed.FULL:
      return UsbSpeed.FULL;
    case UsbipSpeed.HIGH:
    case UsbipSpeed.WIRELESS:
      return UsbSpeed.HIGH;
    case UsbipSpeed.SUPER:
    case UsbipSpeed.SUPER_PLUS:
      return UsbSpeed.SUPER;
    default:
      return UsbSpeed.NONE;
  }
}
