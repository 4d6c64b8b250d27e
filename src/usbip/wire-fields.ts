/**
 * The field helpers the USB/IP codecs share: a big-endian DataView over a byte range, and the
 * fixed-size, NUL-terminated string fields (path, busid) of the management phase.
 */

/** A DataView over exactly `bytes` (USB/IP fields are big-endian: DataView's default). */
export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Write `text` into the `size`-byte field at `at` (the field must be zeroed): always NUL-terminated. */
export function writeCString(out: Uint8Array, at: number, size: number, text: string): void {
  const encoded = new TextEncoder().encode(text);
  // Always NUL-terminated: at most size − 1 bytes of text.
  out.set(encoded.subarray(0, size - 1), at);
}

/** The text of the `size`-byte field at `at`, up to its first NUL (or the whole field without one). */
export function readCString(bytes: Uint8Array, at: number, size: number): string {
  const field = bytes.subarray(at, at + size);
  const nul = field.indexOf(0);
  return new TextDecoder("utf-8", { fatal: false }).decode(nul < 0 ? field : field.subarray(0, nul));
}
