/**
 * The frontend's reusable request objects: trySend fills these instead of
 * building a request, a buffer descriptor and segment objects per URB (hot
 * path: every allocated byte is young-generation garbage). They carry one
 * request at a time: filled, handed to encodeRequest / encodeIndirectSegments
 * (which read them synchronously and keep nothing), then free again. Private
 * to one controller; never handed to anyone else.
 */
import type { GrantRef } from "../dma-map/types.js";
import { MAX_INDIRECT_SEGMENTS, MAX_INLINE_SEGMENTS } from "../urb/limits.js";
import {
  type BulkUrb,
  type ControlUrb,
  type DevAddr,
  Direction,
  type EndpointNum,
  type InterruptUrb,
  type IsoUrb,
  NO_BUFFER,
  type PortNum,
  type Segment,
  type UrbBuffer,
  type UrbId,
} from "../urb/types.js";
import type { SetupPacket } from "../usb/index.js";

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** A wire segment the frontend refills for each request. */
export type WireSegment = Mutable<Segment>;

/** An iso request whose descriptor-array reference is refilled too. */
type ScratchIso = Mutable<IsoUrb> & { frameDescriptors: { ref: GrantRef; offset: number } };

export type ScratchDataRequest = Mutable<ControlUrb> | Mutable<BulkUrb> | Mutable<InterruptUrb> | ScratchIso;

const ZERO_SETUP: SetupPacket = Object.freeze({
  bmRequestType: 0,
  bRequest: 0,
  wValue: 0,
  wIndex: 0,
  wLength: 0,
});

function segment(): WireSegment {
  return { ref: 0 as GrantRef, offset: 0, length: 0 };
}

function common() {
  return {
    id: 0 as UrbId,
    port: 0 as PortNum,
    device: 0 as DevAddr,
    endpoint: 0 as EndpointNum,
    direction: Direction.Out,
    bufferLength: 0,
    buffer: NO_BUFFER,
    shortNotOk: false,
  };
}

export class RequestScratch {
  /** Room for the longest segment list; a request uses segments[0..count). */
  readonly segments: WireSegment[] = Array.from({ length: MAX_INDIRECT_SEGMENTS }, segment);
  /**
   * inline[n] describes segments[0..n) for n = 1..MAX_INLINE_SEGMENTS. One array per n, each of exactly
   * n entries, because the codec takes an inline list's length as its segment count.
   */
  private readonly inline: UrbBuffer[] = [NO_BUFFER];
  private readonly indirect = { kind: "indirect" as const, page: segment(), count: 0 };

  readonly control: Mutable<ControlUrb> = { kind: "control", ...common(), setup: ZERO_SETUP };
  readonly bulk: Mutable<BulkUrb> = { kind: "bulk", ...common(), zeroPacket: false, streamId: 0 };
  readonly interrupt: Mutable<InterruptUrb> = {
    kind: "interrupt",
    ...common(),
    zeroPacket: false,
    interval: 0,
  };
  readonly iso: ScratchIso = {
    kind: "isochronous",
    ...common(),
    isoAsap: false,
    interval: 0,
    numberOfPackets: 0,
    startFrame: 0,
    frameDescriptors: { ref: 0 as GrantRef, offset: 0 },
  };

  constructor() {
    for (let n = 1; n <= MAX_INLINE_SEGMENTS; n++) {
      this.inline.push(Object.freeze({ kind: "inline", segments: this.segments.slice(0, n) }));
    }
  }

  /** The buffer descriptor for segments[0..count) carried in the slot (NO_BUFFER for 0). */
  inlineBuffer(count: number): UrbBuffer {
    return this.inline[count]!;
  }

  /** The buffer descriptor for `count` segments in the indirect page granted as `ref`. */
  indirectBuffer(ref: GrantRef, count: number, pageLength: number): UrbBuffer {
    const d = this.indirect;
    d.page.ref = ref;
    d.page.offset = 0;
    d.page.length = pageLength;
    d.count = count;
    return d;
  }
}
