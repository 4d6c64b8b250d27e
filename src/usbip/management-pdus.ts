/**
 * The USB/IP management phase (one request per exchange, before a device is imported): the op header,
 * the requests the client sends and the replies the server sends, and a frame reader for each side.
 *
 *   op header, 8 bytes     0 version u16   2 code u16   4 status u32
 *   OP_REQ_DEVLIST 0x8005  header only
 *   OP_REP_DEVLIST 0x0005  header, ndev u32, ndev × (device record + bNumInterfaces × interface record)
 *   OP_REQ_IMPORT  0x8003  header, busid[32]
 *   OP_REP_IMPORT  0x0003  header, device record (only when status is 0)
 *
 * The device and interface records are device-record.ts's.
 */
import type { ByteQueue } from "../util/byte-queue.js";
import { type DeviceRecord, readDeviceRecord, writeDeviceRecord } from "./device-record.js";
import {
  BUSID_SIZE,
  DEVICE_RECORD_SIZE,
  IMPORT_REQUEST_SIZE,
  INTERFACE_RECORD_SIZE,
  MAX_DEVLIST_DEVICES,
  OP_HEADER_SIZE,
  OpCode,
  OpStatus,
  USBIP_VERSION,
} from "./protocol.js";
import { malformed, NEED, type ReadResult } from "./read-result.js";
import { readCString, view, writeCString } from "./wire-fields.js";

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
