/**
 * The record of one peer request from its admission until its reply is written, as both servers pool it
 * (USB/IP's CMD_SUBMIT, usbredir's data packet): its buffer in guest memory, the engine URB now submitted,
 * and the engine URB objects it reuses — one per transfer type, refilled from `spec` — so a steady stream
 * allocates no record and no URB per request. The protocol's record extends it with its own fields.
 */
import type { GuestOffset } from "../dma-map/types.js";
import type {
  BufferSegment,
  BulkTransfer,
  ControlTransfer,
  InterruptTransfer,
  Urb,
} from "../frontend/index.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import type { SetupPacket } from "../usb/index.js";
import type { FrameHolder } from "../util/frame-writer.js";

/** The transfer types a pooled record reuses an object for (iso URBs are built fresh: their packets vary). */
export type PooledKind = "control" | "bulk" | "interrupt";

/** What the next engine URB is: filled by the protocol's record, then `transfer()`. */
export interface TransferSpec {
  kind: PooledKind;
  port: PortNum;
  device: DevAddr;
  endpoint: EndpointNum;
  directionIn: boolean;
  shortNotOk: boolean;
  zeroPacket: boolean;
  /** Bulk only: the stream (0: none). */
  streamId: number;
  /** Interrupt only. */
  interval: number;
  /** Control only: the setup packet. */
  readonly setup: Mutable<SetupPacket>;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
const NO_SEGMENTS: readonly BufferSegment[] = Object.freeze([]);

export abstract class PooledUrb implements FrameHolder {
  /** Its buffer in the peer's region of guest memory (length 0: none). */
  offset = 0;
  length = 0;
  /** The engine URB now submitted, or null. */
  urb: Urb | null = null;
  protected readonly spec: TransferSpec = {
    kind: "control",
    port: 0 as PortNum,
    device: 0 as DevAddr,
    endpoint: 0 as EndpointNum,
    directionIn: false,
    shortNotOk: false,
    zeroPacket: false,
    streamId: 0,
    interval: 1,
    setup: { bmRequestType: 0, bRequest: 0, wValue: 0, wIndex: 0, wLength: 0 },
  };
  private readonly segment = { offset: 0 as GuestOffset, length: 0 };
  private readonly segments: readonly BufferSegment[] = [this.segment];
  private control: Mutable<ControlTransfer> | null = null;
  private bulk: Mutable<BulkTransfer> | null = null;
  private interrupt: Mutable<InterruptTransfer> | null = null;

  /** The writer is done with this record's IN data (or it had none). */
  abstract released(): void;

  /** The buffer as the engine takes it (a reused one-segment list, or none). */
  protected get buffer(): readonly BufferSegment[] {
    this.segment.offset = this.offset as GuestOffset;
    this.segment.length = this.length;
    return this.length > 0 ? this.segments : NO_SEGMENTS;
  }

  /** The engine URB `spec` describes, reusing this record's object of its type. */
  protected transfer(): Urb {
    const spec = this.spec;
    let u: Mutable<ControlTransfer | BulkTransfer | InterruptTransfer>;
    switch (spec.kind) {
      case "control": {
        if (this.control === null) {
          const setup = { bmRequestType: 0, bRequest: 0, wValue: 0, wIndex: 0, wLength: 0 };
          this.control = { type: "control", ...this.base(), setup };
        }
        const setup = this.control.setup as Mutable<SetupPacket>;
        setup.bmRequestType = spec.setup.bmRequestType;
        setup.bRequest = spec.setup.bRequest;
        setup.wValue = spec.setup.wValue;
        setup.wIndex = spec.setup.wIndex;
        setup.wLength = spec.setup.wLength;
        u = this.control;
        break;
      }
      case "bulk":
        this.bulk ??= { type: "bulk", ...this.base(), zeroPacket: false, streamId: 0 };
        this.bulk.zeroPacket = spec.zeroPacket;
        this.bulk.streamId = spec.streamId;
        u = this.bulk;
        break;
      default:
        this.interrupt ??= { type: "interrupt", ...this.base(), zeroPacket: false, interval: 1 };
        this.interrupt.zeroPacket = spec.zeroPacket;
        this.interrupt.interval = spec.interval;
        u = this.interrupt;
    }
    u.port = spec.port;
    u.device = spec.device;
    u.endpoint = spec.endpoint;
    u.directionIn = spec.directionIn;
    u.buffer = this.buffer;
    u.shortNotOk = spec.shortNotOk;
    return u;
  }

  private base() {
    return {
      port: 0 as PortNum,
      device: 0 as DevAddr,
      endpoint: 0 as EndpointNum,
      directionIn: false,
      buffer: NO_SEGMENTS,
      shortNotOk: false,
    };
  }
}
