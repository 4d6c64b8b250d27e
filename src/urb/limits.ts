/**
 * Size limits of a usbvirt URB. usbif.h caps a URB at 16 segments and a u16 buffer_length; usbvirt
 * lifts both the way Xen's block protocol does (wider length field, indirect segment pages), and
 * these constants are the new ceilings. The parse gate answers -EMSGSIZE when a request exceeds one.
 * The buffer and segment ceilings are the grant mapper's (src/dma-map), so a request the gate accepts is
 * never refused by the mapper for its size.
 */
import { MAX_SEGMENTS, MAX_TRANSFER_BYTES } from "../dma-map/grant-mapper.js";
import { FRAME_SIZE } from "../dma-map/types.js";
import { SEGMENT_SIZE } from "./layout.js";

/**
 * Largest buffer one URB may describe: 4 MiB, the mapper's MAX_TRANSFER_BYTES. Linux usbfs caps all
 * in-flight transfer memory at 16 MiB by default, so 4 MiB keeps several large URBs in flight.
 */
export const MAX_BUFFER_LENGTH: number = MAX_TRANSFER_BYTES;

/**
 * Largest buffer a control URB may have: wLength is a u16 (USB 2.0 §9.3.5), so no data stage is longer.
 * An IN buffer may be padded beyond wLength, not beyond this; a longer one is malformed (-EINVAL).
 */
export const MAX_CONTROL_BUFFER_LENGTH = 0xffff;

/** Segments carried in the request slot itself. */
export const MAX_INLINE_SEGMENTS = 8;

/** Segments one indirect segment page may hold (the mapper's MAX_SEGMENTS, 256 × 12 bytes = 3 KiB: fits one 4 KiB frame). */
export const MAX_INDIRECT_SEGMENTS: number = MAX_SEGMENTS;

/** Isochronous packets per URB; number_of_packets is a u16, this keeps the descriptor array at 16 KiB. */
export const MAX_ISO_PACKETS = 1024;

// What the wire format needs of the mapper's limits, asserted at load: buffer_length is a u32, and the
// indirect segment list must fit one frame (the gate refuses a list that crosses a frame).
if (MAX_BUFFER_LENGTH > 0xffff_ffff || MAX_INDIRECT_SEGMENTS * SEGMENT_SIZE > FRAME_SIZE) {
  throw new Error("urb limits: dma-map limits no longer fit the URB slot layout");
}
/**
 * Largest bulk stream id (USB 3.2 §8.12.1.4): 0 means no stream, 0xFFFE (Prime) and 0xFFFF (NoStream) are
 * reserved, and ids above 16 bits do not exist on the bus.
 */
export const MAX_STREAM_ID = 0xfffd;
