/**
 * The streams a usbredir usb-host runs on its own (USBREDIR.md §6–7): interrupt receiving keeps an
 * interrupt IN URB in flight on the endpoint and sends each report as an unsolicited interrupt_packet;
 * an iso stream keeps `no_urbs` iso URBs of `pkts_per_urb` packets in flight — IN sends one iso_packet per
 * packet with its own status, OUT gathers the guest's iso_packets into URBs (QEMU expects no reply: what
 * cannot be queued is dropped and counted). A stream stops on the guest's stop, on a configuration or
 * alternate change, on reset, or on a stall or lost device (then the guest gets the status).
 */

import type { GuestOffset } from "../dma-map/types.js";
import type { IsoPacketSpec, Urb, UrbCompletion, VirtualHostController } from "../frontend/index.js";
import { isoDescriptorFrames } from "../frontend/validate.js";
import type { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import { ENODEV, EPIPE, ESHUTDOWN, OK } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import { endpointIsIn, endpointNumberOf } from "../usb/index.js";
import type { FrameHolder } from "../util/frame-writer.js";
import { encodeStatusPair, ID_ZERO, type RedirStatus, RedirType, RedirStatus as Status } from "./protocol.js";
import type { InterruptStream, IsoStream, Session } from "./session.js";

/** What the streams need of their server. */
export interface StreamContext {
  readonly hcd: VirtualHostController;
  readonly memory: GuestBufferAllocator;
  /** The guest memory the allocator hands out ranges of. */
  readonly memoryBytes: Uint8Array;
  readonly port: PortNum;
  readonly deviceAddress: DevAddr;
  /** Scratch frames one connection's iso descriptors may hold. */
  readonly isoScratchFrames: number;
  redirStatusOf(status: number): RedirStatus;
  /** A URB completed with a lost-device status. */
  deviceLost(s: Session, c: UrbCompletion): void;
  /** A URB of `s` came back (resume its reader, finish its drain). */
  settled(s: Session): void;
}

/** Interrupt IN URBs kept in flight per receiving endpoint: one, so reports leave in order. */
const INTERRUPT_URBS = 1;
/** Iso OUT packets buffered beyond what the stream's URBs hold, in URBs' worth; older ones are dropped. */
const ISO_OUT_BACKLOG_URBS = 2;
export const MAX_ISO_PKTS_PER_URB = 32;
export const MAX_ISO_URBS = 16;

/** A guest memory range released once the writer has copied (or sent) what points into it. */
function rangeHolder(
  memory: GuestBufferAllocator,
  range: { offset: GuestOffset; length: number },
): FrameHolder {
  return { released: () => memory.release(range) };
}

export function startInterrupt(
  ctx: StreamContext,
  s: Session,
  endpoint: number,
  maxPacketSize: number,
  interval: number,
): void {
  const old = s.interrupt.get(endpoint);
  if (old?.running) return;
  const stream: InterruptStream = {
    endpoint,
    maxPacketSize,
    interval: Math.max(1, interval),
    running: true,
    urbs: [],
    nextId: old?.nextId ?? 0,
  };
  s.interrupt.set(endpoint, stream);
  for (let i = 0; i < INTERRUPT_URBS; i++) pollInterrupt(ctx, s, stream);
}

function pollInterrupt(ctx: StreamContext, s: Session, stream: InterruptStream): void {
  const length = stream.maxPacketSize;
  const range = ctx.memory.tryAllocate(length, 64);
  if (range === null || s.share.urbsFull) {
    // The connection's share is in use: poll again shortly (an interrupt endpoint tolerates the delay).
    if (range !== null) ctx.memory.release(range);
    setTimeout(() => {
      if (stream.running && !s.closed) pollInterrupt(ctx, s, stream);
    }, 10).unref();
    return;
  }
  s.share.urbs++;
  const urb: Urb = {
    type: "interrupt",
    port: ctx.port,
    device: ctx.deviceAddress,
    endpoint: endpointNumberOf(stream.endpoint) as EndpointNum,
    directionIn: true,
    buffer: [range],
    interval: stream.interval,
  };
  stream.urbs.push(urb);
  ctx.hcd.submitWithCallback(urb, (c) => {
    s.share.urbs--;
    stream.urbs.splice(stream.urbs.indexOf(urb), 1);
    const holder = rangeHolder(ctx.memory, range);
    if (!stream.running || s.closed) holder.released();
    else if (c.status === OK) {
      const actual = Math.min(c.actualLength, length);
      const id = stream.nextId++ >>> 0;
      s.sendData(
        RedirType.INTERRUPT_PACKET,
        id,
        0,
        stream.endpoint,
        Status.SUCCESS,
        actual,
        range.offset,
        actual,
        holder,
      );
      whenReading(s, () => pollInterrupt(ctx, s, stream));
    } else {
      // A stall or a lost device stops receiving; the guest's next poll gets the error.
      holder.released();
      stream.running = false;
      sendStatus(s, RedirType.INTERRUPT_RECEIVING_STATUS, ctx.redirStatusOf(c.status), stream.endpoint);
      if (c.status === ENODEV || c.status === ESHUTDOWN) ctx.deviceLost(s, c);
    }
    ctx.settled(s);
  });
}

export function stopInterrupt(ctx: StreamContext, s: Session, endpoint: number): void {
  const stream = s.interrupt.get(endpoint);
  if (stream === undefined) return;
  stream.running = false;
  for (const urb of stream.urbs) void ctx.hcd.unlink(urb);
}

export function startIso(
  ctx: StreamContext,
  s: Session,
  endpoint: number,
  pktsPerUrb: number,
  noUrbs: number,
  maxPacketSize: number,
  interval: number,
): void {
  stopIso(ctx, s, endpoint);
  const stream: IsoStream = {
    endpoint,
    directionIn: endpointIsIn(endpoint),
    pktsPerUrb,
    noUrbs,
    maxPacketSize,
    interval: Math.max(1, interval),
    running: true,
    urbs: [],
    nextId: 0,
    out: [],
    dropped: 0,
  };
  s.iso.set(endpoint, stream);
  if (stream.directionIn) for (let i = 0; i < noUrbs; i++) submitIso(ctx, s, stream, null);
}

/** One iso URB: IN of pktsPerUrb packets of maxPacketSize, or OUT of the gathered `packets`. */
function submitIso(ctx: StreamContext, s: Session, stream: IsoStream, packets: Uint8Array[] | null): void {
  const sizes =
    packets?.map((p) => p.length) ?? new Array<number>(stream.pktsPerUrb).fill(stream.maxPacketSize);
  const total = sizes.reduce((a, b) => a + b, 0);
  const frames = isoDescriptorFrames(sizes.length);
  const range = total > 0 ? ctx.memory.tryAllocate(total, 64) : null;
  if (
    (total > 0 && range === null) ||
    s.share.urbsFull ||
    s.share.isoFrames + frames > ctx.isoScratchFrames
  ) {
    if (range !== null) ctx.memory.release(range);
    stream.dropped += sizes.length;
    return;
  }
  const spec: IsoPacketSpec[] = [];
  let at = 0;
  for (const size of sizes) {
    spec.push({ offset: at, length: size });
    at += size;
  }
  if (packets !== null && range !== null) {
    const bytes = ctx.memoryBytes;
    let o: number = range.offset;
    for (const p of packets) {
      bytes.set(p, o);
      o += p.length;
    }
  }
  s.share.urbs++;
  s.share.isoFrames += frames;
  const urb: Urb = {
    type: "isochronous",
    port: ctx.port,
    device: ctx.deviceAddress,
    endpoint: endpointNumberOf(stream.endpoint) as EndpointNum,
    directionIn: stream.directionIn,
    buffer: range === null ? [] : [range],
    interval: stream.interval,
    iso: { asap: true, packets: spec },
  };
  stream.urbs.push(urb);
  ctx.hcd.submitWithCallback(urb, (c) => {
    s.share.urbs--;
    s.share.isoFrames -= frames;
    stream.urbs.splice(stream.urbs.indexOf(urb), 1);
    const holder = range === null ? null : rangeHolder(ctx.memory, range);
    let held = false;
    if (stream.running && !s.closed) {
      // A stall, a lost device, or a failure with no per-packet results ends the stream.
      const fatal = c.status === EPIPE || c.status === ENODEV || c.status === ESHUTDOWN;
      if (fatal || (c.status !== OK && c.isoPackets === undefined)) {
        stream.running = false;
        sendStatus(s, RedirType.ISO_STREAM_STATUS, ctx.redirStatusOf(c.status), stream.endpoint);
        if (c.status === ENODEV || c.status === ESHUTDOWN) ctx.deviceLost(s, c);
      } else if (stream.directionIn && range !== null) {
        for (let i = 0; i < spec.length; i++) {
          const result = c.isoPackets?.[i];
          const got = Math.min(result?.actualLength ?? 0, spec[i]!.length);
          const last = i === spec.length - 1;
          s.sendData(
            RedirType.ISO_PACKET,
            stream.nextId++ >>> 0,
            0,
            stream.endpoint,
            ctx.redirStatusOf(result?.status ?? c.status),
            got,
            range.offset + spec[i]!.offset,
            got,
            last ? holder : null,
          );
        }
        held = true;
      }
    }
    if (!held) holder?.released();
    if (stream.running && !s.closed) {
      if (stream.directionIn) whenReading(s, () => submitIso(ctx, s, stream, null));
      else flushIsoOut(ctx, s, stream);
    }
    ctx.settled(s);
  });
}

/** An iso_packet from the guest for an OUT stream: gathered, submitted once a URB's worth is in. */
export function isoOut(ctx: StreamContext, s: Session, endpoint: number, data: Uint8Array): void {
  const stream = s.iso.get(endpoint);
  if (stream === undefined || !stream.running || stream.directionIn) return; // QEMU expects no reply
  if (data.length > stream.maxPacketSize) {
    stream.dropped++;
    return;
  }
  stream.out.push(data.slice());
  if (stream.out.length > stream.pktsPerUrb * (stream.noUrbs + ISO_OUT_BACKLOG_URBS)) {
    stream.out.shift();
    stream.dropped++;
  }
  flushIsoOut(ctx, s, stream);
}

function flushIsoOut(ctx: StreamContext, s: Session, stream: IsoStream): void {
  while (stream.urbs.length < stream.noUrbs && stream.out.length >= stream.pktsPerUrb) {
    submitIso(ctx, s, stream, stream.out.splice(0, stream.pktsPerUrb));
  }
}

/** Stop a stream; returns how many packets it dropped (for the log). */
export function stopIso(ctx: StreamContext, s: Session, endpoint: number): number {
  const stream = s.iso.get(endpoint);
  if (stream === undefined) return 0;
  stream.running = false;
  stream.out = [];
  for (const urb of stream.urbs) void ctx.hcd.unlink(urb);
  s.iso.delete(endpoint);
  return stream.dropped;
}

/**
 * Resubmit an IN stream's URB now, or — while the peer has more unsent data than the bound — once it has
 * read it: data a peer does not read must not pile up without limit (the stall timer ends such a peer).
 */
function whenReading(s: Session, resubmit: () => void): void {
  if (!s.share.overUnsent) resubmit();
  else s.parked.push(resubmit);
}

function sendStatus(s: Session, type: number, status: RedirStatus, endpoint: number): void {
  if (s.negotiated !== null) s.send(encodeStatusPair(s.negotiated, type, ID_ZERO, status, endpoint));
}
