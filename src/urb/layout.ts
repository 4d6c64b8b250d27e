/**
 * Byte layout of the usbvirt URB ring slot: offsets, sizes and flag bits, asserted at load time.
 *
 * Modelled on Xen's usbif.h (`usbif_urb_request`, `usbif_urb_response`) with the limits lifted:
 * id u32 (not u16), buffer_length u32 (not u16), segments {gref u32, offset u32, length u32}
 * (not u16 offset/length), 16-byte type union (not 8: iso needs its frame-descriptor grant), 8 inline
 * segments plus an indirect segment page (Xen blkif style) instead of 16 inline ones. `id` sits at
 * offset 0 because the generic ring layer reads it there for its in-flight id checks. Every octet the
 * request does not use must be zero, so a future field can be added without ambiguity.
 *
 * Request slot, 128 octets, little-endian:
 *
 *      0       1       2       3       4       5       6       7
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |            id (u32)           |        pipe (u32, pipe.ts)    |   0
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   | transfer_flags| nr_segs (u16) |      buffer_length (u32)      |   8
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |              union by transfer type, 16 octets                |  16
 *   +                         (see below)                           +
 *   |                                                               |  24
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |         seg[0].gref           |         seg[0].offset         |  32
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |         seg[0].length         |         seg[1].gref           |  40
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |                 ... seg[1] .. seg[6] ...                      |
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |         seg[7].offset         |         seg[7].length         | 120
 *   +-------+-------+-------+-------+-------+-------+-------+-------+ 128
 *
 *   transfer_flags: bit 0 SHORT_NOT_OK, bit 1 ISO_ASAP, bit 2 ZERO_PACKET, bit 15 INDIRECT; others 0.
 *   nr_segs: inline segments used (0..8); with INDIRECT, the segment count of the indirect page
 *   (1..256), which inline seg[0] describes (seg[0].length = nr_segs × 12).
 *
 *   Union at 16 (octets 16..31):
 *     control    16 bmRequestType u8 | 17 bRequest u8 | 18 wValue u16 | 20 wIndex u16 | 22 wLength u16
 *                24..31 zero
 *     interrupt  16 interval u32 | 20..31 zero
 *     iso        16 interval u16 | 18 number_of_packets u16 | 20 start_frame u32
 *                24 frame-descriptor gref u32 | 28 frame-descriptor offset u32
 *     unlink     16 unlink_id u32 | 20..31 zero            (pipe unlink bit set)
 *     bulk       16 stream_id u32 (0: no stream; 1..65533, USB 3.2 §8.12.1.4) | 20..31 zero
 *
 *   Iso frame descriptor (number_of_packets of them, 16 octets each, in a writable grant):
 *     0 offset u32 | 4 length u32 | 8 status s32 | 12 actual_length u32
 *
 *   Indirect segment page entry, 12 octets (same as an inline segment):
 *     0 gref u32 | 4 offset u32 | 8 length u32
 *
 * Response, same slot, first 20 octets (the rest is left as it was):
 *
 *      0       1       2       3       4       5       6       7
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |            id (u32)           |          status (s32)         |   0
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |      actual_length (u32)      |       start_frame (u32)       |   8
 *   +-------+-------+-------+-------+-------+-------+-------+-------+
 *   |       error_count (u32)       |                                  16
 *   +-------+-------+-------+-------+
 */
import { SETUP_PACKET_SIZE } from "../usb/index.js";

/** Size of one URB ring slot; requests and responses share it. */
export const URB_SLOT_SIZE = 128;

// Request field offsets.
export const kReqId = 0;
export const kReqPipe = 4;
export const kReqTransferFlags = 8;
export const kReqNrSegs = 10;
export const kReqBufferLength = 12;
export const kReqUnion = 16;
export const kReqUnionSize = 16;
export const kReqSegments = 32;

// Union members, absolute offsets in the slot.
export const kCtrlSetup = 16;
export const kCtrlRequestType = 16;
export const kCtrlRequest = 17;
export const kCtrlValue = 18;
export const kCtrlIndex = 20;
export const kCtrlLength = 22;
export const kIntInterval = 16;
export const kIsoInterval = 16;
export const kIsoNumberOfPackets = 18;
export const kIsoStartFrame = 20;
export const kIsoDescRef = 24;
export const kIsoDescOffset = 28;
export const kUnlinkId = 16;
export const kBulkStreamId = 16;

// One segment descriptor (inline or in an indirect page).
export const SEGMENT_SIZE = 12;
export const kSegRef = 0;
export const kSegOffset = 4;
export const kSegLength = 8;
export const INLINE_SEGMENT_SLOTS = 8;

// Iso frame descriptor.
export const ISO_FRAME_DESCRIPTOR_SIZE = 16;
export const kIsoFdOffset = 0;
export const kIsoFdLength = 4;
export const kIsoFdStatus = 8;
export const kIsoFdActualLength = 12;

// Response field offsets.
export const URB_RESPONSE_SIZE = 20;
export const kRspId = 0;
export const kRspStatus = 4;
export const kRspActualLength = 8;
export const kRspStartFrame = 12;
export const kRspErrorCount = 16;

// transfer_flags bits.
export const FLAG_SHORT_NOT_OK = 1 << 0;
export const FLAG_ISO_ASAP = 1 << 1;
export const FLAG_ZERO_PACKET = 1 << 2;
export const FLAG_INDIRECT = 1 << 15;
export const TRANSFER_FLAGS_RESERVED_MASK =
  0xffff & ~(FLAG_SHORT_NOT_OK | FLAG_ISO_ASAP | FLAG_ZERO_PACKET | FLAG_INDIRECT);

// Layout asserted at load time: a wrong constant must fail at import, not corrupt a ring.
function assertLayout(ok: boolean, what: string): void {
  if (!ok) throw new Error(`urb layout: ${what}`);
}
assertLayout(kReqSegments + INLINE_SEGMENT_SLOTS * SEGMENT_SIZE === URB_SLOT_SIZE, "segments end the slot");
assertLayout(kReqUnion + kReqUnionSize === kReqSegments, "union ends where segments begin");
assertLayout(kCtrlSetup + SETUP_PACKET_SIZE <= kReqSegments, "setup packet fits the union");
assertLayout(kIsoDescOffset + 4 === kReqSegments, "iso union fills the union");
assertLayout(kRspErrorCount + 4 === URB_RESPONSE_SIZE, "response size");
assertLayout(kReqId === 0 && kRspId === 0, "id at offset 0 (the ring layer relies on it)");
assertLayout(TRANSFER_FLAGS_RESERVED_MASK === 0x7ff8, "transfer flag reserved mask");
