/**
 * Loopback / source-sink test device, in the spirit of Linux g_zero (drivers/usb/gadget/function/
 * f_loopback.c, f_sourcesink.c) but with its own, documented interface. Vendor-specific class 0xff.
 *
 * Identity: 1209:0001 (pid.codes test range, see ids.ts).
 *
 * Configurations (same endpoint map in both, interface 0):
 *   1 "loopback"    bulk OUT 0x01 → FIFO → bulk IN 0x81 (what is written is read back, per OUT transfer)
 *   2 "source-sink" bulk IN 0x81 sources pattern bytes, bulk OUT 0x01 sinks and checks them
 *   alt 0: 0x01 bulk OUT, 0x81 bulk IN, 0x82 interrupt IN (8 bytes, every 4 ms)
 *   alt 1: the same plus 0x03 iso OUT and 0x83 iso IN (256 bytes per interval, every 1 ms); alt 0 reserves no
 *          iso bandwidth, so iso transfers there get -EPROTO (no handshake).
 *
 * Pattern (g_zero "pattern 1"): byte i of a transfer (or iso packet) is i % 63, so packet boundaries of
 * 64 or 512 bytes never line up with the pattern period.
 *
 * Interrupt IN report (8 bytes, little endian): u32 sequence number (from 0, +1 per report), u32 frame
 * number when it was produced. An interrupt IN stays pending until its interval has passed.
 *
 * Vendor requests (bmRequestType 0x40 OUT / 0xc0 IN, recipient device):
 *   0x01 CONTROL_WRITE  OUT, ≤ 256 bytes kept in a control buffer
 *   0x02 CONTROL_READ   IN, returns the control buffer
 *   0x03 STALL_ENDPOINT no data, wIndex = endpoint address: that endpoint stalls (-EPIPE) until clearHalt
 *   0x04 GET_STATS      IN, 32 bytes: eight u32 LE counters (see LoopbackStats, in field order)
 *   0x05 RESET_STATS    no data
 * Source/sink pattern mismatches on bulk OUT complete that transfer with -EPROTO and count in
 * `patternErrors`.
 *
 * Bulk IN babble: data comes out in wMaxPacketSize packets; when the next queued message does not fit an
 * IN buffer whose length is not a multiple of wMaxPacketSize, the last packet overflows it: -EOVERFLOW with
 * the bytes that fit (USB 2.0 §8.5.1 / Linux error-codes.rst "babble").
 */

import { MAX_BUFFER_LENGTH } from "../../urb/limits.js";
import { EMSGSIZE, EOVERFLOW, EPIPE, EPROTO, OK, type UrbStatus } from "../../urb/status.js";
import {
  ENDPOINT_DIR_IN,
  ENDPOINT_NUMBER_MASK,
  RECIPIENT_DEVICE,
  RECIPIENT_MASK,
  REQUEST_DIR_IN,
  REQUEST_TYPE_MASK,
  REQUEST_TYPE_VENDOR,
  type SetupPacket,
  UsbSpeed,
} from "../../usb/index.js";
import { InvalidOptionError } from "../../util/errors.js";
import { type IsoPacketResult, NO_DATA } from "../device.js";
import type { AlternateSettingSpec, DescriptorSpec, EndpointLayout, EndpointSpec } from "./descriptors.js";
import { EmulatedDevice } from "./emulated-device.js";
import {
  EMULATED_BCD_DEVICE,
  EMULATED_MANUFACTURER,
  LOOPBACK_PRODUCT_ID,
  PID_CODES_VENDOR_ID,
} from "./ids.js";
import type { PendingTransfer } from "./pending-transfer.js";
import type { ControlReply } from "./standard-requests.js";
import { TransferQueue } from "./transfer-queue.js";

export const LoopbackEndpoint = {
  BULK_OUT: 0x01,
  BULK_IN: 0x81,
  INTERRUPT_IN: 0x82,
  ISO_OUT: 0x03,
  ISO_IN: 0x83,
} as const;

export const LoopbackConfiguration = { LOOPBACK: 1, SOURCE_SINK: 2 } as const;

export const LoopbackRequest = {
  CONTROL_WRITE: 0x01,
  CONTROL_READ: 0x02,
  STALL_ENDPOINT: 0x03,
  GET_STATS: 0x04,
  RESET_STATS: 0x05,
} as const;

const VENDOR_CLASS = 0xff;
export const CONTROL_BUFFER_SIZE = 256;
export const INTERRUPT_REPORT_SIZE = 8;
export const INTERRUPT_INTERVAL_MS = 4;
export const ISO_PACKET_SIZE = 256;
export const ISO_INTERVAL_MS = 1;
/** g_zero pattern 1 period. */
export const PATTERN_PERIOD = 63;
/**
 * Default FIFO size: one largest legal URB (src/urb/limits.ts), so a host that writes a transfer and only
 * then reads it back never deadlocks on back-pressure, whatever the size.
 */
export const DEFAULT_FIFO_CAPACITY = MAX_BUFFER_LENGTH;
/** Queued messages are bounded as well as bytes, so many tiny OUTs cannot grow the queue without limit. */
export const FIFO_MAX_MESSAGES = 1024;
/** Upper bound on one pump pass: every step settles a transfer or moves a message. */
const MAX_PUMP_STEPS = 4 * FIFO_MAX_MESSAGES;
const U32 = 0x1_0000_0000;
const STATS_FIELDS = 8;
const STATS_SIZE = STATS_FIELDS * 4;

export interface LoopbackStats {
  bytesOut: number;
  bytesIn: number;
  transfersOut: number;
  transfersIn: number;
  patternErrors: number;
  interruptReports: number;
  isoPacketsIn: number;
  isoPacketsOut: number;
}

export interface LoopbackOptions {
  /** Default high. */
  readonly speed?: UsbSpeed;
  /** Bytes the loopback FIFO holds before bulk OUT waits (back-pressure). Default 4 MiB (one maximal URB). */
  readonly fifoCapacity?: number;
  readonly serialNumber?: string;
}

/** g_zero pattern 1: byte i is i % 63. */
export function fillPattern(bytes: Uint8Array): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = i % PATTERN_PERIOD;
}

/** Index of the first byte that breaks pattern 1, or -1. */
export function findPatternError(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== i % PATTERN_PERIOD) return i;
  return -1;
}

function loopbackSpec(serialNumber: string): DescriptorSpec {
  const base: EndpointSpec[] = [
    { address: LoopbackEndpoint.BULK_OUT, type: "bulk" },
    { address: LoopbackEndpoint.BULK_IN, type: "bulk" },
    {
      address: LoopbackEndpoint.INTERRUPT_IN,
      type: "interrupt",
      maxPacketSize: INTERRUPT_REPORT_SIZE,
      intervalMs: INTERRUPT_INTERVAL_MS,
    },
  ];
  const iso: EndpointSpec[] = [
    {
      address: LoopbackEndpoint.ISO_OUT,
      type: "isochronous",
      maxPacketSize: ISO_PACKET_SIZE,
      intervalMs: ISO_INTERVAL_MS,
    },
    {
      address: LoopbackEndpoint.ISO_IN,
      type: "isochronous",
      maxPacketSize: ISO_PACKET_SIZE,
      intervalMs: ISO_INTERVAL_MS,
    },
  ];
  const alt = (alternateSetting: number, endpoints: EndpointSpec[], name: string): AlternateSettingSpec => ({
    alternateSetting,
    interfaceClass: VENDOR_CLASS,
    interfaceSubClass: 0,
    interfaceProtocol: 0,
    name,
    endpoints,
  });
  const interfaces = [
    {
      interfaceNumber: 0,
      alternates: [alt(0, base, "bulk + interrupt"), alt(1, [...base, ...iso], "bulk + interrupt + iso")],
    },
  ];
  return {
    deviceClass: 0,
    deviceSubClass: 0,
    deviceProtocol: 0,
    vendorId: PID_CODES_VENDOR_ID,
    productId: LOOPBACK_PRODUCT_ID,
    bcdDevice: EMULATED_BCD_DEVICE,
    manufacturer: EMULATED_MANUFACTURER,
    product: "usbvirt loopback",
    serialNumber,
    dualSpeed: true,
    configurations: [
      { configurationValue: LoopbackConfiguration.LOOPBACK, name: "loopback", selfPowered: true, interfaces },
      {
        configurationValue: LoopbackConfiguration.SOURCE_SINK,
        name: "source-sink",
        selfPowered: true,
        interfaces,
      },
    ],
  };
}

function emptyStats(): LoopbackStats {
  return {
    bytesOut: 0,
    bytesIn: 0,
    transfersOut: 0,
    transfersIn: 0,
    patternErrors: 0,
    interruptReports: 0,
    isoPacketsIn: 0,
    isoPacketsOut: 0,
  };
}

/** One queued OUT transfer's data (copied: the guest view is only ours until the OUT completes). */
interface Message {
  /** A copy owned by the FIFO, or (only while its OUT is being accepted) a view of the OUT's buffer. */
  data: Uint8Array;
  offset: number;
  /** `data` is the FIFO's own copy (its buffer may be recycled), not a view of guest memory. */
  owned: boolean;
}

/** Used-up FIFO buffers kept for the next messages: a few, of at most a megabyte each. */
const SPARE_FIFO_BUFFERS = 4;
const SPARE_FIFO_BUFFER_MAX = 1024 * 1024;

export class LoopbackDevice extends EmulatedDevice {
  private readonly fifoCapacity: number;
  private readonly fifo: Message[] = [];
  private readonly spareBuffers: ArrayBuffer[] = [];
  private fifoBytes = 0;
  private readonly pendingIn = new TransferQueue();
  private readonly pendingOut = new TransferQueue();
  /**
   * The OUT being drained into the FIFO and how many of its bytes moved so far (it may be bigger than the
   * FIFO). If it is cancelled midway, the bytes already moved stay queued: those packets were ACKed.
   */
  private outHead: PendingTransfer | null = null;
  private outAccepted = 0;
  private controlBuffer = NO_DATA;
  private readonly counters = emptyStats();
  private interruptSequence = 0;
  private nextInterruptDue = 0;
  private pumpScheduled: NodeJS.Immediate | null = null;

  constructor(options: LoopbackOptions = {}) {
    super(loopbackSpec(options.serialNumber ?? "USBVIRT-LOOP-0001"), {
      speed: options.speed ?? UsbSpeed.HIGH,
      name: "usbvirt loopback",
    });
    const capacity = options.fifoCapacity ?? DEFAULT_FIFO_CAPACITY;
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new InvalidOptionError(
        `loopback: options.fifoCapacity must be a positive integer, got ${capacity}`,
      );
    this.fifoCapacity = capacity;
  }

  /** Counters since creation or the last RESET_STATS (u32, wrapping). */
  stats(): LoopbackStats {
    return { ...this.counters };
  }

  /** In place, field by field (the benches' null URB): stats() hands out copies, so nobody holds this object. */
  private resetCounters(): void {
    const c = this.counters;
    c.bytesOut = c.bytesIn = c.transfersOut = c.transfersIn = 0;
    c.patternErrors = c.interruptReports = c.isoPacketsIn = c.isoPacketsOut = 0;
  }

  /** Bytes waiting in the loopback FIFO. */
  get queuedBytes(): number {
    return this.fifoBytes;
  }

  protected override handleTransfer(t: PendingTransfer, ep: EndpointLayout): void {
    switch (ep.address) {
      case LoopbackEndpoint.BULK_OUT:
      case LoopbackEndpoint.BULK_IN:
        if (this.configurationValue === LoopbackConfiguration.SOURCE_SINK) this.sourceSink(t);
        else {
          (t.request.directionIn ? this.pendingIn : this.pendingOut).push(t);
          this.schedulePump(ep.maxPacketSize);
        }
        return;
      case LoopbackEndpoint.INTERRUPT_IN:
        this.scheduleInterrupt(t, ep);
        return;
      case LoopbackEndpoint.ISO_IN:
      case LoopbackEndpoint.ISO_OUT:
        this.iso(t, ep);
        return;
      default:
        t.fail(EPROTO);
    }
  }

  protected override handleClassOrVendorRequest(setup: SetupPacket, data: Uint8Array): ControlReply {
    if ((setup.bmRequestType & REQUEST_TYPE_MASK) !== REQUEST_TYPE_VENDOR) return EPIPE;
    if ((setup.bmRequestType & RECIPIENT_MASK) !== RECIPIENT_DEVICE) return EPIPE;
    const directionIn = (setup.bmRequestType & REQUEST_DIR_IN) !== 0;
    switch (setup.bRequest) {
      case LoopbackRequest.CONTROL_WRITE:
        if (directionIn || setup.wLength > CONTROL_BUFFER_SIZE) return EPIPE;
        // A zero-length write shares one empty array: nothing can be written to it, so no copy is needed.
        this.controlBuffer = data.length === 0 ? NO_DATA : data.slice(0, CONTROL_BUFFER_SIZE);
        return OK;
      case LoopbackRequest.CONTROL_READ:
        return directionIn ? this.controlBuffer : EPIPE;
      case LoopbackRequest.STALL_ENDPOINT:
        return directionIn ? EPIPE : this.stallRequest(setup.wIndex);
      case LoopbackRequest.GET_STATS:
        return directionIn ? this.encodeStats() : EPIPE;
      case LoopbackRequest.RESET_STATS:
        if (directionIn) return EPIPE;
        this.resetCounters();
        return OK;
      default:
        return EPIPE;
    }
  }

  protected override onConfigurationChanged(): void {
    // The base flushed every endpoint's transfers; the FIFO starts empty in a new configuration.
    this.fifo.length = 0;
    this.fifoBytes = 0;
    this.outHead = null;
    this.outAccepted = 0;
    this.nextInterruptDue = 0;
  }

  private stallRequest(wIndex: number): UrbStatus {
    const address = wIndex & (ENDPOINT_DIR_IN | ENDPOINT_NUMBER_MASK);
    const known = Object.values(LoopbackEndpoint).includes(address as never);
    if (!known || this.configurationValue === 0) return EPIPE;
    this.halt(address);
    return OK;
  }

  private encodeStats(): Uint8Array {
    const c = this.counters;
    const fields = [
      c.bytesOut,
      c.bytesIn,
      c.transfersOut,
      c.transfersIn,
      c.patternErrors,
      c.interruptReports,
      c.isoPacketsIn,
      c.isoPacketsOut,
    ];
    const out = new Uint8Array(STATS_SIZE);
    const view = new DataView(out.buffer);
    for (const [i, v] of fields.entries()) view.setUint32(i * 4, v % U32, true);
    return out;
  }

  private count(field: keyof LoopbackStats, by: number): void {
    this.counters[field] = (this.counters[field] + by) % U32;
  }

  private sourceSink(t: PendingTransfer): void {
    const buffer = t.buffer;
    if (t.request.directionIn) {
      fillPattern(buffer);
      this.count("bytesIn", buffer.length);
      this.count("transfersIn", 1);
      t.ok(buffer.length);
      return;
    }
    this.count("bytesOut", buffer.length);
    this.count("transfersOut", 1);
    if (findPatternError(buffer) >= 0) {
      this.count("patternErrors", 1);
      t.fail(EPROTO, buffer.length);
      return;
    }
    t.ok(buffer.length);
  }

  /**
   * Run the FIFO on the next turn of the event loop rather than inside submit: like a bus, the device
   * answers a transfer a little after it was posted, so an unlink posted right behind it can still win.
   */
  private schedulePump(maxPacket: number): void {
    if (this.pumpScheduled !== null) return;
    this.pumpScheduled = setImmediate(() => {
      this.pumpScheduled = null;
      this.pump(maxPacket);
    });
    // Left ref'd on purpose: an unref'd immediate may wait in the poll phase until some other event.
  }

  protected override onClose(): void {
    if (this.pumpScheduled !== null) clearImmediate(this.pumpScheduled);
    this.pumpScheduled = null;
  }

  /** Move data OUT → FIFO → IN until neither side can progress (bounded). */
  private pump(maxPacket: number): void {
    for (let step = 0; step < MAX_PUMP_STEPS; step++) {
      if (!this.serveIn(maxPacket) && !this.acceptOut(maxPacket)) return;
    }
  }

  private serveIn(maxPacket: number): boolean {
    const head = this.fifo[0];
    if (head === undefined) return false;
    const t = this.pendingIn.shift();
    if (t === undefined) return false;
    const room = t.buffer.length;
    const available = head.data.length - head.offset;
    let sent: number;
    let babble = false;
    if (available <= room) {
      sent = available;
    } else if (room % maxPacket === 0) {
      // The IN buffer ends on a packet boundary: the transfer is full, the rest waits for the next IN.
      sent = room;
    } else {
      // The packet that would end this transfer is larger than the space left: babble. That whole
      // packet is gone from the device; the host keeps what fit.
      sent = Math.min(available, room - (room % maxPacket) + maxPacket);
      babble = true;
    }
    const delivered = Math.min(sent, room);
    t.buffer.set(head.data.subarray(head.offset, head.offset + delivered));
    head.offset += sent;
    this.fifoBytes -= sent;
    if (head.offset >= head.data.length) this.recycle(this.fifo.shift()!);
    this.count("bytesIn", delivered);
    this.count("transfersIn", 1);
    if (babble) t.fail(EOVERFLOW, delivered);
    else t.ok(delivered);
    return true;
  }

  private acceptOut(maxPacket: number): boolean {
    const t = this.pendingOut.peek();
    if (t === undefined) return false;
    if (t !== this.outHead) {
      this.outHead = t;
      this.outAccepted = 0;
    }
    const data = t.buffer;
    if (data.length === 0) {
      // A zero-length OUT carries nothing to loop back (an IN never completes with 0 bytes).
      this.pendingOut.shift();
      this.count("transfersOut", 1);
      t.ok(0);
      return true;
    }
    if (this.fifo.length >= FIFO_MAX_MESSAGES) return false;
    const remaining = data.length - this.outAccepted;
    const room = this.fifoCapacity - this.fifoBytes;
    // Take whole packets while the FIFO is short of room (the device NAKs the rest), or the whole tail.
    let take = remaining <= room ? remaining : room - (room % maxPacket);
    if (take <= 0) {
      if (this.fifoBytes > 0) return false;
      take = Math.min(remaining, this.fifoCapacity);
    }
    const chunk = data.subarray(this.outAccepted, this.outAccepted + take);
    if (this.fifo.length === 0 && this.pendingIn.peek() !== undefined) {
      // INs are waiting on an empty FIFO: hand them the OUT's bytes straight from its buffer (one copy,
      // guest to guest), and keep a copy only of what they leave, before the OUT completes below.
      const message: Message = { data: chunk, offset: 0, owned: false };
      this.fifo.push(message);
      this.fifoBytes += take;
      let served = true;
      while (served && this.fifo[0] === message) served = this.serveIn(maxPacket);
      if (this.fifo[0] === message) {
        message.data = this.copyOf(message.data.subarray(message.offset));
        message.offset = 0;
        message.owned = true;
      }
    } else {
      this.fifo.push({ data: this.copyOf(chunk), offset: 0, owned: true });
      this.fifoBytes += take;
    }
    this.outAccepted += take;
    this.count("bytesOut", take);
    if (this.outAccepted >= data.length) {
      this.pendingOut.shift();
      this.outHead = null;
      this.count("transfersOut", 1);
      t.ok(data.length);
    }
    return true;
  }

  /**
   * A FIFO-owned copy of `bytes`, in a recycled buffer when one is big enough: a fresh megabyte per
   * message drove V8's external-memory accounting into full collections on the 1 MiB stream.
   */
  private copyOf(bytes: Uint8Array): Uint8Array {
    const i = this.spareBuffers.findIndex((b) => b.byteLength >= bytes.length);
    const out =
      i < 0
        ? new Uint8Array(bytes.length)
        : new Uint8Array(this.spareBuffers.splice(i, 1)[0]!, 0, bytes.length);
    out.set(bytes);
    return out;
  }

  /** A message the INs have used up gives its buffer back (only FIFO-owned copies, a few at most). */
  private recycle(message: Message): void {
    const buffer = message.data.buffer as ArrayBuffer;
    if (
      message.owned &&
      buffer.byteLength <= SPARE_FIFO_BUFFER_MAX &&
      this.spareBuffers.length < SPARE_FIFO_BUFFERS
    )
      this.spareBuffers.push(buffer);
  }

  private scheduleInterrupt(t: PendingTransfer, ep: EndpointLayout): void {
    const now = performance.now();
    const due = Math.max(now, this.nextInterruptDue);
    this.nextInterruptDue = due + ep.intervalMs;
    t.after(due - now, () => {
      const report = new Uint8Array(INTERRUPT_REPORT_SIZE);
      const view = new DataView(report.buffer);
      view.setUint32(0, this.interruptSequence, true);
      view.setUint32(4, this.frameNumber(), true);
      this.interruptSequence = (this.interruptSequence + 1) % U32;
      this.count("interruptReports", 1);
      const n = Math.min(report.length, t.buffer.length);
      t.buffer.set(report.subarray(0, n));
      if (n < report.length) t.fail(EOVERFLOW, n);
      else t.ok(n);
    });
  }

  private iso(t: PendingTransfer, ep: EndpointLayout): void {
    const packets = t.request.isoPackets ?? [];
    const startFrame = this.frameNumber();
    const results: IsoPacketResult[] = [];
    let actualLength = 0;
    let errorCount = 0;
    for (const p of packets) {
      let status: UrbStatus = OK;
      let length: number;
      if (t.request.directionIn) {
        // The device sends one full packet per interval; a smaller host slot is babble for that packet.
        length = Math.min(p.length, ep.maxPacketSize);
        fillPattern(t.buffer.subarray(p.offset, p.offset + length));
        if (p.length < ep.maxPacketSize) status = EOVERFLOW;
        this.count("isoPacketsIn", 1);
        this.count("bytesIn", length);
      } else if (p.length > ep.maxPacketSize) {
        // More than wMaxPacketSize in one interval cannot be sent (Linux usb_submit_urb: -EMSGSIZE).
        status = EMSGSIZE;
        length = 0;
      } else {
        length = p.length;
        this.count("isoPacketsOut", 1);
        this.count("bytesOut", length);
      }
      if (status !== OK) errorCount++;
      actualLength += length;
      results.push({ status, actualLength: length });
    }
    // One packet per interval: the transfer takes that long on the bus.
    t.after(Math.ceil(packets.length * ep.intervalMs), () =>
      t.complete({ status: OK, actualLength, isoPackets: results, startFrame, errorCount }),
    );
  }
}
