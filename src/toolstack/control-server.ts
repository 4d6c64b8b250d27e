/**
 * The control socket: a Unix-domain socket (mode 0660, the process's group: file permissions are the
 * authentication) on which control-protocol requests (protocol.ts) are read, checked and handed to a
 * handler, one reply line each.
 *
 * Every connection is bounded: a line over maxLineBytes gets a `too-long` reply and the connection is
 * closed (no resynchronising inside a hostile stream); more than maxInFlight requests at once get `busy`
 * replies; a connection whose unsent replies pass maxUnsentBytes is closed; past maxConnections a new
 * connection gets one `busy` reply and is closed. Nothing a peer sends can throw out of here.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { dirname } from "node:path";
import type { FaceLogger } from "../network-face/log.js";
import {
  busyReply,
  CONTROL_LIMITS,
  type ControlReply,
  type ControlRequest,
  errorReply,
  okReply,
  parseRequestLine,
  tooLongReply,
} from "./protocol.js";

export type ControlHandler = (request: ControlRequest) => Promise<unknown>;

export interface ControlServerOptions {
  readonly path: string;
  readonly handler: ControlHandler;
  readonly log: FaceLogger;
  /** Override the bounds (tests). */
  readonly limits?: Partial<typeof CONTROL_LIMITS>;
}

/** The control socket's default path: systemd's RuntimeDirectory, else $XDG_RUNTIME_DIR/usbvirt, else /run/usbvirt. */
export function defaultControlPath(env: NodeJS.ProcessEnv = process.env): string {
  const systemd = env.RUNTIME_DIRECTORY?.split(":")[0];
  if (systemd !== undefined && systemd !== "") return `${systemd}/control.sock`;
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg?.startsWith("/")) return `${xdg}/usbvirt/control.sock`;
  return "/run/usbvirt/control.sock";
}

/** Does something answer on the socket at `path`? (A leftover of a process that ended does not.) */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export class ControlServer {
  private readonly connections = new Set<Socket>();
  private readonly limits: typeof CONTROL_LIMITS;
  private closed = false;
  /** Counted refusals of the socket itself (malformed, oversized, busy). */
  refusals = 0;

  private constructor(
    private readonly server: Server,
    private readonly options: ControlServerOptions,
    limits: typeof CONTROL_LIMITS,
  ) {
    this.limits = limits;
    server.on("connection", (socket) => this.accept(socket));
  }

  get path(): string {
    return this.options.path;
  }

  /** Listen at options.path: its folder made (0750) if missing, a stale socket replaced, the socket 0660. */
  static async start(options: ControlServerOptions): Promise<ControlServer> {
    const { path } = options;
    mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
    let exists = false;
    try {
      const st = lstatSync(path);
      if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
      exists = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (exists) {
      if (await answers(path)) throw new Error(`another process is listening on the control socket ${path}`);
      unlinkSync(path); // left by a process that ended
    }
    const server = createServer({ allowHalfOpen: false });
    // The socket is made 0660 at bind (umask), so it is never reachable more widely, even for a moment.
    const umask = process.umask(0o117);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ path }, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } finally {
      process.umask(umask);
    }
    chmodSync(path, 0o660);
    return new ControlServer(server, options, { ...CONTROL_LIMITS, ...options.limits });
  }

  /** Connections open now (tests, status). */
  get open(): number {
    return this.connections.size;
  }

  private accept(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.limits.maxConnections) {
      this.refusals++;
      socket.end(
        `${JSON.stringify(busyReply(null, `more than ${this.limits.maxConnections} control connections`))}\n`,
      );
      socket.destroySoon?.();
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    this.connections.add(socket);
    socket.on("close", () => this.connections.delete(socket));
    socket.on("error", () => socket.destroy());
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let inFlight = 0;
    const send = (reply: ControlReply): void => {
      if (socket.destroyed) return;
      socket.write(`${JSON.stringify(reply)}\n`);
      if (socket.writableLength > this.limits.maxUnsentBytes) {
        this.options.log.warn("control connection closed: it does not read its replies");
        socket.destroy();
      }
    };
    const line = (text: string): void => {
      const parsed = parseRequestLine(text);
      if (!parsed.ok) {
        this.refusals++;
        send(parsed.reply);
        return;
      }
      const id = parsed.request.id ?? null;
      if (inFlight >= this.limits.maxInFlight) {
        this.refusals++;
        send(busyReply(id, `more than ${this.limits.maxInFlight} requests in flight on one connection`));
        return;
      }
      inFlight++;
      let handled: Promise<unknown>;
      try {
        handled = this.options.handler(parsed.request);
      } catch (err) {
        handled = Promise.reject(err);
      }
      handled
        .then(
          (result) => send(okReply(id, result)),
          (err) => send(errorReply(id, err)),
        )
        .finally(() => {
          inFlight--;
        });
    };
    socket.on("data", (chunk: Buffer) => {
      let start = 0;
      // Bounded: one pass over the chunk's bytes.
      for (;;) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl < 0) break;
        const piece = chunk.subarray(start, nl);
        if (pendingBytes + piece.length > this.limits.maxLineBytes) return this.tooLong(socket, send);
        const text =
          pendingBytes === 0 ? piece.toString("utf8") : Buffer.concat([...pending, piece]).toString("utf8");
        pending = [];
        pendingBytes = 0;
        start = nl + 1;
        if (text.trim() !== "") line(text);
        if (socket.destroyed) return;
      }
      const rest = chunk.subarray(start);
      if (rest.length === 0) return;
      if (pendingBytes + rest.length > this.limits.maxLineBytes) return this.tooLong(socket, send);
      pending.push(Buffer.from(rest));
      pendingBytes += rest.length;
    });
  }

  private tooLong(socket: Socket, send: (r: ControlReply) => void): void {
    this.refusals++;
    send(tooLongReply());
    socket.end();
    socket.pause();
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.connections) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    try {
      unlinkSync(this.options.path);
    } catch {
      // already gone
    }
  }
}
