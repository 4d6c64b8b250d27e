/**
 * The usbredir usb-host: one device, redirected to a VMM (QEMU's `usb-redir` chardev, SPICE's USB
 * channel, any usbredir usb-guest) through the engine. `usbvirt redirect` is this class.
 *
 * usbvirt either listens (the VMM's chardev connects; one peer at a time holds the device, the next
 * connection gets it once the previous one's URBs drained) or connects to a VMM that listens, again
 * with backoff whenever the link drops. Per connection: both hellos, then the device is reset through
 * the engine, given its address and its first configuration, and announced (ep_info, interface_info,
 * device_connect). Every data packet becomes an engine URB in this connection's guest memory — rings,
 * grants, parse gate and port service, as an embedded VMM's — and its reply is written when the URB
 * completes:
 * - control_packet → control URB (SET_ADDRESS answered here: QEMU never forwards it; SET_CONFIGURATION
 *   and SET_INTERFACE update what ep_info says); bulk_packet → bulk URB; interrupt_packet (OUT) →
 *   interrupt URB; set_configuration / set_alt_setting → the standard requests, then ep_info (and
 *   interface_info) before the status; reset → port reset, SET_ADDRESS, the configuration restored.
 * - start_interrupt_receiving keeps one interrupt IN URB in flight and sends each report as it comes;
 *   start_iso_stream keeps `no_urbs` iso URBs of `pkts_per_urb` packets in flight (IN: one iso_packet
 *   per packet; OUT: the guest's packets are gathered into URBs).
 * - cancel_data_packet unlinks the URB: the packet is answered exactly once, `cancelled` if the unlink
 *   won, its real result if the URB completed first (the engine's one-completion rule).
 *
 * Hostile input: the reader (reader.ts) is the parse gate; anything it cannot frame ends this
 * connection with a log line, as does a data packet id reused while in flight. Per connection, every
 * resource is bounded: URBs in the engine (`maxUrbsInFlight`), guest memory (its region), unsent reply
 * bytes (`maxSendQueueBytes`, then `stalledPeerMs`), the wait for a hello (`helloTimeoutMs`) and for
 * its share of the engine (`blockedRequestMs`, then the packet is answered `inval`).
 */
import { EventEmitter } from "node:events";
import { type BlockList, createServer, connect as netConnect, type Server, type Socket } from "node:net";
import { PortStartError } from "../backend/port-link.js";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { FRAME_SIZE, type GuestOffset } from "../dma-map/types.js";
import { Connection, type ConnectionOptions } from "../engine/connection.js";
import type { IsoPacketSpec, Urb, UrbCompletion, VirtualHostController } from "../frontend/index.js";
import { isoDescriptorFrames } from "../frontend/validate.js";
import { type DeviceDescription, readDeviceDescription } from "../guest/device-description.js";
import { GuestUsbDriver } from "../guest/guest-driver.js";
import { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import {
  ECONNRESET,
  EINVAL,
  ENODEV,
  ENOENT,
  EOVERFLOW,
  EPIPE,
  ESHUTDOWN,
  ETIME,
  ETIMEDOUT,
  OK,
  type UrbStatus,
} from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import { type LogFields, stderrLogger, type UsbipLogger } from "../usbip/log.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { allowedBy, buildAllowList } from "../util/ip-prefix.js";
import { RedirDeviceModel, redirSpeedOf } from "./device-model.js";
import {
  type Caps,
  capsOf,
  dataOf,
  decodeHello,
  encodeAltSettingStatus,
  encodeBulkPacket,
  encodeBulkReceivingStatus,
  encodeBulkStreamsStatus,
  encodeControlPacket,
  encodeDeviceConnect,
  encodeEmpty,
  encodeEpInfo,
  encodeHello,
  encodeInterfaceInfo,
  encodeSmallDataPacket,
  encodeStatusPair,
  hasCap,
  ID_ZERO,
  type Id,
  type Negotiated,
  negotiate,
  RedirCap,
  RedirEpType,
  type RedirPacket,
  RedirStatus,
  RedirType,
  redirTypeName,
} from "./protocol.js";
import { type Admission, BLOCK, RedirReader, type RedirReaderSink } from "./reader.js";

export class UsbredirServerError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_USBREDIR_OPTIONS" | "ERR_USBVIRT_USBREDIR_DEVICE";
  constructor(code: UsbredirServerError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbredirServerError);

export interface UsbredirEndpoint {
  readonly host: string;
  readonly port: number;
}

export interface UsbredirServerOptions {
  /** The device to redirect (what `serve --device` takes). */
  readonly device: DeviceSpec;
  /** Listen here for the VMM (host default 127.0.0.1). Exactly one of listen, listenFd and connect. */
  readonly listen?: { readonly host?: string; readonly port: number };
  /** Listen on this already-listening socket (systemd socket activation). */
  readonly listenFd?: number;
  /** Connect to a VMM that listens (QEMU `-chardev socket,server=on`); reconnects with backoff. */
  readonly connect?: UsbredirEndpoint;
  /** First and longest wait between connection attempts in connect mode (default 250 ms, 10 s). */
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
  readonly logger?: UsbipLogger;
  /** Listen mode: peer addresses or CIDR subnets allowed (absent or empty: any). */
  readonly allow?: readonly string[];
  /** URBs one connection may have in the engine at once (default 128). */
  readonly maxUrbsInFlight?: number;
  /** Unsent reply bytes above which no new packet is started (default 16 MiB). */
  readonly maxSendQueueBytes?: number;
  /** ... and the peer is dropped if it does not read for this long (default 30 s). */
  readonly stalledPeerMs?: number;
  /** A peer that has not sent its hello this long after connecting is dropped (default 30 s; 0: never). */
  readonly helloTimeoutMs?: number;
  /** A packet that waits this long for its share of the engine while nothing completes is answered inval (default 2 s). */
  readonly blockedRequestMs?: number;
  /** Guest memory for URB buffers, MiB (default 16, at least 8). */
  readonly guestMemoryMiB?: number;
  /** Our hello's version string (default "usbvirt"). */
  readonly version?: string;
  /** Extra engine options (tests). */
  readonly connection?: Omit<ConnectionOptions, "ports" | "memory">;
}

/** What we advertise: what QEMU's xHCI needs (64-bit ids, 32-bit bulk lengths, ep_info packet sizes) and the rest we implement. */
export const HOST_CAPS: Caps = capsOf(
  RedirCap.CONNECT_DEVICE_VERSION,
  RedirCap.FILTER,
  RedirCap.DEVICE_DISCONNECT_ACK,
  RedirCap.EP_INFO_MAX_PACKET_SIZE,
  RedirCap.IDS_64BIT,
  RedirCap.BULK_LENGTH_32BIT,
);

const PORT = 1 as PortNum;
const ADDRESS = 1 as DevAddr;
const DRIVER_FRAMES = 16;
const SCRATCH_FRAMES = 64;
/** Interrupt IN URBs kept in flight per receiving endpoint: one, so reports leave in order. */
const INTERRUPT_URBS = 1;
const MAX_ISO_PKTS_PER_URB = 32;
const MAX_ISO_URBS = 16;
/** Iso OUT packets buffered beyond what the stream's URBs hold are dropped (QEMU expects no reply). */
const ISO_OUT_BACKLOG_URBS = 2;

/** Engine status → usbredir status (QEMU maps everything but success, stall and babble to an I/O error). */
export function redirStatusOf(status: number): RedirStatus {
  switch (status) {
    case OK:
      return RedirStatus.SUCCESS;
    case ECONNRESET:
    case ENOENT:
      return RedirStatus.CANCELLED;
    case EPIPE:
      return RedirStatus.STALL;
    case ETIMEDOUT:
    case ETIME:
      return RedirStatus.TIMEOUT;
    case EOVERFLOW:
      return RedirStatus.BABBLE;
    case EINVAL:
      return RedirStatus.INVAL;
    default:
      return RedirStatus.IOERROR;
  }
}

/** A data packet's id as a map key: exact for ids below 2^53, a string above. */
function idKey(low: number, high: number): number | string {
  return high < 0x200000 ? high * 0x1_0000_0000 + low : `${high}:${low}`;
}

function hex(n: number, width = 2): string {
  return `0x${n.toString(16).padStart(width, "0")}`;
}

/** A data packet from the guest, from admission until its reply is written. */
interface Pending {
  readonly type: number;
  readonly id: Id;
  readonly key: number | string;
  readonly endpoint: number;
  readonly directionIn: boolean;
  /** Its buffer in guest memory (length 0: none). */
  offset: number;
  length: number;
  /** Control fields, echoed in the reply. */
  request: number;
  requestType: number;
  value: number;
  index: number;
  /** Answered here without the engine (bad endpoint, SET_ADDRESS, …). */
  verdict: RedirStatus | null;
  urb: Urb | null;
  cancelled: boolean;
}

interface InterruptStream {
  readonly endpoint: number;
  readonly maxPacketSize: number;
  running: boolean;
  /** Its URBs in the engine (unlinked when it stops). */
  readonly urbs: Urb[];
  /** Ids of the unsolicited interrupt_packets, counting up (QEMU ignores them). */
  nextId: number;
}

interface IsoStream {
  readonly endpoint: number;
  readonly directionIn: boolean;
  readonly pktsPerUrb: number;
  readonly noUrbs: number;
  readonly maxPacketSize: number;
  readonly interval: number;
  running: boolean;
  readonly urbs: Urb[];
  nextId: number;
  /** OUT: packets gathered for the next URB. */
  out: Uint8Array[];
  dropped: number;
}

class Session implements RedirReaderSink {
  readonly reader: RedirReader;
  negotiated: Negotiated | null = null;
  peerVersion = "";
  closed = false;
  /** device_connect sent and not since disconnected. */
  announced = false;
  /** Device-state requests (set/get configuration and alt, reset) run one after another. */
  chain: Promise<void> = Promise.resolve();
  readonly inflight = new Map<number | string, Pending>();
  readonly interrupt = new Map<number, InterruptStream>();
  readonly iso = new Map<number, IsoStream>();
  /** The transfer admit() accepted whose data is arriving; deliver() starts it. */
  current: Pending | null = null;
  /** URBs of this connection in the engine, and scratch frames their iso descriptors hold. */
  urbs = 0;
  isoFrames = 0;
  helloTimer: NodeJS.Timeout | null = null;
  stallTimer: NodeJS.Timeout | null = null;
  blockTimer: NodeJS.Timeout | null = null;
  /** Set when a blocked packet waited too long: admit it with an inval answer. */
  forced = false;
  paused = false;
  corked = false;
  onDrained: (() => void) | null = null;
  /** Counters for stats and the log. */
  packets = 0;
  bytesIn = 0;
  bytesOut = 0;

  constructor(
    readonly server: UsbredirServer,
    readonly socket: Socket,
    readonly peer: string,
  ) {
    this.reader = new RedirReader("guest", this);
  }

  fields(): LogFields {
    return { client: this.peer };
  }

  admit(p: RedirPacket, _typeHeader: Uint8Array): Admission {
    return this.server.admit(this, p);
  }
  deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    this.server.deliver(this, p, typeHeader, data);
  }
  malformed(reason: string): void {
    this.server.drop(this, reason);
  }

  /** Queue a packet; one turn's packets leave in one write (cork until the next tick). */
  send(pkt: Uint8Array): void {
    if (this.closed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(pkt);
  }
}

export class UsbredirServer extends EventEmitter {
  private readonly log: UsbipLogger;
  private readonly hcd: VirtualHostController;
  private readonly memory: GuestBufferAllocator;
  private readonly memoryBytes: Uint8Array;
  private readonly regionBytes: number;
  private readonly allow: BlockList | null;
  private readonly maxUrbs: number;
  private readonly maxSendQueue: number;
  private readonly stalledMs: number;
  private readonly helloMs: number;
  private readonly blockedMs: number;
  private readonly version: string;
  private readonly model: RedirDeviceModel;
  private listener: Server | null = null;
  private session: Session | null = null;
  private readonly sessions = new Set<Session>();
  /** Resolves once the previous holder's URBs all came back. */
  private draining: Promise<void> = Promise.resolve();
  private failed: string | null = null;
  private closing: Promise<void> | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectDelay: number;
  private readonly counters = { connections: 0, urbs: 0, bytes: 0 };

  private constructor(
    readonly connection: Connection,
    private readonly guest: GuestUsbDriver,
    readonly name: string,
    description: DeviceDescription,
    private readonly options: UsbredirServerOptions,
  ) {
    super();
    this.hcd = connection.frontend!;
    const shared = connection.handles.memory[0]!;
    this.memoryBytes = new Uint8Array(shared);
    const first = (1 + DRIVER_FRAMES) * FRAME_SIZE;
    const end = connection.handles.scratchFirstFrame * FRAME_SIZE;
    this.memory = new GuestBufferAllocator(first, end);
    this.regionBytes = end - first;
    this.log = options.logger ?? stderrLogger;
    this.allow = buildAllowList(
      options.allow,
      (reason) => new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", reason),
    );
    this.maxUrbs = options.maxUrbsInFlight ?? 128;
    this.maxSendQueue = options.maxSendQueueBytes ?? 16 * 1024 * 1024;
    this.stalledMs = options.stalledPeerMs ?? 30_000;
    this.helloMs = options.helloTimeoutMs ?? 30_000;
    this.blockedMs = options.blockedRequestMs ?? 2000;
    this.version = options.version ?? "usbvirt";
    this.reconnectDelay = options.reconnectMinMs ?? 250;
    this.model = new RedirDeviceModel(description, redirSpeedOf(this.hcd.portStatus(PORT).speed));
    connection.on("port-failed", (_port: number, reason: string, gone: boolean) => {
      this.failed = reason;
      this.log.error(`${this.name} ${gone ? "went away" : "failed"}: ${reason}`);
      const s = this.session;
      if (s?.announced && s.negotiated !== null) {
        s.announced = false;
        s.send(encodeEmpty(s.negotiated, RedirType.DEVICE_DISCONNECT));
      }
    });
  }

  /** Bring up the engine, attach and describe the device, then listen or connect. */
  static async start(options: UsbredirServerOptions): Promise<UsbredirServer> {
    const modes = [options.listen, options.listenFd, options.connect].filter((m) => m !== undefined).length;
    if (modes !== 1) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        "give exactly one of listen, listenFd and connect",
      );
    }
    buildAllowList(
      options.allow,
      (reason) => new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", reason),
    );
    const mib = options.guestMemoryMiB ?? 16;
    if (!Number.isInteger(mib) || mib < 8 || mib > 1024) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        `options.guestMemoryMiB must be an integer in [8, 1024], got ${mib}`,
      );
    }
    for (const key of [
      "maxUrbsInFlight",
      "maxSendQueueBytes",
      "stalledPeerMs",
      "blockedRequestMs",
      "reconnectMinMs",
      "reconnectMaxMs",
    ] as const) {
      const v = options[key];
      if (v !== undefined && (!Number.isInteger(v) || v < 1)) {
        throw new UsbredirServerError(
          "ERR_USBVIRT_USBREDIR_OPTIONS",
          `options.${key} must be a positive integer, got ${v}`,
        );
      }
    }
    const hello = options.helloTimeoutMs;
    if (hello !== undefined && (!Number.isInteger(hello) || hello < 0)) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        `options.helloTimeoutMs must be a non-negative integer, got ${hello}`,
      );
    }
    const connection = await Connection.create({
      backendThread: "shared",
      ...options.connection,
      ports: 1,
      memory: (mib * 1024 * 1024) / FRAME_SIZE,
      grantEntries: 4096,
      scratchFrames: SCRATCH_FRAMES,
    });
    try {
      let summary: Awaited<ReturnType<Connection["attach"]>>;
      try {
        summary = await connection.attach(PORT, options.device);
      } catch (err) {
        const why = err instanceof PortStartError && err.cause instanceof Error ? err.cause : (err as Error);
        throw new UsbredirServerError(
          "ERR_USBVIRT_USBREDIR_DEVICE",
          `cannot redirect ${describeSpec(options.device)}: ${why.message}`,
          { cause: err },
        );
      }
      const guest = new GuestUsbDriver(connection.frontend!, connection.handles);
      const description = await readDeviceDescription(guest, PORT);
      const name = `${summary.name} ${hex(description.vendorId, 4).slice(2)}:${hex(description.productId, 4).slice(2)}`;
      const self = new UsbredirServer(connection, guest, name, description, options);
      if (options.connect !== undefined) self.dial();
      else await self.listen();
      return self;
    } catch (err) {
      await connection.close().catch(() => undefined);
      throw err;
    }
  }

  /** Where the server listens (listen mode). */
  get address(): { host: string; port: number } | null {
    const a = this.listener?.address();
    if (a === null || a === undefined || typeof a === "string") return null;
    return { host: a.address, port: a.port };
  }

  /** The connection that holds the device now, and what it has in the engine. */
  stats(): {
    peer: string | null;
    announced: boolean;
    urbs: number;
    memoryBytes: number;
    unsentBytes: number;
    connections: number;
    packets: number;
    failed: string | null;
  } {
    const s = this.session;
    return {
      peer: s?.peer ?? null,
      announced: s?.announced ?? false,
      urbs: s?.urbs ?? 0,
      memoryBytes: this.regionBytes - this.memory.freeBytes,
      unsentBytes: s?.socket.writableLength ?? 0,
      connections: this.counters.connections,
      packets: s?.packets ?? 0,
      failed: this.failed,
    };
  }

  // ---------------------------------------------------------------- connections

  private async listen(): Promise<void> {
    const server = createServer({ noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
    this.listener = server;
    server.on("connection", (socket) => {
      const peer = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
      if (this.closing !== null) {
        socket.destroy();
        return;
      }
      if (this.allow !== null && !allowedBy(this.allow, socket.remoteAddress)) {
        this.log.warn(`${peer}: refused, not in the allowlist`, { client: peer });
        socket.destroy();
        return;
      }
      if (this.session !== null) {
        this.log.warn(`${peer}: refused, ${this.name} is redirected to ${this.session.peer}`, {
          client: peer,
        });
        socket.destroy();
        return;
      }
      this.open(socket, peer);
    });
    const o = this.options;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      const done = () => {
        server.off("error", reject);
        resolve();
      };
      if (o.listenFd !== undefined) server.listen({ fd: o.listenFd }, done);
      else server.listen(o.listen!.port, o.listen!.host ?? "127.0.0.1", done);
    });
    server.on("error", (err) => this.log.error(`listener: ${String(err)}`));
  }

  /** Connect mode: one attempt now; on failure or when the link drops, again after a backoff. */
  private dial(): void {
    if (this.closing !== null) return;
    const { host, port } = this.options.connect!;
    const peer = `${host}:${port}`;
    const socket = netConnect({ host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
    let opened = false;
    socket.once("connect", () => {
      opened = true;
      this.log.info(`connected to ${peer}`, { client: peer });
      this.open(socket, peer);
    });
    socket.once("error", (err) => {
      if (opened) return;
      this.log.warn(`cannot connect to ${peer}: ${err.message}; again in ${this.reconnectDelay} ms`, {
        client: peer,
      });
      socket.destroy();
      this.redial();
    });
  }

  private redial(): void {
    if (this.closing !== null || this.reconnectTimer !== null) return;
    const delay = this.reconnectDelay;
    this.reconnectDelay = Math.min(delay * 2, this.options.reconnectMaxMs ?? 10_000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.dial();
    }, delay);
  }

  private open(socket: Socket, peer: string): void {
    const s = new Session(this, socket, peer);
    this.session = s;
    this.sessions.add(s);
    this.counters.connections++;
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => {
      if (s.closed) return;
      s.bytesIn += chunk.length;
      this.hcd.batch(() => s.reader.push(chunk));
      this.updateFlow(s);
    });
    socket.on("drain", () => this.written(s));
    socket.on("error", (err) => {
      if (!s.closed) this.log.warn(`${peer}: socket error: ${err.message}`, s.fields());
    });
    socket.on("close", () => {
      const cut = s.reader.partialBytes;
      const partial = cut > 0 ? ` with ${cut} bytes of an incomplete packet` : "";
      this.end(s, `peer closed the connection${partial}`, partial === "" ? "info" : "warn");
    });
    s.send(encodeHello(this.version, HOST_CAPS));
    if (this.helloMs > 0) {
      s.helloTimer = setTimeout(() => {
        s.helloTimer = null;
        if (s.negotiated === null) this.drop(s, `no hello within ${this.helloMs} ms`);
      }, this.helloMs);
    }
  }

  // ---------------------------------------------------------------- packets in

  /** The reader has a sound packet header: decide where its data goes, or stop reading here. */
  admit(s: Session, p: RedirPacket): Admission {
    s.current = null;
    switch (p.type) {
      case RedirType.CONTROL_PACKET:
      case RedirType.BULK_PACKET:
      case RedirType.INTERRUPT_PACKET:
        return this.admitTransfer(s, p);
      default:
        return null;
    }
  }

  private admitTransfer(s: Session, p: RedirPacket): Admission {
    const key = idKey(p.idLow, p.idHigh);
    const interruptOut = p.type === RedirType.INTERRUPT_PACKET;
    // QEMU completes an interrupt OUT at once and may reuse its id: those are not tracked by id.
    if (!interruptOut && s.inflight.has(key)) {
      this.drop(s, `${redirTypeName(p.type)} id ${p.idHigh}:${p.idLow} is already in flight`);
      return null;
    }
    const directionIn = (p.endpoint & 0x80) !== 0;
    const r: Pending = {
      type: p.type,
      id: { low: p.idLow, high: p.idHigh },
      key,
      endpoint: p.endpoint,
      directionIn,
      offset: 0,
      length: 0,
      request: p.request,
      requestType: p.requestType,
      value: p.value,
      index: p.index,
      verdict: null,
      urb: null,
      cancelled: false,
    };
    s.current = r;
    if (s.forced) {
      s.forced = false;
      r.verdict = RedirStatus.INVAL;
      return null;
    }
    const problem = this.transferProblem(s, p, directionIn);
    if (problem !== null) {
      this.log.warn(`${s.peer}: ${redirTypeName(p.type)} refused: ${problem}`, s.fields());
      r.verdict = RedirStatus.INVAL;
      return null;
    }
    if (s.socket.writableLength > this.maxSendQueue) return this.block(s);
    if (s.urbs >= this.maxUrbs) return this.block(s);
    const length = p.length;
    if (length > 0) {
      const range = this.memory.tryAllocate(length, length >= FRAME_SIZE ? FRAME_SIZE : 64);
      if (range === null) return this.block(s);
      r.offset = range.offset;
      r.length = length;
    }
    s.urbs++;
    if (!interruptOut) s.inflight.set(key, r);
    return directionIn || length === 0 ? null : this.memoryBytes.subarray(r.offset, r.offset + length);
  }

  /** Why a well-framed transfer cannot go to the device as it stands, or null. */
  private transferProblem(s: Session, p: RedirPacket, directionIn: boolean): string | null {
    if (!s.announced) return "no device is connected";
    if (p.length > this.regionBytes)
      return `${p.length} bytes exceed the ${this.regionBytes}-byte buffer region`;
    if (p.type === RedirType.CONTROL_PACKET) {
      if ((p.endpoint & 0x7f) !== 0) return `control packet for endpoint ${hex(p.endpoint)}`;
      if (((p.requestType & 0x80) !== 0) !== directionIn)
        return "endpoint direction differs from bmRequestType";
      return null;
    }
    const ep = this.model.endpoint(p.endpoint);
    const want = p.type === RedirType.BULK_PACKET ? RedirEpType.BULK : RedirEpType.INTERRUPT;
    if (ep === undefined || ep.type !== want) {
      return `endpoint ${hex(p.endpoint)} is not a ${want === RedirEpType.BULK ? "bulk" : "interrupt"} endpoint of the active settings`;
    }
    if (p.type === RedirType.BULK_PACKET && p.streamId !== 0) return "bulk streams are not supported";
    if (p.type === RedirType.INTERRUPT_PACKET && directionIn) {
      return "interrupt IN is received with start_interrupt_receiving, not requested";
    }
    return null;
  }

  /** Stop reading at this packet until something of the connection's share comes back. */
  private block(s: Session): Admission {
    s.current = null;
    if (s.blockTimer === null) {
      s.blockTimer = setTimeout(() => {
        s.blockTimer = null;
        if (s.closed || !s.reader.isBlocked) return;
        this.log.warn(
          `${s.peer}: a packet waited ${this.blockedMs} ms for its share of the engine (${s.urbs} URBs, ` +
            `${this.regionBytes - this.memory.freeBytes} bytes of guest memory in use): answered inval`,
          s.fields(),
        );
        s.forced = true;
        this.progress(s);
      }, this.blockedMs);
    }
    return BLOCK;
  }

  /** A whole packet from the guest. */
  deliver(s: Session, p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    if (s.closed) return;
    s.packets++;
    if (p.type === RedirType.HELLO) {
      this.hello(s, typeHeader, data);
      return;
    }
    const n = s.negotiated!;
    const id: Id = { low: p.idLow, high: p.idHigh };
    switch (p.type) {
      case RedirType.CONTROL_PACKET:
      case RedirType.BULK_PACKET:
      case RedirType.INTERRUPT_PACKET: {
        const r = s.current!;
        s.current = null;
        this.startTransfer(s, r);
        return;
      }
      case RedirType.SET_CONFIGURATION: {
        const value = p.configuration;
        this.serialize(s, () => this.setConfiguration(s, id, value));
        return;
      }
      case RedirType.GET_CONFIGURATION:
        this.serialize(s, async () => {
          s.send(
            encodeStatusPair(
              n,
              RedirType.CONFIGURATION_STATUS,
              id,
              RedirStatus.SUCCESS,
              this.model.configuration,
            ),
          );
        });
        return;
      case RedirType.SET_ALT_SETTING: {
        const { interface: itf, alt } = p;
        this.serialize(s, () => this.setAlternate(s, id, itf, alt));
        return;
      }
      case RedirType.GET_ALT_SETTING: {
        const itf = p.interface;
        this.serialize(s, async () => {
          const alt = this.model.alternates.get(itf);
          s.send(
            encodeAltSettingStatus(
              n,
              id,
              alt === undefined ? RedirStatus.INVAL : RedirStatus.SUCCESS,
              itf,
              alt ?? 0xff,
            ),
          );
        });
        return;
      }
      case RedirType.RESET:
        this.serialize(s, () => this.reset(s));
        return;
      case RedirType.CANCEL_DATA_PACKET:
        this.cancel(s, idKey(p.idLow, p.idHigh));
        return;
      case RedirType.START_INTERRUPT_RECEIVING:
        this.startInterrupt(s, id, p.endpoint);
        return;
      case RedirType.STOP_INTERRUPT_RECEIVING:
        this.stopInterrupt(s, p.endpoint);
        // As for start: QEMU's parser refuses an interrupt_receiving_status for an OUT endpoint.
        if ((p.endpoint & 0x80) !== 0) {
          s.send(
            encodeStatusPair(n, RedirType.INTERRUPT_RECEIVING_STATUS, id, RedirStatus.SUCCESS, p.endpoint),
          );
        }
        return;
      case RedirType.START_ISO_STREAM:
        this.startIso(s, id, p.endpoint, p.pktsPerUrb, p.noUrbs);
        return;
      case RedirType.STOP_ISO_STREAM:
        this.stopIso(s, p.endpoint);
        s.send(encodeStatusPair(n, RedirType.ISO_STREAM_STATUS, id, RedirStatus.SUCCESS, p.endpoint));
        return;
      case RedirType.ISO_PACKET:
        this.isoOut(s, p, data);
        return;
      case RedirType.ALLOC_BULK_STREAMS:
      case RedirType.FREE_BULK_STREAMS:
        this.log.warn(`${s.peer}: ${redirTypeName(p.type)}: bulk streams are not supported`, s.fields());
        s.send(encodeBulkStreamsStatus(n, id, p.endpoints, 0, RedirStatus.INVAL));
        return;
      case RedirType.START_BULK_RECEIVING:
      case RedirType.STOP_BULK_RECEIVING:
        this.log.warn(
          `${s.peer}: ${redirTypeName(p.type)}: buffered bulk input is not supported`,
          s.fields(),
        );
        // QEMU's parser refuses a bulk_receiving_status for an OUT endpoint: answer IN ones only.
        if ((p.endpoint & 0x80) !== 0) {
          s.send(encodeBulkReceivingStatus(n, id, p.streamId, p.endpoint, RedirStatus.INVAL));
        }
        return;
      case RedirType.FILTER_FILTER:
        this.filter(s, data);
        return;
      case RedirType.FILTER_REJECT:
        this.log.error(
          `${s.peer}: the VMM refused ${this.name} (its filter, speed or missing capabilities); ` +
            "it is offered again on the next connection",
          s.fields(),
        );
        s.announced = false;
        return;
      case RedirType.DEVICE_DISCONNECT_ACK:
        return;
      default:
        return;
    }
  }

  private hello(s: Session, typeHeader: Uint8Array, data: Uint8Array): void {
    const { version, caps } = decodeHello(typeHeader, data);
    const n = negotiate(HOST_CAPS, caps);
    s.negotiated = n;
    s.peerVersion = version;
    s.reader.setNegotiated(n);
    if (s.helloTimer !== null) clearTimeout(s.helloTimer);
    s.helloTimer = null;
    this.reconnectDelay = this.options.reconnectMinMs ?? 250;
    this.log.info(
      `${s.peer}: usbredir peer "${version}" (caps ${hex(caps)}, ${n.headerSize === 16 ? "64" : "32"}-bit ids)`,
      s.fields(),
    );
    this.serialize(s, () => this.announce(s));
  }

  /** Device-state requests run in order, after the previous holder's URBs drained. */
  private serialize(s: Session, step: () => Promise<void>): void {
    s.chain = s.chain
      .then(async () => {
        if (!s.closed) await step();
      })
      .catch((err: unknown) => {
        if (!s.closed) this.drop(s, `device request failed: ${(err as Error).message}`);
      });
  }

  /** Reset, address and configure the device through the engine, then tell the guest about it. */
  private async announce(s: Session): Promise<void> {
    await this.draining;
    if (s.closed) return;
    if (this.failed !== null) {
      this.log.warn(
        `${s.peer}: ${this.name} is not available (${this.failed}); nothing to announce`,
        s.fields(),
      );
      return;
    }
    const first = this.model.description.configurations[0]?.value ?? 0;
    await this.resetAndAddress();
    if (first !== 0) await this.standardRequest(0x00, 9, first, 0);
    this.model.configure(first);
    const n = s.negotiated!;
    s.send(encodeEpInfo(n, this.model.endpoints));
    s.send(encodeInterfaceInfo(n, this.model.interfaces));
    s.send(encodeDeviceConnect(n, this.model.connectInfo));
    s.announced = true;
    this.log.info(`${s.peer}: redirected ${this.name}`, s.fields());
    this.emit("connect", s.peer);
  }

  private async resetAndAddress(): Promise<void> {
    if (!this.hcd.portStatus(PORT).connected) throw new Error(`${this.name} is not connected`);
    await this.hcd.resetPort(PORT);
    await this.guest.control(
      PORT,
      0 as DevAddr,
      { bmRequestType: 0x00, bRequest: 5, wValue: ADDRESS, wIndex: 0, wLength: 0 },
      undefined,
      "SET_ADDRESS",
    );
  }

  /** A no-data standard request through the engine; resolves with its status. */
  private async standardRequest(
    type: number,
    request: number,
    value: number,
    index: number,
  ): Promise<UrbStatus> {
    const c = await this.hcd.submit({
      type: "control",
      port: PORT,
      device: ADDRESS,
      endpoint: 0 as EndpointNum,
      directionIn: false,
      setup: { bmRequestType: type, bRequest: request, wValue: value, wIndex: index, wLength: 0 },
      buffer: [],
    });
    return c.status;
  }

  private async setConfiguration(s: Session, id: Id, value: number): Promise<void> {
    const n = s.negotiated!;
    let status: RedirStatus = RedirStatus.INVAL;
    if (s.announced && this.model.hasConfiguration(value)) {
      this.stopStreams(s);
      status = redirStatusOf(await this.standardRequest(0x00, 9, value, 0));
      if (s.closed) return;
      if (status === RedirStatus.SUCCESS) this.applyConfiguration(s, value);
    }
    s.send(encodeStatusPair(n, RedirType.CONFIGURATION_STATUS, id, status, this.model.configuration));
  }

  /** The configuration changed (or was set again): the guest hears the new endpoints before the status. */
  private applyConfiguration(s: Session, value: number): void {
    const changed = value !== this.model.configuration;
    this.model.configure(value);
    if (changed) {
      s.send(encodeEpInfo(s.negotiated!, this.model.endpoints));
      s.send(encodeInterfaceInfo(s.negotiated!, this.model.interfaces));
    }
  }

  private async setAlternate(s: Session, id: Id, itf: number, alt: number): Promise<void> {
    const n = s.negotiated!;
    let status: RedirStatus = RedirStatus.INVAL;
    if (s.announced && this.model.findInterface(itf, alt) !== undefined) {
      this.stopStreams(s);
      status = redirStatusOf(await this.standardRequest(0x01, 11, alt, itf));
      if (s.closed) return;
      if (status === RedirStatus.SUCCESS) this.applyAlternate(s, itf, alt);
    }
    s.send(encodeAltSettingStatus(n, id, status, itf, this.model.alternates.get(itf) ?? alt));
  }

  private applyAlternate(s: Session, itf: number, alt: number): void {
    this.model.selectAlternate(itf, alt);
    s.send(encodeEpInfo(s.negotiated!, this.model.endpoints));
  }

  /** The guest reset the port: cancel what is in flight, reset in the engine, keep the configuration. */
  private async reset(s: Session): Promise<void> {
    if (!s.announced) return;
    this.stopStreams(s);
    for (const r of s.inflight.values()) if (r.urb !== null) void this.hcd.unlink(r.urb);
    const configuration = this.model.configuration;
    const alternates = [...this.model.alternates].some(([, alt]) => alt !== 0);
    try {
      await this.resetAndAddress();
      if (configuration !== 0) {
        const status = await this.standardRequest(0x00, 9, configuration, 0);
        if (status !== OK) throw new Error(`SET_CONFIGURATION(${configuration}) after reset: ${status}`);
      }
    } catch (err) {
      this.log.error(`${s.peer}: reset of ${this.name} failed: ${(err as Error).message}`, s.fields());
      if (s.announced && !s.closed) {
        s.announced = false;
        s.send(encodeEmpty(s.negotiated!, RedirType.DEVICE_DISCONNECT));
      }
      return;
    }
    this.model.configure(configuration);
    if (alternates && !s.closed) s.send(encodeEpInfo(s.negotiated!, this.model.endpoints));
  }

  private filter(s: Session, data: Uint8Array): void {
    const nul = data.indexOf(0);
    if (nul !== data.length - 1) {
      this.drop(s, "filter_filter string is not NUL-terminated where its length says");
      return;
    }
    const rules = Buffer.from(data.subarray(0, nul)).toString("latin1");
    this.log.info(`${s.peer}: the VMM's device filter is "${rules}"`, s.fields());
  }

  // ---------------------------------------------------------------- transfers

  private startTransfer(s: Session, r: Pending): void {
    if (r.verdict !== null) {
      this.reply(s, r, r.verdict, 0);
      return;
    }
    const base = {
      port: PORT,
      device: ADDRESS,
      endpoint: (r.endpoint & 0x0f) as EndpointNum,
      directionIn: r.directionIn,
      buffer: r.length > 0 ? [{ offset: r.offset as GuestOffset, length: r.length }] : [],
    };
    let urb: Urb;
    if (r.type === RedirType.CONTROL_PACKET) {
      if (r.requestType === 0x00 && r.request === 5) {
        // SET_ADDRESS: the VMM's own business (QEMU never forwards it); the device keeps ours.
        this.complete(s, r, { status: OK, actualLength: 0, startFrame: 0, errorCount: 0 });
        return;
      }
      urb = {
        ...base,
        type: "control",
        setup: {
          bmRequestType: r.requestType,
          bRequest: r.request,
          wValue: r.value,
          wIndex: r.index,
          wLength: r.length,
        },
      };
    } else if (r.type === RedirType.BULK_PACKET) {
      urb = { ...base, type: "bulk" };
    } else {
      const ep = this.model.endpoint(r.endpoint);
      urb = { ...base, type: "interrupt", interval: Math.max(1, ep?.interval ?? 1) };
    }
    r.urb = urb;
    this.counters.urbs++;
    this.hcd.submitWithCallback(urb, (c) => this.complete(s, r, c));
  }

  /** An engine URB of a data packet completed: exactly one reply (cancelled if its cancel won). */
  private complete(s: Session, r: Pending, c: UrbCompletion): void {
    s.urbs--;
    r.urb = null;
    if (s.inflight.get(r.key) === r) s.inflight.delete(r.key);
    if (!s.closed) {
      if (c.status === OK && r.type === RedirType.CONTROL_PACKET) this.noteStandardRequest(s, r);
      const status =
        r.cancelled && (c.status === ECONNRESET || c.status === ENOENT)
          ? RedirStatus.CANCELLED
          : redirStatusOf(c.status);
      this.reply(s, r, status, status === RedirStatus.CANCELLED ? 0 : Math.min(c.actualLength, r.length));
      if (c.status === ENODEV || c.status === ESHUTDOWN) this.deviceLost(s, c);
    }
    if (r.length > 0) this.memory.release({ offset: r.offset as GuestOffset, length: r.length });
    r.length = 0;
    this.settled(s);
  }

  /** A raw SET_CONFIGURATION or SET_INTERFACE in a control packet changed what ep_info says. */
  private noteStandardRequest(s: Session, r: Pending): void {
    if (r.requestType === 0x00 && r.request === 9) this.applyConfiguration(s, r.value & 0xff);
    else if (r.requestType === 0x01 && r.request === 11)
      this.applyAlternate(s, r.index & 0xff, r.value & 0xff);
  }

  /** The data packet's reply: same type, id and endpoint; IN data from guest memory. */
  private reply(s: Session, r: Pending, status: RedirStatus, actual: number): void {
    const n = s.negotiated!;
    const data = r.directionIn ? actual : 0;
    let pkt: Buffer;
    let headerLength: number;
    if (r.type === RedirType.CONTROL_PACKET) {
      pkt = encodeControlPacket(
        n,
        r.id,
        {
          endpoint: r.endpoint,
          request: r.request,
          requestType: r.requestType,
          status,
          value: r.value,
          index: r.index,
          length: actual,
        },
        data,
      );
      headerLength = 10;
    } else if (r.type === RedirType.BULK_PACKET) {
      pkt = encodeBulkPacket(n, r.id, r.endpoint, status, actual, data);
      headerLength = hasCap(n.caps, RedirCap.BULK_LENGTH_32BIT) ? 10 : 8;
    } else {
      pkt = encodeSmallDataPacket(n, RedirType.INTERRUPT_PACKET, r.id, r.endpoint, status, actual, 0);
      headerLength = 4;
    }
    if (data > 0) dataOf(n, pkt, headerLength).set(this.memoryBytes.subarray(r.offset, r.offset + data));
    s.bytesOut += data;
    this.counters.bytes += data;
    s.send(pkt);
  }

  private cancel(s: Session, key: number | string): void {
    const r = s.inflight.get(key);
    if (r === undefined || r.cancelled) return; // already answered (its reply is ahead of the cancel)
    r.cancelled = true;
    if (r.urb !== null) void this.hcd.unlink(r.urb);
  }

  /** The device went away under a URB: tell the guest once; the engine reports the port as failed. */
  private deviceLost(s: Session, c: UrbCompletion): void {
    if (!s.announced || this.hcd.portStatus(PORT).connected) return;
    s.announced = false;
    this.log.error(`${s.peer}: ${this.name} is gone (${c.detail ?? c.status})`, s.fields());
    s.send(encodeEmpty(s.negotiated!, RedirType.DEVICE_DISCONNECT));
  }

  // ---------------------------------------------------------------- interrupt and iso streams

  private startInterrupt(s: Session, id: Id, endpoint: number): void {
    const n = s.negotiated!;
    const ep = this.model.endpoint(endpoint);
    if (!s.announced || ep === undefined || ep.type !== RedirEpType.INTERRUPT || (endpoint & 0x80) === 0) {
      this.log.warn(
        `${s.peer}: start_interrupt_receiving on ${hex(endpoint)}: not an interrupt IN endpoint`,
        s.fields(),
      );
      // The status needs an IN endpoint (QEMU's parser): an OUT one gets no answer, as it asked for nothing valid.
      if ((endpoint & 0x80) !== 0) {
        s.send(encodeStatusPair(n, RedirType.INTERRUPT_RECEIVING_STATUS, id, RedirStatus.INVAL, endpoint));
      }
      return;
    }
    let stream = s.interrupt.get(endpoint);
    if (stream === undefined || !stream.running) {
      stream = {
        endpoint,
        maxPacketSize: ep.maxPacketSize,
        running: true,
        urbs: [],
        nextId: stream?.nextId ?? 0,
      };
      s.interrupt.set(endpoint, stream);
      for (let i = 0; i < INTERRUPT_URBS; i++) this.pollInterrupt(s, stream, ep.interval);
    }
    s.send(encodeStatusPair(n, RedirType.INTERRUPT_RECEIVING_STATUS, id, RedirStatus.SUCCESS, endpoint));
  }

  private pollInterrupt(s: Session, stream: InterruptStream, interval: number): void {
    const length = stream.maxPacketSize;
    const range = this.memory.tryAllocate(length, 64);
    if (range === null || s.urbs >= this.maxUrbs) {
      if (range !== null) this.memory.release(range);
      setTimeout(() => {
        if (stream.running && !s.closed) this.pollInterrupt(s, stream, interval);
      }, 10).unref();
      return;
    }
    s.urbs++;
    const urb: Urb = {
      type: "interrupt",
      port: PORT,
      device: ADDRESS,
      endpoint: (stream.endpoint & 0x0f) as EndpointNum,
      directionIn: true,
      buffer: [range],
      interval: Math.max(1, interval),
    };
    stream.urbs.push(urb);
    this.hcd.submitWithCallback(urb, (c) => {
      s.urbs--;
      stream.urbs.splice(stream.urbs.indexOf(urb), 1);
      const actual = Math.min(c.actualLength, length);
      if (stream.running && !s.closed) {
        const n = s.negotiated!;
        if (c.status === OK) {
          const pkt = encodeSmallDataPacket(
            n,
            RedirType.INTERRUPT_PACKET,
            { low: stream.nextId++ >>> 0, high: 0 },
            stream.endpoint,
            RedirStatus.SUCCESS,
            actual,
            actual,
          );
          dataOf(n, pkt, 4).set(this.memoryBytes.subarray(range.offset, range.offset + actual));
          s.send(pkt);
        } else {
          // A stall or a lost device stops receiving; the guest's next poll gets the error.
          stream.running = false;
          s.send(
            encodeStatusPair(
              n,
              RedirType.INTERRUPT_RECEIVING_STATUS,
              ID_ZERO,
              redirStatusOf(c.status),
              stream.endpoint,
            ),
          );
          if (c.status === ENODEV || c.status === ESHUTDOWN) this.deviceLost(s, c);
        }
      }
      this.memory.release(range);
      if (stream.running && !s.closed) this.pollInterrupt(s, stream, interval);
      this.settled(s);
    });
  }

  private stopInterrupt(s: Session, endpoint: number): void {
    const stream = s.interrupt.get(endpoint);
    if (stream === undefined) return;
    stream.running = false;
    for (const urb of stream.urbs) void this.hcd.unlink(urb);
  }

  private startIso(s: Session, id: Id, endpoint: number, pktsPerUrb: number, noUrbs: number): void {
    const n = s.negotiated!;
    const ep = this.model.endpoint(endpoint);
    const answer = (status: RedirStatus) =>
      s.send(encodeStatusPair(n, RedirType.ISO_STREAM_STATUS, id, status, endpoint));
    if (
      !s.announced ||
      ep === undefined ||
      ep.type !== RedirEpType.ISO ||
      pktsPerUrb < 1 ||
      pktsPerUrb > MAX_ISO_PKTS_PER_URB ||
      noUrbs < 1 ||
      noUrbs > MAX_ISO_URBS
    ) {
      this.log.warn(
        `${s.peer}: start_iso_stream on ${hex(endpoint)} (${pktsPerUrb} packets × ${noUrbs} URBs) refused`,
        s.fields(),
      );
      answer(RedirStatus.INVAL);
      return;
    }
    this.stopIso(s, endpoint);
    const stream: IsoStream = {
      endpoint,
      directionIn: (endpoint & 0x80) !== 0,
      pktsPerUrb,
      noUrbs,
      maxPacketSize: ep.maxPacketSize,
      interval: Math.max(1, ep.interval),
      running: true,
      urbs: [],
      nextId: 0,
      out: [],
      dropped: 0,
    };
    s.iso.set(endpoint, stream);
    if (stream.directionIn) for (let i = 0; i < noUrbs; i++) this.submitIso(s, stream, null);
    answer(RedirStatus.SUCCESS);
  }

  /** One iso URB: IN of pktsPerUrb packets, or OUT of the gathered `packets`. */
  private submitIso(s: Session, stream: IsoStream, packets: Uint8Array[] | null): void {
    const sizes =
      packets?.map((p) => p.length) ?? new Array<number>(stream.pktsPerUrb).fill(stream.maxPacketSize);
    const total = sizes.reduce((a, b) => a + b, 0);
    const frames = isoDescriptorFrames(sizes.length);
    const range = total > 0 ? this.memory.tryAllocate(total, 64) : null;
    if (
      (total > 0 && range === null) ||
      s.urbs >= this.maxUrbs ||
      s.isoFrames + frames > SCRATCH_FRAMES / 2
    ) {
      if (range !== null) this.memory.release(range);
      stream.dropped += sizes.length;
      return;
    }
    const spec: IsoPacketSpec[] = [];
    let at = 0;
    for (const size of sizes) {
      spec.push({ offset: at, length: size });
      at += size;
    }
    if (packets !== null && range !== null) {
      let o: number = range.offset;
      for (const p of packets) {
        this.memoryBytes.set(p, o);
        o += p.length;
      }
    }
    s.urbs++;
    s.isoFrames += frames;
    const urb: Urb = {
      type: "isochronous",
      port: PORT,
      device: ADDRESS,
      endpoint: (stream.endpoint & 0x0f) as EndpointNum,
      directionIn: stream.directionIn,
      buffer: range === null ? [] : [range],
      interval: stream.interval,
      iso: { asap: true, packets: spec },
    };
    stream.urbs.push(urb);
    this.hcd.submitWithCallback(urb, (c) => {
      s.urbs--;
      s.isoFrames -= frames;
      stream.urbs.splice(stream.urbs.indexOf(urb), 1);
      if (stream.running && !s.closed) {
        const n = s.negotiated!;
        // A stall, a lost device, or a failure with no per-packet results ends the stream.
        const fatal = c.status === EPIPE || c.status === ENODEV || c.status === ESHUTDOWN;
        if (fatal || (c.status !== OK && c.isoPackets === undefined)) {
          stream.running = false;
          s.send(
            encodeStatusPair(
              n,
              RedirType.ISO_STREAM_STATUS,
              ID_ZERO,
              redirStatusOf(c.status),
              stream.endpoint,
            ),
          );
          if (c.status === ENODEV || c.status === ESHUTDOWN) this.deviceLost(s, c);
        } else if (stream.directionIn && range !== null) {
          for (let i = 0; i < spec.length; i++) {
            const result = c.isoPackets?.[i];
            const got = Math.min(result?.actualLength ?? 0, spec[i]!.length);
            const pkt = encodeSmallDataPacket(
              n,
              RedirType.ISO_PACKET,
              { low: stream.nextId++ >>> 0, high: 0 },
              stream.endpoint,
              redirStatusOf(result?.status ?? c.status),
              got,
              got,
            );
            const from = range.offset + spec[i]!.offset;
            dataOf(n, pkt, 4).set(this.memoryBytes.subarray(from, from + got));
            s.send(pkt);
          }
        }
      }
      if (range !== null) this.memory.release(range);
      if (stream.running && !s.closed && stream.directionIn) this.submitIso(s, stream, null);
      else if (stream.running && !s.closed) this.flushIsoOut(s, stream);
      this.settled(s);
    });
  }

  private isoOut(s: Session, p: RedirPacket, data: Uint8Array): void {
    const stream = s.iso.get(p.endpoint);
    if (stream === undefined || !stream.running || stream.directionIn) return; // QEMU expects no reply
    if (data.length > stream.maxPacketSize) {
      stream.dropped++;
      return;
    }
    stream.out.push(data.slice());
    if (stream.out.length > stream.pktsPerUrb * (stream.noUrbs + ISO_OUT_BACKLOG_URBS)) {
      stream.out.shift();
      stream.dropped++;
    }
    this.flushIsoOut(s, stream);
  }

  private flushIsoOut(s: Session, stream: IsoStream): void {
    while (stream.urbs.length < stream.noUrbs && stream.out.length >= stream.pktsPerUrb) {
      this.submitIso(s, stream, stream.out.splice(0, stream.pktsPerUrb));
    }
  }

  private stopIso(s: Session, endpoint: number): void {
    const stream = s.iso.get(endpoint);
    if (stream === undefined) return;
    stream.running = false;
    stream.out = [];
    if (stream.dropped > 0) {
      this.log.warn(`${s.peer}: iso stream ${hex(endpoint)} dropped ${stream.dropped} packets`, s.fields());
    }
    for (const urb of stream.urbs) void this.hcd.unlink(urb);
    s.iso.delete(endpoint);
  }

  private stopStreams(s: Session): void {
    for (const ep of [...s.interrupt.keys()]) this.stopInterrupt(s, ep);
    for (const ep of [...s.iso.keys()]) this.stopIso(s, ep);
  }

  // ---------------------------------------------------------------- flow control and ends

  /** A URB of `s` came back: resume a blocked reader, or finish draining a closed connection. */
  private settled(s: Session): void {
    if (s.closed) {
      if (s.urbs === 0) s.onDrained?.();
      return;
    }
    this.progress(s);
    // Interrupt and iso IN data is sent from here too: a peer that stops reading it must start the stall timer.
    this.updateFlow(s);
  }

  private progress(s: Session): void {
    if (!s.reader.isBlocked) return;
    if (s.blockTimer !== null && !s.forced) {
      clearTimeout(s.blockTimer);
      s.blockTimer = null;
    }
    this.hcd.batch(() => s.reader.resume());
    this.updateFlow(s);
  }

  private written(s: Session): void {
    if (s.closed) return;
    if (s.socket.writableLength <= this.maxSendQueue && s.stallTimer !== null) {
      clearTimeout(s.stallTimer);
      s.stallTimer = null;
    }
    this.progress(s);
  }

  /** Reads paused while the reader waits; the stall timer runs while replies pile up unread. */
  private updateFlow(s: Session): void {
    if (s.closed) return;
    const pause = s.reader.isBlocked;
    if (pause !== s.paused) {
      s.paused = pause;
      if (pause) s.socket.pause();
      else s.socket.resume();
    }
    if (s.stallTimer === null && s.socket.writableLength > this.maxSendQueue) {
      s.stallTimer = setTimeout(() => {
        s.stallTimer = null;
        if (!s.closed && s.socket.writableLength > this.maxSendQueue) {
          this.drop(
            s,
            `peer stopped reading: ${s.socket.writableLength} bytes unsent for ${this.stalledMs} ms`,
          );
        }
      }, this.stalledMs);
    }
  }

  /** Malformed or hostile input: log, close this connection only. */
  drop(s: Session, reason: string): void {
    this.end(s, `protocol error: ${reason}; closing the connection`, "error");
  }

  /** The connection is over: cancel its URBs; the device is free for the next one once they are back. */
  private end(s: Session, reason: string, level: "info" | "warn" | "error"): void {
    if (s.closed) return;
    s.closed = true;
    for (const t of [s.helloTimer, s.stallTimer, s.blockTimer]) if (t !== null) clearTimeout(t);
    s.reader.stop();
    s.socket.destroy();
    this.stopStreams(s);
    // A transfer admitted whose data never all arrived holds a URB slot and guest memory, but no URB.
    const cut = s.current;
    s.current = null;
    if (cut !== null && cut.urb === null && cut.verdict === null) this.abandon(s, cut);
    const inFlight = s.urbs;
    this.log[level](
      `${s.peer}: ${reason}${s.announced ? `; ${this.name} released, ${inFlight} URBs in flight cancelled` : ""}`,
      s.fields(),
    );
    const wasAnnounced = s.announced;
    s.announced = false;
    this.draining = new Promise<void>((resolve) => {
      s.onDrained = () => {
        s.onDrained = null;
        this.sessions.delete(s);
        if (wasAnnounced) this.emit("disconnect", s.peer, reason);
        resolve();
      };
    });
    if (this.session === s) this.session = null;
    if (inFlight === 0) s.onDrained!();
    else for (const r of s.inflight.values()) if (r.urb !== null) void this.hcd.unlink(r.urb);
    if (this.options.connect !== undefined) this.redial();
  }

  /** Give back what admitTransfer took for a packet that never started. */
  private abandon(s: Session, r: Pending): void {
    s.urbs--;
    if (s.inflight.get(r.key) === r) s.inflight.delete(r.key);
    if (r.length > 0) this.memory.release({ offset: r.offset as GuestOffset, length: r.length });
    r.length = 0;
  }

  /** Stop listening or dialling, cancel the peer's URBs, release the device, stop the engine. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.listener?.close();
      for (const s of [...this.sessions]) this.end(s, "server shutting down", "info");
      await Promise.race([this.draining, new Promise((r) => setTimeout(r, 3000).unref())]);
      await this.connection.close();
      this.log.info("usbredir server stopped: URBs completed or cancelled, device released");
    })();
    return this.closing;
  }

  /** The engine's device commands (e.g. the keyboard's pressKeys), for tests and embedders. */
  deviceCommand(method: string, ...args: unknown[]): Promise<unknown> {
    return this.connection.deviceCommand(PORT, method, ...args);
  }
}
