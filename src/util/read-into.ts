/**
 * Reads that land where the server says: Node's `onread` option on a socket, for the network servers
 * (USB/IP, usbredir), so a read goes into a reused staging buffer or straight into the guest buffer of
 * the OUT data that is due, instead of a fresh Buffer per read — the garbage a fast stream would
 * otherwise make is what a busy server's event loop pays for most.
 */
import { type OnReadOpts, Socket, type SocketConstructorOpts } from "node:net";

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
