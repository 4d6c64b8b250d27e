/**
 * Size limits of a usbvirt URB. usbif.h caps a URB at 16 segments and a u16 buffer_length; usbvirt
 * lifts both the way Xen's block protocol does (wider length field, indirect segment pages), and
 * these constants are the new ceilings. The parse gate answers -EMSGSIZE when a request exceeds one.
 */

/**
 * Largest buffer one URB may describe: 4 MiB. Linux usbfs caps all in-flight transfer memory at 16 MiB
 * by default, so 4 MiB keeps several large URBs in flight. src/dma-map exports no mapped-length limit
 * yet; if it adds one, this must not exceed it.
 */
export const MAX_BUFFER_LENGTH = 4 * 1024 * 1024;

/** Segments carried in the request slot itself. */
export const MAX_INLINE_SEGMENTS = 8;

/** Segments one indirect segment page may hold (256 × 12 bytes = 3 KiB: fits one 4 KiB frame). */
export const MAX_INDIRECT_SEGMENTS = 256;

/** Isochronous packets per URB (Linux drivers use up to a few hundred; xhci caps TDs similarly). */
export const MAX_ISO_PACKETS = 1024;
