/**
 * Reads that land where the server says: Node's `onread` option on a socket, for the network servers
 * (USB/IP, usbredir), so a read goes into a reused staging buffer or straight into the guest buffer of
 * the OUT data that is due, instead of a fresh Buffer per read — the garbage a fast stream would
 * otherwise make is what a busy server's event loop pays for most. On a TLS socket the decrypted
 * records land there the same way (OpenSSL's plaintext is copied into the buffer given).
 */
import { type OnReadOpts, Socket, type SocketConstructorOpts } from "node:net";
import type { TLSSocket } from "node:tls";

/**
 * Re-own an accepted connection with Node's `onread` option, so reads land in memory the server chooses
 * (its staging buffer, or a submit's guest buffer) instead of a fresh Buffer per read: the garbage a
 * fast stream would otherwise make is what a busy server's event loop pays for most. net.Server has no
 * such option, so the accepted socket's handle is given to a new Socket (as net does for every
 * connection it accepts); where the handle is not reachable, null: the caller keeps 'data' events.
 */
export function adoptWithReadBuffer(raw: Socket, onread: OnReadOpts): Socket | null {
  const handle = (raw as unknown as { _handle?: object | null })._handle;
  if (handle === undefined || handle === null) return null;
  try {
    return new Socket({ handle, onread } as SocketConstructorOpts);
  } catch {
    return null;
  }
}

/** net.Socket's fields behind `onread`: the buffer, its generator, the callback (stream_base_commons). */
const ONREAD_FIELDS = ["kBuffer", "kBufferGen", "kBufferCb"] as const;

/**
 * Give a server's TLS socket, its handshake done, the reads `onread` gives a plain one. Node honours
 * `onread` only on a TLS socket it connects itself, and tls.Server has no such option; without it every
 * decrypted record (16 KiB at most) becomes a fresh Buffer, and at a few hundred MB/s their garbage
 * costs the server more than the cipher does. The TLS socket is a net.Socket: its handle reads into a
 * buffer given to `useUserBuffer` as a TCP handle does, and net keeps the buffer, its generator and the
 * callback in three fields of the socket, set here as net's constructor sets them for `onread`; from
 * then on pause() stops the reads (as on a plain socket), and the plaintext goes to `onread.callback`.
 * False where that cannot be done (fields or method not found on this Node, or plaintext already
 * buffered as 'data'): the caller keeps 'data' events.
 */
export function readTlsInto(socket: TLSSocket, onread: OnReadOpts): boolean {
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: unknown } | null })._handle;
  if (handle === undefined || handle === null || typeof handle.useUserBuffer !== "function") return false;
  if (socket.readableLength > 0 || socket.destroyed) return false;
  const own = Object.getOwnPropertySymbols(socket);
  const fields = ONREAD_FIELDS.map((name) => own.filter((sym) => sym.description === name));
  if (fields.some((f) => f.length !== 1)) return false;
  const [kBuffer, kBufferGen, kBufferCb] = fields.map((f) => f[0]!) as [symbol, symbol, symbol];
  const slots = socket as unknown as Record<symbol, unknown>;
  // Already reading into a buffer of its own: not ours to replace.
  if (slots[kBuffer] !== null) return false;
  const generate = typeof onread.buffer === "function" ? onread.buffer : null;
  const first = generate === null ? onread.buffer : generate();
  if (!(first instanceof Uint8Array)) return false;
  slots[kBuffer] = first;
  slots[kBufferGen] = generate;
  slots[kBufferCb] = onread.callback;
  (handle.useUserBuffer as (b: Uint8Array) => void).call(handle, first);
  return true;
}
