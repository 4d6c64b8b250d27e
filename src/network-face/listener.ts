/**
 * What both network servers (USB/IP's `serve`, usbredir's `redirect`) do with their listening socket:
 * create it paused (each accepted connection is handed to a socket that reads where its server says,
 * util/read-into.ts), listen on a port, a Unix-domain socket or an inherited descriptor (systemd socket activation), log
 * the listener's later errors, refuse a peer outside the allowlist before anything is read from it, and
 * cap the connections held at once.
 */
import {
  chmodSync,
  chownSync,
  lstatSync,
  readFileSync,
  readlinkSync,
  type Stats,
  statSync,
  unlinkSync,
} from "node:fs";
import { type BlockList, connect, createServer, type Server, type Socket } from "node:net";
import { allowedBy } from "../util/ip-prefix.js";
import type { FaceLogger } from "./log.js";

/**
 * Where to listen: an already-listening descriptor, a port on an address, or a Unix-domain socket at a
 * path (created with mode 0660 and the process's group, so file permissions decide who may connect).
 */
export type ListenAt =
  | { readonly fd: number }
  | { readonly port: number; readonly host: string }
  | { readonly path: string };

/** Where a listening server is: a TCP address, or a Unix-domain socket's path. */
export type ListeningAt = { readonly host: string; readonly port: number } | { readonly path: string };

/**
 * Where `server` listens (null before it does). For a socket passed by descriptor `fd` (systemd socket
 * activation) a TCP address is the socket's own (getsockname), so a passed socket bound beyond loopback is
 * seen as such; a Unix-domain one has no name Node knows, so its path is looked up (unixSocketPathOf).
 */
export function listeningAt(server: Server, fd?: number): ListeningAt | null {
  if (!server.listening) return null;
  const a = server.address();
  if (typeof a === "string") return { path: a };
  if (a !== null) return { host: a.address, port: a.port };
  return fd !== undefined ? { path: unixSocketPathOf(fd) ?? "" } : null;
}

/**
 * The path of the Unix-domain socket open on descriptor `fd` (Linux: the socket's inode, from
 * /proc/self/fd, found in /proc/net/unix; "@name" for an abstract one), or null when it is none or unnamed.
 */
export function unixSocketPathOf(fd: number): string | null {
  let inode: string;
  let table: string;
  try {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    if (m === null) return null;
    inode = m[1]!;
    table = readFileSync("/proc/net/unix", "latin1");
  } catch {
    return null;
  }
  // Num RefCount Protocol Flags Type St Inode Path
  for (const line of table.split("\n")) {
    const cols = line.trim().split(/\s+/);
    if (cols[6] === inode && cols.length > 7) return cols.slice(7).join(" ");
  }
  return null;
}

/** Mode of a Unix-domain socket a server creates: owner and group may connect. */
export const UNIX_SOCKET_MODE = 0o660;

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
    else if ("path" in at) {
      removeStaleSocket(at.path)
        .then(() => listenUnix(server, at.path, listening))
        .catch(reject);
    } else server.listen(at.port, at.host, listening);
  });
  server.on("error", (err) => log.error(`listener: ${String(err)}`));
}

/**
 * Bind `path` with no permission for others from the first moment (the umask is narrowed around the
 * bind, which listen() does synchronously), then set mode 0660 and the process's group explicitly.
 */
export function listenUnix(server: Server, path: string, listening: () => void): void {
  const old = process.umask(0o117);
  try {
    server.listen(path, () => {
      try {
        chmodSync(path, UNIX_SOCKET_MODE);
        // Only in a setgid directory does the file get another group: chown(2) is a privileged call a
        // sandbox may refuse (systemd's SystemCallFilter=~@privileged), so it is made only when needed.
        const gid = process.getgid?.();
        if (gid !== undefined && statSync(path).gid !== gid) chownSync(path, -1, gid);
      } catch (err) {
        server.emit("error", err);
        return;
      }
      listening();
    });
  } finally {
    process.umask(old);
  }
}

/**
 * A socket file left by a process that is gone (nothing accepts on it) is removed; a live one, or a
 * path that is not a socket, is an error naming it.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let stat: Stats;
  try {
    stat = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!stat.isSocket()) throw new Error(`${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (live) throw new Error(`${path}: another process listens on it`);
  unlinkSync(path);
}

let localPeers = 0;

/** A peer's "address:port", as the log lines name it (a Unix-domain peer: "local#N", N counting connections). */
export function peerName(socket: Socket): string {
  if (
    socket.remoteAddress === undefined &&
    socket.remotePort === undefined &&
    socket.localPort === undefined
  ) {
    return `local#${++localPeers}`;
  }
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
