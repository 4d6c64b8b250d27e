/**
 * The client side of USB/IP (what Linux's `usbip` tool and vhci-hcd do over
 * the socket): list a server's devices, import one, then submit URBs and
 * unlink them. Used by the usbip-remote device backend (`usbvirt attach`) and
 * by the tests. Replies are framed with the frame readers of management-pdus.ts and urb-pdus.ts, so
 * a server that breaks framing (a RET_SUBMIT for a seqnum not in flight, IN
 * data longer than asked) ends the connection, as vhci does.
 *
 * Nothing here waits forever (a server that accepts and never answers must
 * not hang `usbvirt list --remote`): connecting and every OP request are
 * bounded by `timeoutMs`. Once a device is imported, `startKeepalive` bounds
 * how long a silent server goes unnoticed. A stopped server closes the socket,
 * which is seen at once; a server that hangs, or a host that vanished behind a
 * quiet link, is not (TCP keepalive only probes after minutes of silence, and
 * an interrupt IN may rightly wait forever for data), so when nothing has
 * been heard for `intervalMs` the client sends GET_STATUS(device) on endpoint
 * 0 — a standard request every device must answer (USB 2.0 §9.4.5) that
 * changes no state — and ends the connection if the server says nothing for
 * `timeoutMs` more. Every byte from the server counts as an answer.
 *
 * Unlink contract, client's view: RET_UNLINK -ECONNRESET → the target is
 * finished as cancelled (its submit promise resolves with -ECONNRESET, and a
 * RET_SUBMIT for it afterwards is a protocol error); RET_UNLINK 0 → the
 * target's RET_SUBMIT already arrived.
 */
import { EventEmitter } from "node:events";
import { type Socket, connect as tcpConnect } from "node:net";
import { checkTlsClientOptions, connectTls, type TlsClientOptions } from "../tls/tls-settings.js";
import { encodeSetup, getDeviceStatusSetup } from "../usb/index.js";
import { ByteQueue } from "../util/byte-queue.js";
import { InvalidOptionError, registerErrorClass, UsbvirtError } from "../util/errors.js";
import { type DeviceRecord, devidOf } from "./device-record.js";
import { encodeDevlistRequest, encodeImportRequest, readOpReply } from "./management-pdus.js";
import { NON_ISO_PACKETS, OpStatus, opStatusName, USBIP_PORT } from "./protocol.js";
import {
  encodeCmdSubmit,
  encodeCmdUnlink,
  type IsoDescriptor,
  type RetSubmit,
  readServerPdu,
  type SentSubmit,
} from "./urb-pdus.js";

/** A USB/IP client failure. */
export type UsbipClientCode =
  | "ERR_USBVIRT_USBIP_CLOSED"
  | "ERR_USBVIRT_USBIP_CONNECT"
  | "ERR_USBVIRT_USBIP_DEVLIST"
  | "ERR_USBVIRT_USBIP_PROTOCOL"
  | "ERR_USBVIRT_USBIP_STATE"
  | "ERR_USBVIRT_USBIP_IMPORT"
  | "ERR_USBVIRT_USBIP_TIMEOUT";

/** A USB/IP client failure. The class owns its codes: UsbipClientCode lists every one. */
export class UsbipClientError extends UsbvirtError {
  declare readonly code: UsbipClientCode;
  constructor(code: UsbipClientCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbipClientError);

/** An import the server refused; `status` is the OP status (2 = busy, 4 = no such device). */
export class UsbipImportError extends UsbipClientError {
  constructor(
    readonly busid: string,
    readonly status: number,
  ) {
    super("ERR_USBVIRT_USBIP_IMPORT", `import of ${busid} refused: ${opStatusName(status)} (${status})`);
  }
}
registerErrorClass(UsbipImportError);

export interface SubmitRequest {
  /** Endpoint number 0..15 (no direction bit). */
  readonly ep: number;
  readonly directionIn: boolean;
  /** Bytes asked for (IN) — OUT uses data.length when absent. */
  readonly length?: number;
  readonly data?: Uint8Array;
  readonly setup?: Uint8Array;
  readonly transferFlags?: number;
  readonly interval?: number;
  readonly startFrame?: number;
  /** Iso packets (offset, length) in the transfer buffer. */
  readonly iso?: readonly { offset: number; length: number }[];
}

/** What a submit resolves with: the RET_SUBMIT, or the cancellation RET_UNLINK stood for. */
export interface SubmitResult {
  readonly status: number;
  readonly actualLength: number;
  /** IN data (iso: compacted as on the wire). */
  readonly data: Uint8Array;
  readonly iso: readonly IsoDescriptor[];
  readonly startFrame: number;
  readonly errorCount: number;
  /** True when it ended by RET_UNLINK -ECONNRESET (no RET_SUBMIT came). */
  readonly unlinked: boolean;
}

interface Pending {
  readonly sent: SentSubmit;
  readonly resolve: (r: SubmitResult) => void;
}

export interface ClientOptions {
  readonly host: string;
  readonly port?: number;
  /** Bound on connecting (with TLS: and its handshake) and on each OP request's reply (default 5000 ms). */
  readonly timeoutMs?: number;
  /** Connect with TLS: verify the server (CA and host name, or a pinned fingerprint), present a client certificate. */
  readonly tls?: TlsClientOptions;
}

export const DEFAULT_CLIENT_TIMEOUT_MS = 5000;

/** The connection ended because the server did not answer in time (connect, a request, or a keepalive probe). */
export class UsbipTimeoutError extends UsbipClientError {
  declare readonly code: "ERR_USBVIRT_USBIP_TIMEOUT";
  constructor(message: string) {
    super("ERR_USBVIRT_USBIP_TIMEOUT", message);
  }
}
registerErrorClass(UsbipTimeoutError);

/** GET_STATUS(device), two bytes back: the keepalive probe. */
const KEEPALIVE_SETUP = encodeSetup(getDeviceStatusSetup());

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

export class UsbipClient extends EventEmitter {
  private readonly queue = new ByteQueue();
  private seq = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly unlinks = new Map<number, { target: number; resolve: (status: number) => void }>();
  private opWaiter: {
    expect: "devlist" | "import";
    resolve: (v: unknown) => void;
    reject: (e: Error) => void;
  } | null = null;
  private phase: "op" | "urb" | "closed" = "op";
  private closeReason: Error | null = null;
  private opTimer: NodeJS.Timeout | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  /** performance.now() of the last bytes from the server. */
  private lastHeard = performance.now();
  /** When the outstanding keepalive probe was sent (null: none outstanding). */
  private probeSentAt: number | null = null;
  /** "HOST:PORT", for messages. */
  readonly server: string;
  private readonly timeoutMs: number;
  /** The imported device (after import()). */
  device: DeviceRecord | null = null;
  devid = 0;

  private constructor(
    readonly socket: Socket,
    options: ClientOptions,
  ) {
    super();
    this.server = `${options.host}:${options.port ?? USBIP_PORT}`;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.on("data", (chunk: Buffer) => {
      this.lastHeard = performance.now();
      this.probeSentAt = null;
      this.queue.push(chunk);
      this.pump();
    });
    socket.on("error", (err) =>
      this.fail(
        new UsbipClientError(
          "ERR_USBVIRT_USBIP_CLOSED",
          `the connection to the USB/IP server ${this.server} failed: ${err.message}`,
          { cause: err },
        ),
      ),
    );
    socket.on("close", () =>
      this.fail(
        new UsbipClientError(
          "ERR_USBVIRT_USBIP_CLOSED",
          `the USB/IP server ${this.server} closed the connection`,
        ),
      ),
    );
  }

  static connect(options: ClientOptions): Promise<UsbipClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
    checkTimeout(timeoutMs, "timeoutMs");
    const where = `${options.host}:${options.port ?? USBIP_PORT}`;
    // Checked (files read) before connecting: a wrong setting is the caller's error, not the server's.
    const tls = options.tls === undefined ? null : checkTlsClientOptions(options.tls);
    return new Promise((resolve, reject) => {
      const at = { host: options.host, port: options.port ?? USBIP_PORT };
      const socket = tls === null ? tcpConnect(at) : connectTls(at, tls);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(
          new UsbipTimeoutError(
            `could not connect to the USB/IP server ${where} within ${seconds(timeoutMs)}`,
          ),
        );
      }, timeoutMs);
      socket.once(tls === null ? "connect" : "verified", () => {
        clearTimeout(timer);
        socket.removeAllListeners("error");
        resolve(new UsbipClient(socket, options));
      });
      socket.once("error", (err) => {
        clearTimeout(timer);
        socket.destroy();
        reject(
          new UsbipClientError(
            "ERR_USBVIRT_USBIP_CONNECT",
            `cannot connect to the USB/IP server ${where}${tls === null ? "" : " with TLS"}: ${err.message}`,
            { cause: err },
          ),
        );
      });
    });
  }

  get closed(): boolean {
    return this.phase === "closed";
  }

  /** Why the connection ended (null while open). */
  get error(): Error | null {
    return this.closeReason;
  }

  /** Submits in flight. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** OP_REQ_DEVLIST on this connection (usbip closes it afterwards; so may the server). */
  async devlist(): Promise<DeviceRecord[]> {
    const reply = (await this.op("devlist", encodeDevlistRequest())) as {
      status: number;
      devices: DeviceRecord[];
    };
    if (reply.status !== OpStatus.OK) {
      throw new UsbipClientError(
        "ERR_USBVIRT_USBIP_DEVLIST",
        `the USB/IP server ${this.server} refused to list its devices: ${opStatusName(reply.status)}`,
      );
    }
    return reply.devices;
  }

  /** OP_REQ_IMPORT; on success the connection carries URBs for that device. */
  async import(busid: string): Promise<DeviceRecord> {
    const reply = (await this.op("import", encodeImportRequest(busid))) as {
      status: number;
      device: DeviceRecord | null;
    };
    if (reply.status !== OpStatus.OK || reply.device === null)
      throw new UsbipImportError(busid, reply.status);
    this.device = reply.device;
    this.devid = devidOf(reply.device);
    this.phase = "urb";
    this.pump();
    return reply.device;
  }

  private op(expect: "devlist" | "import", request: Uint8Array): Promise<unknown> {
    if (this.phase !== "op" || this.opWaiter !== null) {
      return Promise.reject(new UsbipClientError("ERR_USBVIRT_USBIP_STATE", `cannot send ${expect} now`));
    }
    const what = expect === "devlist" ? "the device list" : "the import";
    return new Promise((resolve, reject) => {
      this.opWaiter = { expect, resolve, reject };
      this.opTimer = setTimeout(
        () =>
          this.abort(
            new UsbipTimeoutError(
              `the USB/IP server ${this.server} accepted the connection but did not answer ${what} request within ${seconds(this.timeoutMs)}`,
            ),
          ),
        this.timeoutMs,
      );
      this.socket.write(request);
      this.pump();
    });
  }

  /**
   * Bound how long a silent server goes unnoticed (URB phase): after
   * `intervalMs` with nothing heard, send a GET_STATUS(device) probe; if the
   * server then says nothing for `timeoutMs` (the client's timeout), end the
   * connection with a UsbipTimeoutError. Worst case: intervalMs + timeoutMs
   * (+ one check period, intervalMs / 4).
   */
  startKeepalive(intervalMs: number): void {
    checkTimeout(intervalMs, "keepalive interval");
    if (this.phase !== "urb")
      throw new UsbipClientError("ERR_USBVIRT_USBIP_STATE", "keepalive needs an imported device");
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    const tick = Math.max(10, Math.floor(Math.min(intervalMs, this.timeoutMs) / 4));
    this.keepaliveTimer = setInterval(() => this.checkAlive(intervalMs), tick);
    this.keepaliveTimer.unref();
  }

  private checkAlive(intervalMs: number): void {
    if (this.phase !== "urb") return;
    const now = performance.now();
    if (this.probeSentAt !== null) {
      if (now - this.probeSentAt >= this.timeoutMs) {
        this.abort(
          new UsbipTimeoutError(
            `the USB/IP server ${this.server} stopped answering (nothing heard for ${seconds(Math.round(now - this.lastHeard))})`,
          ),
        );
      }
      return;
    }
    if (now - this.lastHeard < intervalMs) return;
    this.probeSentAt = now;
    // The answer itself does not matter (even a stall is an answer): any bytes reset the clock.
    void this.submit({ ep: 0, directionIn: true, length: 2, setup: KEEPALIVE_SETUP }).done;
  }

  /** End the connection with `err` as the reason (everything in flight completes with -ESHUTDOWN). */
  abort(err: Error): void {
    this.fail(err);
    this.socket.destroy();
  }

  /** Send a CMD_SUBMIT; `done` resolves with its RET_SUBMIT (or the -ECONNRESET its unlink produced). */
  submit(request: SubmitRequest): { seqnum: number; done: Promise<SubmitResult> } {
    const seqnum = this.nextSeq();
    const data = request.directionIn ? new Uint8Array(0) : (request.data ?? new Uint8Array(0));
    const length = request.length ?? data.length;
    const iso = (request.iso ?? []).map((p) => ({
      offset: p.offset,
      length: p.length,
      actualLength: 0,
      status: 0,
    }));
    const done = new Promise<SubmitResult>((resolve) => {
      if (this.phase !== "urb") {
        resolve(closedResult(-108));
        return;
      }
      this.pending.set(seqnum, {
        sent: { directionIn: request.directionIn, transferBufferLength: length },
        resolve,
      });
    });
    if (this.phase === "urb") {
      this.socket.write(
        encodeCmdSubmit({
          seqnum,
          devid: this.devid,
          directionIn: request.directionIn,
          ep: request.ep,
          transferFlags: request.transferFlags ?? 0,
          transferBufferLength: length,
          startFrame: request.startFrame ?? 0,
          numberOfPackets: iso.length > 0 ? iso.length : NON_ISO_PACKETS,
          interval: request.interval ?? 0,
          setup: request.setup ?? new Uint8Array(8),
          data,
          iso,
        }),
      );
    }
    return { seqnum, done };
  }

  /** Send a CMD_UNLINK for `target`; resolves with RET_UNLINK's status. */
  unlink(target: number): Promise<number> {
    const seqnum = this.nextSeq();
    return new Promise((resolve) => {
      if (this.phase !== "urb") {
        resolve(-108);
        return;
      }
      this.unlinks.set(seqnum, { target, resolve });
      this.socket.write(
        encodeCmdUnlink({ seqnum, devid: this.devid, directionIn: false, ep: 0, unlinkSeqnum: target }),
      );
    });
  }

  /** Write raw bytes (tests: hostile input). */
  writeRaw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  close(): void {
    this.fail(new UsbipClientError("ERR_USBVIRT_USBIP_CLOSED", "the connection was closed by this client"));
    this.socket.destroy();
  }

  /** Resolves once the socket has closed. */
  whenClosed(): Promise<void> {
    if (this.socket.destroyed && this.phase === "closed") return Promise.resolve();
    return new Promise((resolve) => this.socket.once("close", () => resolve()));
  }

  private nextSeq(): number {
    const s = this.seq;
    this.seq = (this.seq + 1) >>> 0 || 1;
    return s;
  }

  private pump(): void {
    while (this.phase !== "closed") {
      if (this.phase === "op") {
        const waiter = this.opWaiter;
        if (waiter === null) {
          if (this.queue.length > 0) this.protocolError("data from the server before any request");
          return;
        }
        const r = readOpReply(this.queue, waiter.expect);
        if (r.kind === "need") return;
        if (r.kind === "malformed") {
          this.protocolError(r.reason);
          return;
        }
        this.opWaiter = null;
        this.clearOpTimer();
        waiter.resolve(r.frame);
        return; // import() switches the phase and pumps again
      }
      const r = readServerPdu(this.queue, (seq) => this.pending.get(seq)?.sent);
      if (r.kind === "need") return;
      if (r.kind === "malformed") {
        this.protocolError(r.reason);
        return;
      }
      const pdu = r.frame;
      if (pdu.command === "ret-submit") {
        const p = this.pending.get(pdu.seqnum)!;
        this.pending.delete(pdu.seqnum);
        p.resolve(resultOf(pdu));
      } else {
        const u = this.unlinks.get(pdu.seqnum);
        if (u === undefined) {
          this.protocolError(`RET_UNLINK for seqnum ${pdu.seqnum}, which is not an unlink in flight`);
          return;
        }
        this.unlinks.delete(pdu.seqnum);
        if (pdu.status !== 0) {
          // Cancelled: no RET_SUBMIT follows for the target.
          const p = this.pending.get(u.target);
          this.pending.delete(u.target);
          p?.resolve({ ...closedResult(pdu.status), unlinked: true });
        }
        u.resolve(pdu.status);
      }
    }
  }

  private protocolError(reason: string): void {
    this.abort(
      new UsbipClientError(
        "ERR_USBVIRT_USBIP_PROTOCOL",
        `the USB/IP server ${this.server} broke the protocol: ${reason}`,
      ),
    );
  }

  private clearOpTimer(): void {
    if (this.opTimer !== null) clearTimeout(this.opTimer);
    this.opTimer = null;
  }

  private fail(err: Error): void {
    if (this.phase === "closed") return;
    this.phase = "closed";
    this.closeReason = err;
    this.clearOpTimer();
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    this.opWaiter?.reject(err);
    this.opWaiter = null;
    for (const p of this.pending.values()) p.resolve(closedResult(-108));
    this.pending.clear();
    for (const u of this.unlinks.values()) u.resolve(-108);
    this.unlinks.clear();
    this.emit("close", err);
  }
}

function closedResult(status: number): SubmitResult {
  return {
    status,
    actualLength: 0,
    data: new Uint8Array(0),
    iso: [],
    startFrame: 0,
    errorCount: 0,
    unlinked: false,
  };
}

function resultOf(r: RetSubmit): SubmitResult {
  return {
    status: r.status,
    actualLength: r.actualLength,
    data: r.data.slice(),
    iso: r.iso,
    startFrame: r.startFrame,
    errorCount: r.errorCount,
    unlinked: false,
  };
}

function checkTimeout(ms: number, what: string): void {
  if (!Number.isFinite(ms) || ms <= 0 || ms > 2 ** 31 - 1) {
    throw new InvalidOptionError(`${what} must be a positive number of milliseconds, not ${ms}`);
  }
}

/** Connect, list, disconnect (what `usbip list -r HOST` does); connect and the reply are each bounded by `timeoutMs`. */
export async function listRemote(options: ClientOptions): Promise<DeviceRecord[]> {
  const client = await UsbipClient.connect(options);
  try {
    return await client.devlist();
  } finally {
    client.close();
  }
}
