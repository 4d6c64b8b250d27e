/**
 * Why the parse gate refused a request: stable reason codes (for logs, statistics and tests) and the
 * status each one is answered with.
 *
 * Status choice, following Linux `usb_submit_urb` and the usbif backends: a request that is malformed
 * (reserved bits, impossible combinations, inconsistent lengths) gets -EINVAL; a well-formed request
 * that is larger than usbvirt accepts (buffer, segment count, iso packet count) gets -EMSGSIZE, which
 * Linux uses for "transfer too large" — so a guest can tell "you are broken" from "split it up".
 * QEMU answers too many segments with -ESHUTDOWN; usbvirt does not, since the frontend reads -ESHUTDOWN
 * as "the backend went away".
 */
import { EINVAL, EMSGSIZE, type UrbStatus } from "./status.js";

export const PARSE_REJECTIONS = Object.freeze({
  "bad-slot-size": { status: EINVAL, meaning: "the copied slot is not exactly 128 bytes" },
  "pipe-reserved-bits": { status: EINVAL, meaning: "pipe bit 6 or bits 19..29 set" },
  "flags-reserved-bits": { status: EINVAL, meaning: "transfer_flags bits 3..14 set" },
  "port-out-of-range": { status: EINVAL, meaning: "pipe port is 0 (ports are 1..31)" },
  "flag-not-valid-for-transfer": {
    status: EINVAL,
    meaning: "ISO_ASAP on non-iso, ZERO_PACKET on other than bulk/interrupt OUT, any flag on unlink",
  },
  "unlink-with-buffer": { status: EINVAL, meaning: "unlink request with buffer_length or nr_segs set" },
  "unlink-targets-itself": { status: EINVAL, meaning: "unlink_id equals the unlink request's own id" },
  "buffer-too-long": { status: EMSGSIZE, meaning: "buffer_length above MAX_BUFFER_LENGTH" },
  "too-many-segments": {
    status: EMSGSIZE,
    meaning: "more than 8 inline or MAX_INDIRECT_SEGMENTS indirect segments",
  },
  "indirect-empty": { status: EINVAL, meaning: "INDIRECT set with nr_segs 0" },
  "segments-without-buffer": { status: EINVAL, meaning: "buffer_length 0 but segments given" },
  "buffer-without-segments": { status: EINVAL, meaning: "buffer_length > 0 but no segment" },
  "zero-length-segment": { status: EINVAL, meaning: "a segment of length 0" },
  "segment-range-overflow": { status: EINVAL, meaning: "segment offset + length beyond 2^32" },
  "segment-length-mismatch": { status: EINVAL, meaning: "segment lengths do not add up to buffer_length" },
  "indirect-descriptor-length": { status: EINVAL, meaning: "indirect page descriptor length ≠ nr_segs × 12" },
  "indirect-page-crosses-frame": {
    status: EINVAL,
    meaning: "indirect segment list does not lie within one 4 KiB frame",
  },
  "truncated-indirect-page": { status: EINVAL, meaning: "copied indirect page shorter than count × 12" },
  "endpoint-zero-not-control": { status: EINVAL, meaning: "bulk, interrupt or iso URB on endpoint 0" },
  "control-buffer-too-long": {
    status: EINVAL,
    meaning: "control URB with buffer_length above MAX_CONTROL_BUFFER_LENGTH (wLength is a u16)",
  },
  "control-direction-mismatch": {
    status: EINVAL,
    meaning: "wLength > 0 and bmRequestType bit 7 disagrees with the pipe direction",
  },
  "control-wlength-exceeds-buffer": { status: EINVAL, meaning: "control IN with wLength > buffer_length" },
  "control-out-length-mismatch": { status: EINVAL, meaning: "control OUT with wLength ≠ buffer_length" },
  "stream-id-out-of-range": {
    status: EINVAL,
    meaning: "bulk stream_id above MAX_STREAM_ID (0xFFFE, 0xFFFF and above 16 bits are not stream ids)",
  },
  "zero-interval": { status: EINVAL, meaning: "interrupt or iso URB with interval 0" },
  "iso-no-packets": { status: EINVAL, meaning: "iso URB with number_of_packets 0" },
  "too-many-iso-packets": { status: EMSGSIZE, meaning: "iso number_of_packets above MAX_ISO_PACKETS" },
  "iso-descriptor-range-overflow": {
    status: EINVAL,
    meaning: "frame-descriptor offset + number_of_packets × 16 beyond 2^32",
  },
  "truncated-iso-descriptors": {
    status: EINVAL,
    meaning: "copied iso descriptor array shorter than number_of_packets × 16",
  },
  "iso-packet-too-long": { status: EMSGSIZE, meaning: "an iso packet longer than MAX_ISO_PACKET_LENGTH" },
  "iso-packet-outside-buffer": {
    status: EINVAL,
    meaning: "an iso packet's offset + length lies beyond buffer_length",
  },
  "reserved-bytes-nonzero": {
    status: EINVAL,
    meaning: "an octet the request does not use (union padding, unused segment slot) is not zero",
  },
} satisfies Record<string, { status: UrbStatus; meaning: string }>);

export type ParseReason = keyof typeof PARSE_REJECTIONS;

export const PARSE_REASONS = Object.freeze(Object.keys(PARSE_REJECTIONS) as ParseReason[]);
