/**
 * A TCP relay on 127.0.0.1 that opens its upstream connection when the first byte arrives, not when its
 * client connects. QEMU's chardev sockets connect as QEMU starts, but the guest speaks only after it booted
 * (tens of seconds under TCG); through this relay the USB/IP server sees each connection when the guest's
 * import begins, as it sees `usbip attach`'s, so its management-phase limits judge the guest, not the boot.
 */
import { connect, createServer, type Socket } from "node:net";

export interface LazyRelay {
  /** The port on 127.0.0.1 its clients connect to. */
  readonly port: number;
  /** Upstream connections opened so far (one per client that sent a byte). */
  readonly upstreams: number;
  /** Stops listening and ends every connection. */
  close(): Promise<void>;
}

/** Starts a relay to `target` (a server on 127.0.0.1). */
export async function startLazyRelay(target: { readonly port: number }): Promise<LazyRelay> {
  const sockets = new Set<Socket>();
  let upstreams = 0;
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  };
  const server = createServer((downstream) => {
    track(downstream);
    downstream.on("error", () => undefined); // "close" follows, which ends the other side too
    downstream.once("data", (first: Buffer) => {
      downstream.pause(); // what arrives meanwhile waits in the stream, in order
      const upstream = connect(target.port, "127.0.0.1");
      track(upstream);
      upstream.on("error", () => undefined);
      upstream.on("close", () => downstream.destroy());
      downstream.on("close", () => upstream.destroy());
      upstream.once("connect", () => {
        upstreams++;
        upstream.write(first);
        downstream.pipe(upstream);
        upstream.pipe(downstream);
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("lazy relay: no TCP address");
  return {
    port: address.port,
    get upstreams() {
      return upstreams;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
