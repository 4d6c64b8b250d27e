/**
 * What both network servers (USB/IP's `serve`, usbredir's `redirect`) do with their listening socket:
 * create it paused (each accepted connection is handed to a socket that reads where its server says,
 * util/read-into.ts), listen on a port or on an inherited descriptor (systemd socket activation), log
 * the listener's later errors, refuse a peer outside the allowlist before anything is read from it, and
 * cap the connections held at once.
 */
import { type BlockList, createServer, type Server, type Socket } from "node:net";
import { allowedBy } from "../util/ip-prefix.js";
import type { FaceLogger } from "./log.js";

/** Where to listen: an already-listening descriptor, or a port on an address. */
export type ListenAt = { readonly fd: number } | { readonly port: number; readonly host: string };

/** A TCP server whose accepted sockets start paused, with no Nagle delay and keep-alive on. */
export function createPausedServer(): Server {
  return createServer({
    noDelay: true,
    keepAlive: true,
    keepAliveInitialDelay: 30_000,
    pauseOnConnect: true,
  });
}

/** Listen at `at`; rejects when that fails, and logs the listener's errors after that. */
export async function listenAt(server: Server, at: ListenAt, log: FaceLogger): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const listening = () => {
      server.off("error", reject);
      resolve();
    };
    if ("fd" in at) server.listen({ fd: at.fd }, listening);
    else server.listen(at.port, at.host, listening);
  });
  server.on("error", (err) => log.error(`listener: ${String(err)}`));
}

/** A peer's "address:port", as the log lines name it. */
export function peerName(socket: Socket): string {
  return `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
}

/** Whether `socket`'s peer may connect (no allowlist: any); a refused peer is logged and its socket destroyed. */
export function admitPeer(socket: Socket, peer: string, allow: BlockList | null, log: FaceLogger): boolean {
  if (allow === null || allowedBy(allow, socket.remoteAddress)) return true;
  log.warn(`${peer}: refused, not in the allowlist`, { client: peer });
  socket.destroy();
  return false;
}

/** How often a server says it refused connections over its cap (one line per interval, with the count). */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

/**
 * Refusals said once per interval: the first is logged with how many were refused since the last line,
 * the rest of the interval only counted. No timer: the clock is read when a refusal comes.
 */
export class RefusalLog {
  private refused = 0;
  private lastLog = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly log: FaceLogger,
    private readonly now: () => number = Date.now,
  ) {}

  /** One refusal of `peer`; `why` is the line, said with the count when this interval's line is due. */
  refuse(peer: string, why: string): void {
    this.refused++;
    const t = this.now();
    if (t - this.lastLog < REFUSAL_LOG_INTERVAL_MS) return;
    this.lastLog = t;
    this.log.warn(`${peer}: refused, ${why}; ${this.refused} refused since the last such line`, {
      client: peer,
    });
    this.refused = 0;
  }
}

/**
 * The cap on connections a server holds at once (`maxConnections`): past it a new connection is destroyed
 * before anything is read from it, and the refusals are logged once per interval, never per connection.
 */
export class ConnectionCap {
  private held = 0;
  private readonly refusals: RefusalLog;

  constructor(
    private readonly max: number,
    log: FaceLogger,
    now: () => number = Date.now,
  ) {
    this.refusals = new RefusalLog(log, now);
  }

  /** Connections held now. */
  get count(): number {
    return this.held;
  }

  /** Hold `socket` (release() when it ends), or refuse it: destroyed, counted, logged once per interval. */
  admit(socket: Socket, peer: string): boolean {
    if (this.held < this.max) {
      this.held++;
      return true;
    }
    socket.destroy();
    this.refusals.refuse(peer, `${this.held} connections held (maxConnections ${this.max})`);
    return false;
  }

  release(): void {
    if (this.held > 0) this.held--;
  }
}
