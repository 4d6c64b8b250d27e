/**
 * Isochronous frame descriptors: the number_of_packets × 16-byte array an iso URB points at through its
 * frame-descriptor grant (layout in layout.ts; fields as Linux `struct usb_iso_packet_descriptor` and the
 * USB/IP iso descriptor). The frontend writes offset/length per packet; the backend writes status and
 * actual_length back into the same writable grant when the URB completes.
 *
 * `parseIsoPacketDescriptors` is the gate for the request half: the backend maps the descriptor grant,
 * copies number_of_packets × 16 bytes privately, and checks them here before using any offset. Like
 * Linux `usb_submit_urb`, an over-long packet is -EMSGSIZE; a packet outside the buffer is -EINVAL.
 */
import { InvalidOptionError } from "../util/errors.js";
import { readS32, readU32, writeU32 } from "./bytes.js";
import {
  ISO_FRAME_DESCRIPTOR_SIZE,
  kIsoFdActualLength,
  kIsoFdLength,
  kIsoFdOffset,
  kIsoFdStatus,
} from "./layout.js";
import { MAX_ISO_PACKETS } from "./limits.js";
import { PARSE_REJECTIONS, type ParseReason } from "./reasons.js";
import { statusFromPeer, type UrbStatus } from "./status.js";

/**
 * Longest iso packet (one service interval): a SuperSpeed iso endpoint moves at most Mult 3 × burst 16 ×
 * 1024 bytes (endpoint companion descriptor); high-speed high-bandwidth endpoints at most 3 × 1024.
 */
export const MAX_ISO_PACKET_LENGTH = 3 * 16 * 1024;

/** Where one iso packet's data sits in the URB's transfer buffer. */
export interface IsoPacket {
  readonly offset: number;
  readonly length: number;
}

/**
 * How one iso packet completed: what a device reports (src/devices/device.ts TransferResult), what the
 * descriptor array carries back, and what the frontend hands its caller (actualLength clamped there).
 */
export interface IsoPacketResult {
  readonly status: UrbStatus;
  readonly actualLength: number;
}

export type IsoParseResult =
  | { readonly ok: true; readonly packets: readonly IsoPacket[] }
  | { readonly ok: false; readonly status: UrbStatus; readonly reason: ParseReason };

function isoReject(reason: ParseReason): IsoParseResult {
  return { ok: false, status: PARSE_REJECTIONS[reason].status, reason };
}

/**
 * Read `numberOfPackets` descriptors from a private copy of the descriptor array and check each packet
 * lies inside the `bufferLength`-byte transfer buffer. Packets may be empty, overlap or come in any order
 * (Linux allows all three). The status/actual_length input fields are outputs and are ignored. Never throws.
 */
export function parseIsoPacketDescriptors(
  copied: Uint8Array,
  numberOfPackets: number,
  bufferLength: number,
): IsoParseResult {
  if (!Number.isInteger(numberOfPackets) || numberOfPackets < 1) return isoReject("iso-no-packets");
  if (numberOfPackets > MAX_ISO_PACKETS) return isoReject("too-many-iso-packets");
  if (copied.length < numberOfPackets * ISO_FRAME_DESCRIPTOR_SIZE)
    return isoReject("truncated-iso-descriptors");
  const packets: IsoPacket[] = [];
  for (let i = 0; i < MAX_ISO_PACKETS && i < numberOfPackets; i++) {
    const at = i * ISO_FRAME_DESCRIPTOR_SIZE;
    const offset = readU32(copied, at + kIsoFdOffset);
    const length = readU32(copied, at + kIsoFdLength);
    if (length > MAX_ISO_PACKET_LENGTH) return isoReject("iso-packet-too-long");
    if (offset + length > bufferLength) return isoReject("iso-packet-outside-buffer");
    packets.push({ offset, length });
  }
  return { ok: true, packets };
}

function checkIndex(descriptors: Uint8Array, index: number): number {
  const at = index * ISO_FRAME_DESCRIPTOR_SIZE;
  if (!Number.isInteger(index) || index < 0 || at + ISO_FRAME_DESCRIPTOR_SIZE > descriptors.length) {
    throw new InvalidOptionError(
      `iso packet ${index} is outside a ${descriptors.length}-byte descriptor array`,
    );
  }
  return at;
}

/** Frontend: describe packet `index` (offset and length in the transfer buffer); clears its result fields. */
export function writeIsoPacket(descriptors: Uint8Array, index: number, packet: IsoPacket): void {
  const at = checkIndex(descriptors, index);
  writeU32(descriptors, at + kIsoFdOffset, packet.offset);
  writeU32(descriptors, at + kIsoFdLength, packet.length);
  writeU32(descriptors, at + kIsoFdStatus, 0);
  writeU32(descriptors, at + kIsoFdActualLength, 0);
}

/** Backend: record how packet `index` completed, in the mapped (writable) descriptor grant. */
export function writeIsoPacketResult(
  descriptors: Uint8Array,
  index: number,
  status: UrbStatus,
  actualLength: number,
): void {
  const at = checkIndex(descriptors, index);
  writeU32(descriptors, at + kIsoFdStatus, status);
  writeU32(descriptors, at + kIsoFdActualLength, actualLength);
}

/**
 * Frontend: read how packet `index` completed. The status goes through `statusFromPeer`; the frontend
 * still clamps `actualLength` to the packet's length (both come from the peer).
 */
export function readIsoPacketResult(descriptors: Uint8Array, index: number): IsoPacketResult {
  const at = checkIndex(descriptors, index);
  return {
    status: statusFromPeer(readS32(descriptors, at + kIsoFdStatus)),
    actualLength: readU32(descriptors, at + kIsoFdActualLength),
  };
}
