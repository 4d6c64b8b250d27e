/**
 * Synthesise what umockdev needs to fake a USB device for real libusb code:
 * a device description (`*.umockdev`, from bench/umockdev-testbed.ts, which
 * the iso bench shares) and a usbmon capture to replay (classic pcap,
 * LINKTYPE_USB_LINUX_MMAPPED = 220, 64-byte headers from Linux
 * Documentation/usb/usbmon.rst). umockdev-run replays the capture strictly in
 * order: each URB the program submits must match the next recorded submit
 * (type, endpoint, length, OUT data and setup bytes), and its completion is
 * the recorded one. See /work/shared/USB-TESTING.md for what was checked.
 */
import { testbedPython as findTestbedPython } from "../../bench/umockdev-testbed.js";
import { command, found, missing, type Tool } from "../support/tools.js";

export { type FakeUsbDevice, umockdevDescription } from "../../bench/umockdev-testbed.js";

export const XFER_ISO = 0;
export const XFER_INTERRUPT = 1;
export const XFER_CONTROL = 2;
export const XFER_BULK = 3;

/** umockdev-run, which replays a usbmon capture against a described device. */
export function umockdevRun(): Tool<string> {
  return command(["umockdev-run"], "apt-get install umockdev");
}

/**
 * A Python 3 that has umockdev's GObject introspection, for the interactive testbeds (test/host/children/*.py,
 * bench/python/iso-testbed.py), which run themselves under umockdev-wrapper.
 */
export function testbedPython(): Tool<string> {
  const t = findTestbedPython();
  return "python" in t ? found(t.python) : missing(t.reason);
}

export interface PcapEvent {
  readonly urbId: number;
  readonly type: "S" | "C";
  readonly xferType: number;
  /** Endpoint address with the direction bit (0x80 = IN). */
  readonly endpoint: number;
  readonly devnum: number;
  readonly busnum: number;
  /** Control submits only. */
  readonly setup?: Uint8Array;
  /** 0 on a submit unless told; the URB status (negative errno) on a completion. */
  readonly status?: number;
  /** Submit: requested length; completion: actual length. */
  readonly length: number;
  /** Data carried by the record (OUT submit data, IN completion data). */
  readonly data?: Uint8Array;
  readonly interval?: number;
}

/** A classic pcap file (microsecond timestamps) of usbmon mmapped records. */
export function usbmonPcap(events: readonly PcapEvent[]): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeInt32LE(0, 8);
  header.writeUInt32LE(0, 12);
  header.writeUInt32LE(65535 + 64, 16);
  header.writeUInt32LE(220, 20); // LINKTYPE_USB_LINUX_MMAPPED
  const parts: Buffer[] = [header];
  let usec = 0;
  for (const e of events) {
    const data = e.data ?? new Uint8Array(0);
    const rec = Buffer.alloc(64 + data.length);
    rec.writeBigUInt64LE(BigInt(e.urbId), 0);
    rec.writeUInt8(e.type.charCodeAt(0), 8);
    rec.writeUInt8(e.xferType, 9);
    rec.writeUInt8(e.endpoint, 10);
    rec.writeUInt8(e.devnum, 11);
    rec.writeUInt16LE(e.busnum, 12);
    rec.writeUInt8(e.setup !== undefined ? 0 : 0x2d, 14); // flag_setup: 0 = setup present, '-' = none
    rec.writeUInt8(data.length > 0 ? 0 : e.endpoint & 0x80 ? 0x3c : 0x3e, 15); // flag_data: 0 = present
    rec.writeBigInt64LE(0n, 16);
    rec.writeInt32LE(usec, 24);
    rec.writeInt32LE(e.status ?? 0, 28);
    rec.writeUInt32LE(e.length, 32);
    rec.writeUInt32LE(data.length, 36);
    if (e.setup !== undefined) Buffer.from(e.setup).copy(rec, 40);
    rec.writeInt32LE(e.interval ?? 0, 48);
    rec.writeInt32LE(0, 52); // start_frame
    rec.writeUInt32LE(0, 56);
    rec.writeUInt32LE(0, 60);
    Buffer.from(data).copy(rec, 64);
    const ph = Buffer.alloc(16);
    ph.writeUInt32LE(0, 0);
    ph.writeUInt32LE(usec, 4);
    ph.writeUInt32LE(rec.length, 8);
    ph.writeUInt32LE(rec.length, 12);
    usec += 10;
    parts.push(ph, rec);
  }
  return Buffer.concat(parts);
}

/** Builds a replay script as the host would see it: submits and completions of URBs, in order. */
export class Recording {
  private readonly events: PcapEvent[] = [];
  private nextId = 0x1000;

  constructor(
    readonly busnum: number,
    readonly devnum: number,
  ) {}

  /** A URB id to pair a submit with its completion later (for several in flight). */
  id(): number {
    this.nextId += 0x40;
    return this.nextId;
  }

  submit(
    id: number,
    xferType: number,
    endpoint: number,
    length: number,
    extra: Partial<PcapEvent> = {},
  ): this {
    this.events.push({
      urbId: id,
      type: "S",
      xferType,
      endpoint,
      devnum: this.devnum,
      busnum: this.busnum,
      length,
      ...extra,
    });
    return this;
  }

  complete(
    id: number,
    xferType: number,
    endpoint: number,
    actual: number,
    extra: Partial<PcapEvent> = {},
  ): this {
    this.events.push({
      urbId: id,
      type: "C",
      xferType,
      endpoint,
      devnum: this.devnum,
      busnum: this.busnum,
      length: actual,
      ...extra,
    });
    return this;
  }

  /** A control transfer: IN returns `data`; OUT sends `data`. */
  control(
    setup: { bmRequestType: number; bRequest: number; wValue: number; wIndex: number; wLength: number },
    data?: Uint8Array,
    status = 0,
  ): this {
    const s = Buffer.alloc(8);
    s.writeUInt8(setup.bmRequestType, 0);
    s.writeUInt8(setup.bRequest, 1);
    s.writeUInt16LE(setup.wValue, 2);
    s.writeUInt16LE(setup.wIndex, 4);
    s.writeUInt16LE(setup.wLength, 6);
    const id = this.id();
    const dirIn = (setup.bmRequestType & 0x80) !== 0;
    const ep = dirIn ? 0x80 : 0x00;
    if (dirIn) {
      const back = data ?? new Uint8Array(0);
      this.submit(id, XFER_CONTROL, ep, setup.wLength, { setup: s });
      this.complete(id, XFER_CONTROL, ep, back.length, { data: back, status });
    } else {
      const out = data ?? new Uint8Array(0);
      this.submit(id, XFER_CONTROL, ep, setup.wLength, { setup: s, data: out });
      this.complete(id, XFER_CONTROL, ep, status === 0 ? out.length : 0, { status });
    }
    return this;
  }

  /** A bulk or interrupt IN transfer of `requested` bytes answered with `data`. */
  transferIn(xferType: number, endpoint: number, requested: number, data: Uint8Array, status = 0): this {
    const id = this.id();
    this.submit(id, xferType, endpoint | 0x80, requested);
    this.complete(id, xferType, endpoint | 0x80, data.length, { data, status });
    return this;
  }

  /** A bulk or interrupt OUT transfer of `data`. */
  transferOut(xferType: number, endpoint: number, data: Uint8Array, status = 0): this {
    const id = this.id();
    this.submit(id, xferType, endpoint, data.length, { data });
    this.complete(id, xferType, endpoint, status === 0 ? data.length : 0, { status });
    return this;
  }

  pcap(): Buffer {
    return usbmonPcap(this.events);
  }
}
