/**
 * The frontend's submit-time check of a URB (Linux usb_submit_urb's role):
 * everything the backend's parse gate would refuse, plus what only the
 * frontend can know (its port count, guest memory bounds, its scratch area),
 * is refused here with a message, before any grant or ring slot is used.
 * Too large → -EMSGSIZE, malformed → -EINVAL, as the parse gate answers.
 */
import { MAX_GRANT_FRAMES } from "../dma-map/grant-table.js";
import type { GuestMemory } from "../dma-map/guest-memory.js";
import { bytesToFrames, framesSpanned, isGuestOffset, offsetToFrame } from "../dma-map/types.js";
import { MAX_ISO_PACKET_LENGTH } from "../urb/iso.js";
import { ISO_FRAME_DESCRIPTOR_SIZE } from "../urb/layout.js";
import {
  MAX_BUFFER_LENGTH,
  MAX_CONTROL_BUFFER_LENGTH,
  MAX_INDIRECT_SEGMENTS,
  MAX_INLINE_SEGMENTS,
  MAX_ISO_PACKETS,
  MAX_STREAM_ID,
} from "../urb/limits.js";
import { EINVAL, EMSGSIZE, type UrbStatus } from "../urb/status.js";
import { isDevAddr, isEndpointNum, MAX_DEV_ADDR, MAX_ENDPOINT } from "../urb/types.js";
import { requestIsIn, type SetupPacket } from "../usb/index.js";
import type { ScratchFrames } from "./scratch.js";
import type { IsoSchedule, Urb } from "./types.js";

export interface UrbRefusal {
  readonly status: UrbStatus;
  readonly detail: string;
}

/** What validation needs to know about the controller. */
export interface UrbLimits {
  readonly ports: number;
  readonly memory: GuestMemory;
  readonly scratch: ScratchFrames;
  /** Grant table size: a URB needing more grants than this could never be sent. */
  readonly grantEntries: number;
}

const U32_MAX = 0xffff_ffff;

function invalid(detail: string): UrbRefusal {
  return { status: EINVAL, detail };
}

function isUint(value: unknown, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= max;
}

/** Frames an iso descriptor array of `packets` packets needs. */
export function isoDescriptorFrames(packets: number): number {
  return bytesToFrames(packets * ISO_FRAME_DESCRIPTOR_SIZE);
}

/** Sum of the buffer's segment lengths (0 when there is none). Call after checkUrb. */
export function bufferLengthOf(urb: Urb): number {
  const segments = urb.buffer;
  if (segments === undefined) return 0;
  let total = 0;
  for (let i = 0; i < segments.length; i++) total += segments[i]!.length;
  return total;
}

/** Grants a valid URB needs: one per segment, plus its indirect page and iso descriptor array. */
export function grantsNeeded(urb: Urb): number {
  const segments = urb.buffer?.length ?? 0;
  return segments + (segments > MAX_INLINE_SEGMENTS ? 1 : 0) + (urb.type === "isochronous" ? 1 : 0);
}

/** Null when `urb` can be sent, else the status to complete it with and why. */
export function checkUrb(urb: Urb, limits: UrbLimits): UrbRefusal | null {
  if (typeof urb !== "object" || urb === null) return invalid("a URB must be an object");
  const { type } = urb;
  if (type !== "control" && type !== "bulk" && type !== "interrupt" && type !== "isochronous") {
    return invalid(`urb.type must be control, bulk, interrupt or isochronous, got ${String(type)}`);
  }
  if (!isUint(urb.port, limits.ports) || urb.port < 1) {
    return invalid(`urb.port must be an integer in [1, ${limits.ports}], got ${String(urb.port)}`);
  }
  if (!isDevAddr(urb.device))
    return invalid(`urb.device must be 0..${MAX_DEV_ADDR}, got ${String(urb.device)}`);
  if (!isEndpointNum(urb.endpoint)) {
    return invalid(`urb.endpoint must be 0..${MAX_ENDPOINT}, got ${String(urb.endpoint)}`);
  }
  if (typeof urb.directionIn !== "boolean") return invalid("urb.directionIn must be a boolean");

  const bufferRefusal = checkBuffer(urb, limits);
  if (bufferRefusal !== null) return bufferRefusal;
  const length = bufferLengthOf(urb);

  switch (urb.type) {
    case "control":
      return checkControl(urb.setup, urb.directionIn, length);
    case "bulk":
    case "interrupt":
      if (urb.endpoint === 0) return invalid(`a ${urb.type} URB cannot use endpoint 0`);
      if (urb.zeroPacket === true && urb.directionIn) return invalid("zeroPacket is for OUT transfers only");
      if (urb.type === "bulk" && urb.streamId !== undefined && !isUint(urb.streamId, MAX_STREAM_ID))
        return invalid(`urb.streamId must be an integer 0..${MAX_STREAM_ID}, got ${String(urb.streamId)}`);
      if (urb.type === "interrupt" && (!isUint(urb.interval, U32_MAX) || urb.interval < 1)) {
        return invalid(`urb.interval must be a positive integer, got ${String(urb.interval)}`);
      }
      return null;
    case "isochronous":
      if (urb.endpoint === 0) return invalid("an isochronous URB cannot use endpoint 0");
      if (!isUint(urb.interval, 0xffff) || urb.interval < 1) {
        return invalid(`urb.interval must be an integer in [1, 65535], got ${String(urb.interval)}`);
      }
      return checkIso(urb.iso, length, limits);
  }
}

function checkBuffer(urb: Urb, limits: UrbLimits): UrbRefusal | null {
  const segments = urb.buffer;
  if (segments === undefined) return null;
  if (!Array.isArray(segments)) return invalid("urb.buffer must be an array of segments");
  if (segments.length > MAX_INDIRECT_SEGMENTS) {
    return {
      status: EMSGSIZE,
      detail: `urb.buffer has ${segments.length} segments, at most ${MAX_INDIRECT_SEGMENTS}`,
    };
  }
  let total = 0;
  for (let i = 0; i < segments.length; i++) {
    const { offset, length } = segments[i] ?? ({} as { offset?: unknown; length?: unknown });
    if (!isGuestOffset(offset) || !isUint(length, MAX_BUFFER_LENGTH) || length < 1) {
      return invalid(
        `urb.buffer[${i}] must have an integer offset ≥ 0 and length in [1, ${MAX_BUFFER_LENGTH}]`,
      );
    }
    total += length;
    if (total > MAX_BUFFER_LENGTH) {
      return { status: EMSGSIZE, detail: `urb.buffer is longer than ${MAX_BUFFER_LENGTH} bytes` };
    }
    const firstFrame = offsetToFrame(offset);
    const frames = framesSpanned(offset, length);
    if (frames > MAX_GRANT_FRAMES) {
      return {
        status: EMSGSIZE,
        detail: `urb.buffer[${i}] spans ${frames} frames, one grant covers ${MAX_GRANT_FRAMES}`,
      };
    }
    if (limits.memory.regionOfExtent(firstFrame, frames) < 0) {
      return invalid(`urb.buffer[${i}] is not inside one region of guest memory`);
    }
    if (limits.scratch.overlaps(firstFrame, firstFrame + frames - 1)) {
      return invalid(`urb.buffer[${i}] overlaps the frontend's scratch frames`);
    }
  }
  const scratchNeeded =
    (segments.length > MAX_INLINE_SEGMENTS ? 1 : 0) +
    (urb.type === "isochronous" && Array.isArray(urb.iso?.packets)
      ? isoDescriptorFrames(urb.iso.packets.length)
      : 0);
  if (scratchNeeded > limits.scratch.count) {
    return {
      status: EMSGSIZE,
      detail: `the URB needs ${scratchNeeded} scratch frames, the controller has ${limits.scratch.count}`,
    };
  }
  if (grantsNeeded(urb) > limits.grantEntries) {
    return {
      status: EMSGSIZE,
      detail: `the URB needs ${grantsNeeded(urb)} grants, the table has ${limits.grantEntries}`,
    };
  }
  return null;
}

function checkControl(setup: SetupPacket, directionIn: boolean, length: number): UrbRefusal | null {
  if (typeof setup !== "object" || setup === null) return invalid("a control URB needs urb.setup");
  if (!isUint(setup.bmRequestType, 0xff) || !isUint(setup.bRequest, 0xff)) {
    return invalid("urb.setup.bmRequestType and bRequest must be bytes");
  }
  if (!isUint(setup.wValue, 0xffff) || !isUint(setup.wIndex, 0xffff) || !isUint(setup.wLength, 0xffff)) {
    return invalid("urb.setup.wValue, wIndex and wLength must be u16");
  }
  if (length > MAX_CONTROL_BUFFER_LENGTH) {
    return invalid(
      `a control URB's buffer is at most ${MAX_CONTROL_BUFFER_LENGTH} bytes (wLength is a u16), got ${length}`,
    );
  }
  const setupIn = requestIsIn(setup.bmRequestType);
  if (setup.wLength > 0 && setupIn !== directionIn) {
    return invalid("urb.directionIn disagrees with bit 7 of urb.setup.bmRequestType");
  }
  if (directionIn ? setup.wLength > length : setup.wLength !== length) {
    return invalid(
      directionIn
        ? `control IN needs a buffer of at least wLength (${setup.wLength}) bytes, got ${length}`
        : `control OUT needs a buffer of exactly wLength (${setup.wLength}) bytes, got ${length}`,
    );
  }
  return null;
}

function checkIso(iso: IsoSchedule, length: number, limits: UrbLimits): UrbRefusal | null {
  if (typeof iso !== "object" || iso === null || !Array.isArray(iso.packets)) {
    return invalid("an isochronous URB needs urb.iso with a packets array");
  }
  const n = iso.packets.length;
  if (n < 1) return invalid("urb.iso.packets must not be empty");
  if (n > MAX_ISO_PACKETS) {
    return { status: EMSGSIZE, detail: `urb.iso.packets has ${n} packets, at most ${MAX_ISO_PACKETS}` };
  }
  if (iso.startFrame !== undefined && !isUint(iso.startFrame, U32_MAX)) {
    return invalid("urb.iso.startFrame must be a u32");
  }
  if (isoDescriptorFrames(n) > limits.scratch.count) {
    return { status: EMSGSIZE, detail: `${n} iso packets need more scratch frames than the controller has` };
  }
  for (let i = 0; i < n; i++) {
    const packet = iso.packets[i]!;
    if (!isUint(packet.offset, U32_MAX) || !isUint(packet.length, MAX_ISO_PACKET_LENGTH)) {
      return invalid(`urb.iso.packets[${i}] must have a u32 offset and a length ≤ ${MAX_ISO_PACKET_LENGTH}`);
    }
    if (packet.offset + packet.length > length) {
      return invalid(`urb.iso.packets[${i}] lies beyond the ${length}-byte buffer`);
    }
  }
  return null;
}
