/**
 * The standalone passthrough host's USB/IP server (Linux usbipd + usbip-host,
 * drivers/usb/usbip/stub_rx.c / stub_tx.c, rebuilt on the engine).
 *
 * One engine Connection serves every exported device: device i sits on root
 * port i (busid "1-i", devid 1 << 16 | i). The server is that connection's
 * guest: each CMD_SUBMIT becomes an engine URB whose buffer lives in the
 * connection's guest memory, so every transfer crosses the same rings, grants,
 * parse gate and port service as an embedded VMM's.
 *
 * The socket side (designed for it; DESIGN.md "Servers on the engine"):
 * - OUT data is read straight from the socket's chunks into its guest buffer
 *   (urb-reader.ts: linear in bytes however TCP segments the stream); every
 *   submit one read brought reaches the engine in one batch, one doorbell.
 * - Replies of one turn leave in one writev (reply-writer.ts); IN data is
 *   written from guest memory, its buffer held until the kernel took it.
 * - Each exported device — so each client, one client per device — owns a
 *   fixed share of the engine: its own region of guest memory, its share of
 *   the URB ring's slots and of the scratch frames iso descriptors use. A
 *   client that uses up its share waits (its reads paused) for its own URBs;
 *   the others never notice. A request that cannot start for
 *   `blockedRequestMs` while none of its client's URBs completes gets -ENOMEM,
 *   as usbfs answers past its memory limit. A client whose unsent replies pass
 *   `maxSendQueueBytes` has no request started until it reads, and is dropped
 *   when it does not read for `stalledClientMs`.
 *
 * Per client connection: management phase (OP_REQ_DEVLIST, OP_REQ_IMPORT),
 * then the URB phase on the same socket. On import the server resets the
 * port and sets the address through the engine itself (vhci never forwards
 * SET_ADDRESS); a forwarded SET_FEATURE(PORT_RESET) resets the device in the
 * engine and the address is set again. Unlink contract (as stub_rx/stub_tx):
 * RET_UNLINK -ECONNRESET when the URB was cancelled (no RET_SUBMIT follows),
 * 0 when it had already completed (its RET_SUBMIT came first). A client that
 * goes away (vhci detach closes the socket without unlinks) has everything
 * in flight unlinked; the device can be imported again once that drained.
 *
 * Hostile input: a PDU the reader cannot frame (bad version, unknown command,
 * lengths over the limits), a PDU for another devid, or a duplicate seqnum ends
 * that connection with a log line; a request that is well framed but wrong (bad
 * endpoint, iso descriptors outside the buffer or overlapping, a setup packet
 * the device refuses) gets a RET_SUBMIT with an error status.
 */
import { EventEmitter } from "node:events";
import { type BlockList, createServer, type Server, type Socket } from "node:net";
import { PortStartError } from "../backend/port-link.js";
import { URB_RING_GEOMETRY } from "../connection/handles.js";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { FRAME_SIZE, type GuestOffset } from "../dma-map/types.js";
import { Connection, type ConnectionOptions } from "../engine/connection.js";
import { UNLINK_RESERVED_SLOTS } from "../frontend/controller.js";
import type {
  BufferSegment,
  BulkTransfer,
  ControlTransfer,
  InterruptTransfer,
  IsoPacketSpec,
  Urb,
  UrbCallback,
  UrbCompletion,
  VirtualHostController,
} from "../frontend/index.js";
import { isoDescriptorFrames } from "../frontend/validate.js";
import {
  type DeviceDescription,
  DeviceDescriptionError,
  readDeviceDescription,
} from "../guest/device-description.js";
import { GuestUsbDriver } from "../guest/guest-driver.js";
import { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import { ECONNRESET, EINVAL, ENOMEM, EPIPE, OK, type UrbStatus } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import {
  ENDPOINT_TYPE_MASK,
  EndpointType,
  endpointAddress,
  isPortReset,
  isRequest,
  isSetAddress,
  RequestTypeByte,
  type SetupPacket,
  StandardRequest,
  setAddressSetup,
} from "../usb/index.js";
import { type LogFields, stderrLogger, type UsbipLogger } from "../usbip/log.js";
import {
  ByteQueue,
  type DeviceRecord,
  devidOf,
  encodeDevlistReply,
  encodeImportReply,
  ISO_DESCRIPTOR_SIZE,
  OpStatus,
  opStatusName,
  readOpRequest,
  TransferFlag,
  URB_HEADER_SIZE,
  USBIP_PORT,
  usbipSpeedOf,
} from "../usbip/protocol.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { allowedBy, buildAllowList } from "../util/ip-prefix.js";
import { adoptWithReadBuffer } from "../util/read-into.js";
import { type ReplyHolder, ReplyWriter } from "./reply-writer.js";
import { type SubmitHeader, UrbReader, type UrbReaderSink } from "./urb-reader.js";

export class UsbipServerError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_USBIP_OPTIONS" | "ERR_USBVIRT_USBIP_DEVICE";
  constructor(code: UsbipServerError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbipServerError);

export interface UsbipServerOptions {
  /**
   * What to export, in port order (at most 31). A null entry keeps its port free for a device exported
   * later (exportDevice: a device that is not plugged in yet, or one `serve --match-new` finds).
   */
  readonly devices: readonly (DeviceSpec | null)[];
  /** Address to bind (default 127.0.0.1). */
  readonly host?: string;
  /** TCP port (default 3240; 0 picks a free one). */
  readonly port?: number;
  /**
   * Listen on this already-bound, listening socket (a file descriptor, e.g. 3 from systemd socket
   * activation) instead of binding `host`:`port`.
   */
  readonly listenFd?: number;
  readonly logger?: UsbipLogger;
  /** Client addresses or CIDR subnets allowed to connect; absent or empty allows every client. */
  readonly allow?: readonly string[];
  /** A client whose unsent replies exceed this many bytes has no request started until it reads (default 16 MiB). */
  readonly maxSendQueueBytes?: number;
  /** ... and is dropped if it does not read for this long (default 30 s). */
  readonly stalledClientMs?: number;
  /**
   * URBs one client may have in the engine at once (default and most: its device's share of the
   * engine's 248 ring slots, 248 / devices); more wait, reads paused.
   */
  readonly maxUrbsPerClient?: number;
  /** A request that waits this long for its client's share while none of its URBs completes gets -ENOMEM (default 2000 ms). */
  readonly blockedRequestMs?: number;
  /**
   * Guest memory that holds URB buffers, MiB (default 64, at least 8 MiB per device); each device gets
   * an equal region of it, which bounds what its client's requests and unsent replies hold.
   */
  readonly guestMemoryMiB?: number;
  /** Extra options for the engine connection (tests; `backendThread: "worker"` puts the backend on a worker). */
  readonly connection?: Omit<ConnectionOptions, "ports" | "memory">;
  /**
   * A client's SET_FEATURE(PORT_RESET): reset the device in the engine (default, as Linux's stub does), or
   * stall it, as a server that hands the request to the device does (tests of clients that must cope).
   */
  readonly portReset?: "reset" | "stall";
}

/** One exported device as `usbvirt serve` prints it. */
export interface ExportedDeviceInfo {
  readonly busid: string;
  readonly devid: number;
  readonly port: number;
  readonly name: string;
  readonly spec: DeviceSpec;
  readonly record: DeviceRecord;
}

interface EndpointEntry {
  readonly type: number;
  readonly interval: number;
}

interface Slot {
  readonly port: PortNum;
  readonly busid: string;
  readonly devid: number;
  readonly spec: DeviceSpec;
  readonly name: string;
  readonly record: DeviceRecord;
  /** Endpoint address (bit 7 = IN) → type, per configuration value. */
  readonly endpoints: ReadonlyMap<number, ReadonlyMap<number, EndpointEntry>>;
  /** Every endpoint of every configuration (used while unconfigured). */
  readonly anyEndpoints: ReadonlyMap<number, EndpointEntry>;
  readonly address: DevAddr;
  /** This device's region of guest memory: its client's URB buffers and unsent IN data live here. */
  readonly memory: GuestBufferAllocator;
  readonly memoryBytes: number;
  owner: Session | null;
  /** Resolves once the previous owner's URBs have all come back. */
  draining: Promise<void> | null;
  configuration: number;
  failed: string | null;
  /** The failure was the device going away (unplug), not misbehaving. */
  gone: boolean;
}

/** What a CMD_SUBMIT became: the engine transfer types, or handled here (SET_ADDRESS, port reset). */
enum Kind {
  CONTROL,
  BULK,
  INTERRUPT,
  ISO,
  LOCAL,
}

/**
 * One CMD_SUBMIT from the moment it is admitted until its reply is written; pooled per session, and
 * its engine URB objects are reused (the controller recycles their records), so a steady stream
 * allocates no record per URB.
 */
class ServerUrb implements ReplyHolder {
  seqnum = 0;
  kind = Kind.CONTROL;
  directionIn = false;
  /** Local answer decided at admission (bad endpoint, SET_ADDRESS, …): no engine URB. */
  verdict: UrbStatus | null = null;
  bmRequestType = 0;
  bRequest = 0;
  wValue = 0;
  /** Its buffer in the device's region of guest memory (length 0: none). */
  offset = 0;
  length = 0;
  isoFrames = 0;
  /** Iso packets (offset, length) as the client laid them out. */
  iso: IsoPacketSpec[] = [];
  /** The engine URB now submitted, or null. */
  urb: Urb | null = null;
  /** Seqnums of CMD_UNLINKs waiting for this URB. */
  readonly unlinks: number[] = [];
  private readonly segment = { offset: 0 as GuestOffset, length: 0 };
  private readonly segments = [this.segment];
  private control: Mutable<ControlTransfer> | null = null;
  private bulk: Mutable<BulkTransfer> | null = null;
  private interrupt: Mutable<InterruptTransfer> | null = null;
  readonly done: UrbCallback;

  constructor(readonly session: Session) {
    this.done = (c) => session.server.completed(this, c);
  }

  /** The writer is done with this record's IN data. */
  released(): void {
    this.session.release(this);
    this.session.server.progress(this.session);
  }

  /** The engine URB for this submit, reusing this record's objects where the type allows. */
  engineUrb(slot: Slot, h: SubmitHeader, entry: EndpointEntry): Urb {
    const segment = this.segment;
    segment.offset = this.offset as GuestOffset;
    segment.length = this.length;
    const buffer = this.length > 0 ? this.segments : NO_SEGMENTS;
    const endpoint = h.ep as EndpointNum;
    const shortNotOk = h.directionIn && (h.transferFlags & TransferFlag.SHORT_NOT_OK) !== 0;
    const zeroPacket = !h.directionIn && (h.transferFlags & TransferFlag.ZERO_PACKET) !== 0;
    const interval = h.interval >= 1 ? h.interval : Math.max(1, entry.interval);
    // Control, bulk and interrupt reuse one object each: set the fields they share, then their own.
    let u: Mutable<ControlTransfer | BulkTransfer | InterruptTransfer>;
    switch (this.kind) {
      case Kind.CONTROL: {
        if (this.control === null) {
          const setup = { bmRequestType: 0, bRequest: 0, wValue: 0, wIndex: 0, wLength: 0 };
          this.control = { type: "control", ...this.base(slot), setup };
        }
        const setup = this.control.setup as Mutable<SetupPacket>;
        setup.bmRequestType = h.bmRequestType;
        setup.bRequest = h.bRequest;
        setup.wValue = h.wValue;
        setup.wIndex = h.wIndex;
        setup.wLength = h.wLength;
        u = this.control;
        break;
      }
      case Kind.BULK: {
        if (this.bulk === null) this.bulk = { type: "bulk", ...this.base(slot), zeroPacket: false };
        this.bulk.zeroPacket = zeroPacket;
        u = this.bulk;
        break;
      }
      case Kind.INTERRUPT: {
        if (this.interrupt === null) {
          this.interrupt = { type: "interrupt", ...this.base(slot), zeroPacket: false, interval };
        }
        this.interrupt.zeroPacket = zeroPacket;
        this.interrupt.interval = interval;
        u = this.interrupt;
        break;
      }
      default:
        return {
          type: "isochronous",
          port: slot.port,
          device: slot.address,
          endpoint,
          directionIn: h.directionIn,
          buffer: this.length > 0 ? [{ offset: this.offset as GuestOffset, length: this.length }] : [],
          interval: Math.min(interval, 0xffff),
          iso: {
            asap: (h.transferFlags & TransferFlag.ISO_ASAP) !== 0,
            startFrame: h.startFrame >>> 0,
            packets: this.iso,
          },
        };
    }
    u.endpoint = endpoint;
    u.directionIn = h.directionIn;
    u.buffer = buffer;
    u.shortNotOk = shortNotOk;
    return u;
  }

  /** The fields every transfer type shares, for a new reusable URB object on this device. */
  private base(slot: Slot) {
    return {
      port: slot.port,
      device: slot.address,
      endpoint: 0 as EndpointNum,
      directionIn: false,
      buffer: NO_SEGMENTS,
      shortNotOk: false,
    };
  }
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
const NO_SEGMENTS: readonly BufferSegment[] = Object.freeze([]);

type Phase = "op" | "importing" | "urb" | "closed";

/** Why a session's reader is stopped at a header. */
enum Blocked {
  NO,
  /** Its unsent replies are over the bound: wait for the client to read. */
  SEND,
  /** Its share of engine slots, guest memory or scratch frames is in use: wait for its URBs. */
  SHARE,
}

class Session implements UrbReaderSink {
  readonly queue = new ByteQueue();
  phase: Phase = "op";
  slot: Slot | null = null;
  reader: UrbReader | null = null;
  writer: ReplyWriter | null = null;
  readonly inflight = new Map<number, ServerUrb>();
  private readonly free: ServerUrb[] = [];
  /** The admitted submit whose data and iso descriptors are still arriving. */
  private current: ServerUrb | null = null;
  blocked = Blocked.NO;
  /** Set when a blocked request has waited too long: admit it with this status. */
  private forced: UrbStatus | null = null;
  paused = false;
  stallTimer: NodeJS.Timeout | null = null;
  blockTimer: NodeJS.Timeout | null = null;
  /** Engine slots and scratch frames this client's URBs hold now. */
  urbs = 0;
  isoFrames = 0;
  /** Called once the last in-flight URB of a closed session came back. */
  onDrained: (() => void) | null = null;

  /** Set by accept() right after construction. */
  socket!: Socket;
  /** OUT bytes the socket read straight into guest memory (no copy on the way). */
  directBytes = 0;
  /** What reads land in, except OUT data read straight into guest memory (urb-reader.ts). */
  readonly staging = Buffer.allocUnsafe(READ_BUFFER_BYTES);

  constructor(
    readonly server: UsbipServer,
    readonly peer: string,
  ) {}

  /** The structured fields of this client's log lines (JSON log format). */
  fields(): LogFields {
    return this.slot !== null ? { client: this.peer, busid: this.slot.busid } : { client: this.peer };
  }

  /** Where the next read lands: the rest of the OUT data that is due, in its guest buffer, or staging. */
  nextReadBuffer(memory: Buffer): Uint8Array {
    const reader = this.reader;
    if (this.phase !== "urb" || reader === null) return this.staging;
    const length = reader.directLength;
    if (length < DIRECT_READ_MIN) return this.staging;
    const at = reader.directOffset;
    return memory.subarray(at, at + length);
  }

  /** Into the URB phase: the reader and writer, fed first with whatever followed the import request. */
  startUrbPhase(memory: SharedArrayBuffer): void {
    this.phase = "urb";
    this.writer = new ReplyWriter(this.socket, memory, () => this.server.written(this));
    this.reader = new UrbReader(this);
    const rest = this.queue.length > 0 ? Buffer.from(this.queue.take(this.queue.length)) : null;
    this.queue.clear();
    if (rest !== null) this.server.received(this, rest);
  }

  record(): ServerUrb {
    const r = this.free.pop() ?? new ServerUrb(this);
    r.verdict = null;
    r.urb = null;
    r.length = 0;
    r.isoFrames = 0;
    r.unlinks.length = 0;
    return r;
  }

  /** Its reply is written (or will never be): give back its guest memory, recycle the record. */
  release(r: ServerUrb): void {
    const slot = this.slot;
    if (r.length > 0 && slot !== null)
      slot.memory.release({ offset: r.offset as GuestOffset, length: r.length });
    r.length = 0;
    if (r.kind === Kind.ISO) r.iso = [];
    this.free.push(r);
  }

  // UrbReaderSink: the reader calls these as the stream arrives.
  admit(h: SubmitHeader): boolean {
    return this.server.admit(this, h, this.takeForced());
  }
  submit(h: SubmitHeader, iso: Uint8Array): void {
    const r = this.current!;
    this.current = null;
    this.server.submit(this, r, h, iso);
  }
  unlink(seqnum: number, devid: number, unlinkSeqnum: number): void {
    this.server.unlink(this, seqnum, devid, unlinkSeqnum);
  }
  malformed(reason: string): void {
    this.server.malformed(this, reason);
  }

  admitted(r: ServerUrb): void {
    this.current = r;
  }
  force(status: UrbStatus): void {
    this.forced = status;
  }
  private takeForced(): UrbStatus | null {
    const f = this.forced;
    this.forced = null;
    return f;
  }
  /** The submit being received when the connection ended: it never reached the engine. */
  abandonCurrent(): void {
    const r = this.current;
    this.current = null;
    if (r === null) return;
    if (this.inflight.get(r.seqnum) === r) {
      this.inflight.delete(r.seqnum);
      this.urbs--;
      this.isoFrames -= r.isoFrames;
    }
    this.release(r);
  }
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

/** Bytes a client may send before its import completes (a devlist and an import request are 48). */
const MAX_OP_BYTES = 64 * 1024;
const CONTROL_ENTRY: EndpointEntry = { type: EndpointType.CONTROL, interval: 0 };

/** Each connection's read buffer; OUT data of at least DIRECT_READ_MIN bytes is read into guest memory instead. */
const READ_BUFFER_BYTES = 128 * 1024;
const DIRECT_READ_MIN = 16 * 1024;

/** URB ring slots the exported devices share (the controller keeps the rest for unlinks). */
const SHARED_RING_SLOTS = URB_RING_GEOMETRY.slots - UNLINK_RESERVED_SLOTS;
/** Scratch frames per exported device: iso descriptor arrays (a 1024-packet URB takes 4). */
const SCRATCH_FRAMES_PER_DEVICE = 16;
/** Guest memory kept at the start for the server's own enumeration transfers (descriptors at start-up). */
const DRIVER_FRAMES = 32;

export class UsbipServer extends EventEmitter {
  private readonly server: Server;
  private readonly sessions = new Set<Session>();
  private readonly slots: Slot[];
  private readonly log: UsbipLogger;
  private readonly hcd: VirtualHostController;
  private readonly allow: BlockList | null;
  private readonly memory: SharedArrayBuffer;
  private readonly memoryBytes: Uint8Array;
  /** The same guest memory as a Buffer, for views that reads land in. */
  private readonly memoryBuffer: Buffer;
  private readonly maxSendQueue: number;
  private readonly stalledMs: number;
  private readonly blockedMs: number;
  /** Engine slots and scratch frames one client may hold. */
  private readonly urbShare: number;
  private readonly scratchShare: number;
  private closing: Promise<void> | null = null;
  private readonly stallPortReset: boolean;
  /** Each port's region of guest memory (index: port - 1), kept for devices exported later. */
  private readonly regions: readonly { readonly memory: GuestBufferAllocator; readonly bytes: number }[];

  private constructor(
    readonly connection: Connection,
    private readonly guest: GuestUsbDriver,
    slots: Slot[],
    server: Server,
    options: UsbipServerOptions,
    shares: { urbs: number; scratchFrames: number },
    regions: readonly { readonly memory: GuestBufferAllocator; readonly bytes: number }[],
  ) {
    super();
    this.slots = slots;
    this.regions = regions;
    this.server = server;
    this.hcd = connection.frontend!;
    this.memory = connection.handles.memory[0]!;
    this.memoryBytes = new Uint8Array(this.memory);
    this.memoryBuffer = Buffer.from(this.memory);
    this.log = options.logger ?? stderrLogger;
    this.allow = buildAllowList(
      options.allow,
      (reason) => new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", reason),
    );
    this.maxSendQueue = options.maxSendQueueBytes ?? 16 * 1024 * 1024;
    this.stalledMs = options.stalledClientMs ?? 30_000;
    this.blockedMs = options.blockedRequestMs ?? 2000;
    this.stallPortReset = options.portReset === "stall";
    this.urbShare = shares.urbs;
    this.scratchShare = shares.scratchFrames;
    server.on("connection", (socket) => this.accept(socket));
    connection.on("port-failed", (port: number, reason: string, gone: boolean) => {
      const slot = this.slots.find((s) => s.port === port);
      if (slot === undefined) return;
      slot.failed = reason;
      slot.gone = gone;
      this.log.error(`device ${slot.busid} (${slot.name}) failed: ${reason}`, { busid: slot.busid });
      if (slot.owner !== null) this.drop(slot.owner, `its device ${slot.busid} failed`);
      this.emit("device-failed", slot.busid, reason, gone);
    });
  }

  /** Bring up the engine, attach and describe every device, then listen. */
  static async start(options: UsbipServerOptions): Promise<UsbipServer> {
    const specs = options.devices;
    if (!Array.isArray(specs) || specs.length < 1 || specs.length > 31) {
      throw new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", "options.devices must list 1 to 31 devices");
    }
    buildAllowList(options.allow, (reason) => new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", reason)); // validate eagerly, before any worker starts
    if (options.listenFd !== undefined && (!Number.isInteger(options.listenFd) || options.listenFd < 0)) {
      throw new UsbipServerError(
        "ERR_USBVIRT_USBIP_OPTIONS",
        `options.listenFd must be a file descriptor number, got ${options.listenFd}`,
      );
    }
    const devices = specs.length;
    const mib = options.guestMemoryMiB ?? Math.max(64, 8 * devices);
    if (!Number.isInteger(mib) || mib < 8 * devices || mib > 1024) {
      throw new UsbipServerError(
        "ERR_USBVIRT_USBIP_OPTIONS",
        `options.guestMemoryMiB must be an integer in [${8 * devices}, 1024] (8 MiB per device), got ${mib}`,
      );
    }
    const ringShare = Math.floor(SHARED_RING_SLOTS / devices);
    const maxUrbs = options.maxUrbsPerClient ?? ringShare;
    if (!Number.isInteger(maxUrbs) || maxUrbs < 1) {
      throw new UsbipServerError(
        "ERR_USBVIRT_USBIP_OPTIONS",
        `options.maxUrbsPerClient must be a positive integer, got ${maxUrbs}`,
      );
    }
    for (const [key, min] of [
      ["maxSendQueueBytes", 1],
      ["stalledClientMs", 1],
      ["blockedRequestMs", 1],
    ] as const) {
      const v = options[key];
      if (v !== undefined && (!Number.isInteger(v) || v < min)) {
        throw new UsbipServerError(
          "ERR_USBVIRT_USBIP_OPTIONS",
          `options.${key} must be a positive integer, got ${v}`,
        );
      }
    }
    const scratchFrames = Math.max(64, SCRATCH_FRAMES_PER_DEVICE * devices);
    const frames = (mib * 1024 * 1024) / FRAME_SIZE;
    const connection = await Connection.create({
      // The backend on the socket's thread: measured faster than a backend worker for a socket-driven
      // frontend on two cores (README, Benchmarks); host and imported devices keep their port workers.
      backendThread: "shared",
      ...options.connection,
      ports: devices,
      memory: frames,
      grantEntries: 8192,
      scratchFrames,
    });
    try {
      if (connection.handles.memory.length !== 1)
        throw new Error("the server's guest memory must be one region");
      const guest = new GuestUsbDriver(connection.frontend!, connection.handles);
      // Each device's region: an equal slice of the frames between the driver's and the scratch frames.
      const first = 1 + DRIVER_FRAMES;
      const perDevice = Math.floor((connection.handles.scratchFirstFrame - first) / devices);
      const slots: Slot[] = [];
      const regions: { memory: GuestBufferAllocator; bytes: number }[] = [];
      for (let i = 0; i < devices; i++) {
        const start = (first + i * perDevice) * FRAME_SIZE;
        const region = new GuestBufferAllocator(start, start + perDevice * FRAME_SIZE);
        regions.push({ memory: region, bytes: perDevice * FRAME_SIZE });
        const spec = specs[i];
        if (spec === null || spec === undefined) continue;
        slots.push(
          await describeDevice(connection, guest, (i + 1) as PortNum, spec, region, perDevice * FRAME_SIZE),
        );
      }
      // Paused: accept() hands each connection to a socket that reads where the server says (onread).
      const server = createServer({
        noDelay: true,
        keepAlive: true,
        keepAliveInitialDelay: 30_000,
        pauseOnConnect: true,
      });
      const self = new UsbipServer(
        connection,
        guest,
        slots,
        server,
        options,
        { urbs: Math.min(maxUrbs, ringShare), scratchFrames: Math.floor(scratchFrames / devices) },
        regions,
      );
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        const listening = () => {
          server.off("error", reject);
          resolve();
        };
        if (options.listenFd !== undefined) server.listen({ fd: options.listenFd }, listening);
        else server.listen(options.port ?? USBIP_PORT, options.host ?? "127.0.0.1", listening);
      });
      server.on("error", (err) => self.log.error(`listener: ${String(err)}`));
      return self;
    } catch (err) {
      await connection.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Export `spec` on `port` (a port kept free with a null entry, or one a withdrawn device left):
   * attach and describe it through the engine, then list it. Its bus id is 1-PORT, so a device that
   * comes back on the port it had keeps its bus id.
   */
  async exportDevice(spec: DeviceSpec, port: number): Promise<ExportedDeviceInfo> {
    const region = this.regions[port - 1];
    if (region === undefined || !Number.isInteger(port)) {
      throw new UsbipServerError(
        "ERR_USBVIRT_USBIP_OPTIONS",
        `port ${port} is not one of 1..${this.regions.length}`,
      );
    }
    if (this.slots.some((s) => s.port === port)) {
      throw new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", `port ${port} already exports a device`);
    }
    let slot: Slot;
    try {
      slot = await describeDevice(
        this.connection,
        this.guest,
        port as PortNum,
        spec,
        region.memory,
        region.bytes,
      );
    } catch (err) {
      // Attached but not describable (or never attached): leave the port empty for the next try.
      if (this.connection.frontend?.portStatus(port).connected === true) {
        await this.connection.detach(port).catch(() => undefined);
      }
      throw err;
    }
    if (this.closing !== null || this.slots.some((s) => s.port === port)) {
      await this.connection.detach(port).catch(() => undefined);
      throw new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", `port ${port} was taken or the server closed`);
    }
    this.slots.push(slot);
    this.slots.sort((a, b) => a.port - b.port);
    this.log.info(`exporting ${slot.busid} (${slot.name})`, { busid: slot.busid });
    return this.devices.find((d) => d.busid === slot.busid)!;
  }

  /**
   * Stop exporting `busid` (its device was unplugged, or failed): it leaves the device list at once, its
   * importer's connection is closed (vhci then reports the device gone), and once its URBs came back the
   * port is emptied. Resolves false when `busid` was not exported.
   */
  async withdraw(busid: string, reason: string): Promise<boolean> {
    const slot = this.slots.find((s) => s.busid === busid);
    if (slot === undefined) return false;
    this.slots.splice(this.slots.indexOf(slot), 1);
    this.log.info(`withdrew ${busid} (${slot.name}): ${reason}`, { busid });
    if (slot.owner !== null) this.end(slot.owner, `its device ${busid} is gone (${reason})`, "warn");
    if (slot.draining !== null) await slot.draining;
    if (slot.failed === null) {
      // Still on its port (a failure not reported by the engine yet, or a withdrawal by choice): take it off.
      await this.connection.detach(slot.port).catch(() => undefined);
    }
    return true;
  }

  /** Where the server listens. */
  get address(): { host: string; port: number } {
    const a = this.server.address();
    if (a === null || typeof a === "string") return { host: String(a), port: 0 };
    return { host: a.address, port: a.port };
  }

  get devices(): readonly ExportedDeviceInfo[] {
    return this.slots.map((s) => ({
      busid: s.busid,
      devid: s.devid,
      port: s.port,
      name: s.name,
      spec: s.spec,
      record: s.record,
    }));
  }

  /**
   * Clients connected now (any phase), which busids are imported, and per imported device what its
   * client holds: URBs in the engine, guest memory in use, reply bytes not yet written, bytes received
   * and not yet read (held while its reads wait), and the OUT bytes read straight into guest memory;
   * the holder's address; and which devices failed, with the reason.
   */
  stats(): {
    clients: number;
    imported: string[];
    perDevice: {
      busid: string;
      client: string;
      urbs: number;
      memoryBytes: number;
      unsentBytes: number;
      receivedBytes: number;
      directBytes: number;
    }[];
    failed: { busid: string; reason: string; gone: boolean }[];
  } {
    return {
      clients: this.sessions.size,
      imported: this.slots.filter((s) => s.owner !== null).map((s) => s.busid),
      perDevice: this.slots
        .filter((s) => s.owner !== null)
        .map((s) => ({
          busid: s.busid,
          client: s.owner!.peer,
          urbs: s.owner!.urbs,
          memoryBytes: s.memoryBytes - s.memory.freeBytes,
          unsentBytes: s.owner!.writer?.unsent ?? 0,
          receivedBytes: s.owner!.reader?.pending ?? s.owner!.queue.length,
          directBytes: s.owner!.directBytes,
        })),
      failed: this.slots
        .filter((s) => s.failed !== null)
        .map((s) => ({ busid: s.busid, reason: s.failed!, gone: s.gone })),
    };
  }

  // ---------------------------------------------------------------- connections

  private accept(raw: Socket): void {
    const peer = `${raw.remoteAddress ?? "?"}:${raw.remotePort ?? "?"}`;
    if (this.closing !== null) {
      raw.destroy();
      return;
    }
    if (this.allow !== null && !allowedBy(this.allow, raw.remoteAddress)) {
      this.log.warn(`${peer}: refused, not in the allowlist`, { client: peer });
      raw.destroy();
      return;
    }
    const s = new Session(this, peer);
    const adopted = adoptWithReadBuffer(raw, {
      buffer: () => s.nextReadBuffer(this.memoryBuffer),
      callback: (n, buf) => this.onRead(s, n, buf),
    });
    const socket = adopted ?? raw;
    s.socket = socket;
    if (adopted === null) socket.on("data", (chunk: Buffer) => this.onChunk(s, chunk));
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    this.sessions.add(s);
    socket.on("error", (err) => {
      if (s.phase !== "closed") this.log.warn(`${peer}: socket error: ${err.message}`, s.fields());
    });
    socket.on("close", () => {
      if (s.phase === "closed") return;
      const held = s.reader?.incomplete ?? s.queue.length;
      const partial = held > 0 ? ` with ${held} bytes of an incomplete PDU` : "";
      this.end(s, `client closed the connection${partial}`, partial === "" ? "info" : "warn");
    });
    socket.resume();
  }

  /** A read into the session's own buffer or, for OUT data that was due, straight into guest memory. */
  private onRead(s: Session, n: number, buf: Uint8Array): boolean {
    if (s.phase === "closed") return false;
    if (buf === s.staging) {
      // The staging buffer is read into again next time: what the reader keeps of it must be copied.
      this.onChunk(s, s.phase === "urb" ? s.staging.subarray(0, n) : Buffer.from(s.staging.subarray(0, n)));
      if (s.phase === "urb") s.reader!.ownBuffered();
    } else {
      s.directBytes += n;
      this.hcd.batch(() => s.reader!.receivedDirect(n));
      this.updateFlow(s);
    }
    return true;
  }

  private onChunk(s: Session, chunk: Buffer): void {
    if (s.phase === "closed") return;
    if (s.phase === "urb") {
      this.received(s, chunk);
      return;
    }
    // Management phase (or an import in progress): a few bytes, framed by the op reader.
    if (s.queue.length + chunk.length > MAX_OP_BYTES) {
      this.drop(s, `more than ${MAX_OP_BYTES} bytes before an import completed`);
      return;
    }
    s.queue.push(chunk);
    this.pumpOp(s);
  }

  /** Management phase: parse and answer whole requests. Bounded by the bytes received. */
  private pumpOp(s: Session): void {
    while (s.phase === "op") {
      const r = readOpRequest(s.queue);
      if (r.kind === "need") return;
      if (r.kind === "malformed") {
        this.drop(s, r.reason);
        return;
      }
      if (r.frame.op === "devlist") {
        s.socket.write(encodeDevlistReply(this.slots.map((slot) => slot.record)));
        this.log.info(`${s.peer}: device list (${this.slots.length} devices)`, s.fields());
      } else {
        void this.importDevice(s, r.frame.busid, r.frame.busidValid);
        return;
      }
    }
  }

  private async importDevice(s: Session, busid: string, busidValid: boolean): Promise<void> {
    const slot = busidValid ? this.slots.find((x) => x.busid === busid) : undefined;
    const refuse = (status: OpStatus, why: string) => {
      this.log.warn(
        `${s.peer}: import of ${JSON.stringify(busid)} refused (${opStatusName(status)}): ${why}`,
        { client: s.peer, busid },
      );
      s.socket.end(encodeImportReply(status));
      this.end(s, null, "info");
    };
    if (slot === undefined) {
      refuse(OpStatus.NODEV, "no such exported device");
      return;
    }
    if (slot.failed !== null) {
      refuse(OpStatus.DEV_ERR, `device failed: ${slot.failed}`);
      return;
    }
    if (slot.owner !== null) {
      refuse(OpStatus.DEV_BUSY, `already imported by ${slot.owner.peer}`);
      return;
    }
    slot.owner = s;
    s.slot = slot;
    s.phase = "importing";
    try {
      if (slot.draining !== null) await slot.draining;
      await this.resetAndAddress(slot);
    } catch (err) {
      slot.owner = null;
      s.slot = null;
      if ((s.phase as Phase) === "closed") return;
      s.phase = "op";
      refuse(OpStatus.DEV_ERR, `reset through the engine failed: ${(err as Error).message}`);
      return;
    }
    if ((s.phase as Phase) === "closed") {
      if (slot.owner === s) slot.owner = null;
      return;
    }
    s.socket.write(encodeImportReply(OpStatus.OK, slot.record));
    this.log.info(`${s.peer}: imported ${slot.busid} (${slot.name})`, s.fields());
    this.emit("import", slot.busid, s.peer);
    s.startUrbPhase(this.memory);
  }

  /** Port reset, then SET_ADDRESS, both through the engine (the device starts from its default state). */
  private async resetAndAddress(slot: Slot): Promise<void> {
    if (!this.hcd.portStatus(slot.port).connected) throw new Error(`port ${slot.port} has no device`);
    await this.hcd.resetPort(slot.port);
    slot.configuration = 0;
    await this.guest.control(
      slot.port,
      0 as DevAddr,
      setAddressSetup(slot.address),
      undefined,
      "SET_ADDRESS",
    );
  }

  // ---------------------------------------------------------------- URBs

  /** Bytes of the URB phase: the reader walks them; every submit they complete goes to the engine in one batch. */
  received(s: Session, chunk: Buffer): void {
    this.hcd.batch(() => s.reader!.push(chunk));
    this.updateFlow(s);
  }

  /**
   * The reader has a whole CMD_SUBMIT header: check what the stream's framing allows, then start it
   * if the client's share allows (else stop the reader here). `forced` answers a request that waited
   * too long.
   */
  admit(s: Session, h: SubmitHeader, forced: UrbStatus | null): boolean {
    const slot = s.slot!;
    if (h.devid !== slot.devid) {
      this.drop(s, `CMD_SUBMIT for devid 0x${h.devid.toString(16)}, imported 0x${slot.devid.toString(16)}`);
      return false;
    }
    if (s.inflight.has(h.seqnum)) {
      this.drop(s, `seqnum ${h.seqnum} is already in flight`);
      return false;
    }
    const r = s.record();
    r.seqnum = h.seqnum;
    r.directionIn = h.directionIn;
    r.bmRequestType = h.bmRequestType;
    r.bRequest = h.bRequest;
    r.wValue = h.wValue;
    if (forced !== null) return this.answerLocally(s, r, forced);
    let type: number;
    if (h.ep > 15) return this.answerLocally(s, r, EINVAL);
    if (h.ep === 0) {
      if (isSetAddress(h)) {
        // vhci never forwards it; the device already has the address the server gave it.
        return this.answerLocally(s, r, OK);
      }
      type = EndpointType.CONTROL;
    } else {
      const table = slot.endpoints.get(slot.configuration) ?? slot.anyEndpoints;
      const entry = table.get(endpointAddress(h.ep, h.directionIn));
      if (entry === undefined) return this.answerLocally(s, r, EINVAL);
      type = entry.type;
    }
    if ((type === EndpointType.ISOCHRONOUS) !== h.packets > 0) return this.answerLocally(s, r, EINVAL);
    const length = h.transferBufferLength;
    if (length > slot.memoryBytes) return this.answerLocally(s, r, ENOMEM);
    // The client's share: replies it has not read, engine slots, scratch frames, guest memory.
    if ((s.writer?.unsent ?? 0) > this.maxSendQueue) return this.block(s, r, Blocked.SEND);
    if (s.urbs >= this.urbShare) return this.block(s, r, Blocked.SHARE);
    const isoFrames = h.packets > 0 ? isoDescriptorFrames(h.packets) : 0;
    if (isoFrames > this.scratchShare) return this.answerLocally(s, r, ENOMEM);
    if (s.isoFrames + isoFrames > this.scratchShare) return this.block(s, r, Blocked.SHARE);
    if (length > 0) {
      const range = slot.memory.tryAllocate(length, length >= FRAME_SIZE ? FRAME_SIZE : 64);
      if (range === null) return this.block(s, r, Blocked.SHARE);
      r.offset = range.offset;
      r.length = length;
      if (!h.directionIn) s.reader!.receiveInto(this.memoryBytes, range.offset);
    }
    r.kind =
      type === EndpointType.CONTROL
        ? Kind.CONTROL
        : type === EndpointType.BULK
          ? Kind.BULK
          : type === EndpointType.INTERRUPT
            ? Kind.INTERRUPT
            : Kind.ISO;
    r.isoFrames = isoFrames;
    s.isoFrames += isoFrames;
    s.urbs++;
    s.inflight.set(r.seqnum, r);
    s.admitted(r);
    return true;
  }

  /** Admit a request that the server answers itself with `status` (its data, if any, is read and dropped). */
  private answerLocally(s: Session, r: ServerUrb, status: UrbStatus): boolean {
    r.verdict = status;
    r.kind = Kind.LOCAL;
    s.admitted(r);
    return true;
  }

  /** Stop the reader at this request until the client's share frees up (or it reads its replies). */
  private block(s: Session, r: ServerUrb, why: Blocked): boolean {
    s.release(r);
    s.blocked = why;
    if (why === Blocked.SHARE && s.blockTimer === null) {
      s.blockTimer = setTimeout(() => {
        s.blockTimer = null;
        if (s.blocked !== Blocked.SHARE || s.phase !== "urb") return;
        this.log.warn(
          `${s.peer}: a request on ${s.slot!.busid} waited ${this.blockedMs} ms for its share of the engine ` +
            `(${s.urbs} URBs, ${s.slot!.memoryBytes - s.slot!.memory.freeBytes} bytes of guest memory in use): -ENOMEM`,
          s.fields(),
        );
        s.force(ENOMEM);
        this.progress(s);
      }, this.blockedMs);
    }
    return false;
  }

  /** The admitted submit is whole (data in guest memory, iso descriptors in `iso`): answer it or start it. */
  submit(s: Session, r: ServerUrb, h: SubmitHeader, iso: Uint8Array): void {
    if (r.kind === Kind.LOCAL) {
      s.writer!.retSubmit(r.seqnum, r.verdict ?? EINVAL, 0, 0, 0, 0, 0, 0, null, null);
      s.release(r);
      return;
    }
    if (r.kind === Kind.ISO) {
      const problem = this.isoLayout(r, h.packets, iso);
      if (problem !== null) {
        s.inflight.delete(r.seqnum);
        s.urbs--;
        s.isoFrames -= r.isoFrames;
        s.writer!.retSubmit(r.seqnum, EINVAL, 0, 0, 0, 0, 0, 0, null, null);
        this.log.warn(`${s.peer}: iso CMD_SUBMIT seqnum ${r.seqnum} refused: ${problem}`, s.fields());
        s.release(r);
        return;
      }
    }
    const slot = s.slot!;
    if (r.kind === Kind.CONTROL && isPortReset(h)) {
      this.portReset(s, r);
      return;
    }
    const table = slot.endpoints.get(slot.configuration) ?? slot.anyEndpoints;
    const entry =
      h.ep === 0 ? CONTROL_ENTRY : (table.get(endpointAddress(h.ep, h.directionIn)) ?? CONTROL_ENTRY);
    const urb = r.engineUrb(slot, h, entry);
    r.urb = urb;
    this.hcd.submitWithCallback(urb, r.done);
  }

  /**
   * Iso packet descriptors (wire form) against the buffer: each inside it, none overlapping, and the
   * lengths within the buffer. Null when they are sound (they are then kept in `r.iso`), else why not.
   */
  private isoLayout(r: ServerUrb, packets: number, iso: Uint8Array): string | null {
    const v = new DataView(iso.buffer, iso.byteOffset, iso.byteLength);
    const specs: IsoPacketSpec[] = [];
    let ordered = true;
    let lastEnd = 0;
    for (let i = 0; i < packets; i++) {
      const offset = v.getUint32(i * ISO_DESCRIPTOR_SIZE);
      const length = v.getUint32(i * ISO_DESCRIPTOR_SIZE + 4);
      if (offset + length > r.length) {
        return `packet ${i} (offset ${offset}, length ${length}) ends past the ${r.length}-byte buffer`;
      }
      if (offset < lastEnd) ordered = false;
      lastEnd = offset + length;
      specs.push({ offset, length });
    }
    if (!ordered) {
      // Out of order is allowed; overlap is not (the reply's data would repeat bytes).
      const sorted = [...specs].sort((a, b) => a.offset - b.offset);
      for (let i = 1; i < sorted.length; i++) {
        const prev = sorted[i - 1]!;
        if (sorted[i]!.offset < prev.offset + prev.length) {
          return `packets overlap at offset ${sorted[i]!.offset}`;
        }
      }
    }
    r.iso = specs;
    return null;
  }

  /** A forwarded SET_FEATURE(PORT_RESET): reset in the engine, then give the device its address back. */
  private portReset(s: Session, r: ServerUrb): void {
    const slot = s.slot!;
    r.kind = Kind.LOCAL;
    const answer = (status: UrbStatus) =>
      this.completed(r, { status, actualLength: 0, startFrame: 0, errorCount: 0 });
    if (this.stallPortReset) {
      queueMicrotask(() => answer(EPIPE));
      return;
    }
    this.resetAndAddress(slot).then(
      () => answer(OK),
      (err: unknown) => {
        this.log.warn(`${s.peer}: port reset of ${slot.busid} failed: ${(err as Error).message}`, s.fields());
        answer(EINVAL);
      },
    );
  }

  /** An engine URB (or a local port reset) of `r.session` completed: queue its reply. */
  completed(r: ServerUrb, c: UrbCompletion): void {
    const s = r.session;
    s.inflight.delete(r.seqnum);
    s.urbs--;
    s.isoFrames -= r.isoFrames;
    r.isoFrames = 0;
    r.urb = null;
    if (s.phase !== "urb") {
      s.release(r);
      if (s.phase === "closed" && s.inflight.size === 0) s.onDrained?.();
      return;
    }
    const writer = s.writer!;
    if (r.unlinks.length > 0 && c.status === ECONNRESET) {
      // Cancelled: RET_UNLINK -ECONNRESET, and no RET_SUBMIT for it.
      for (const u of r.unlinks) writer.retUnlink(u, ECONNRESET);
      s.release(r);
    } else {
      if (
        c.status === OK &&
        r.kind === Kind.CONTROL &&
        isRequest(r, RequestTypeByte.DEVICE_OUT, StandardRequest.SET_CONFIGURATION)
      ) {
        s.slot!.configuration = r.wValue & 0xff;
      }
      // IN data goes from guest memory: the writer holds the buffer until it is written.
      const held = r.kind !== Kind.ISO && r.directionIn && c.actualLength > 0;
      if (r.kind === Kind.ISO) this.isoReply(s, r, c);
      else if (held) {
        const actual = Math.min(c.actualLength, r.length);
        writer.retSubmit(r.seqnum, c.status, actual, 0, 0, 0, r.offset, actual, null, r);
      } else writer.retSubmit(r.seqnum, c.status, c.actualLength, 0, 0, 0, 0, 0, null, null);
      // RET_UNLINK 0 for unlinks that came too late: after the RET_SUBMIT, as stub_tx orders them.
      for (const u of r.unlinks) writer.retUnlink(u, OK);
      if (!held) s.release(r);
    }
    this.progress(s);
  }

  /** RET_SUBMIT of an iso URB: each packet's actual bytes compacted (IN), then the descriptors. */
  private isoReply(s: Session, r: ServerUrb, c: UrbCompletion): void {
    const packets = r.iso;
    const results = c.isoPackets;
    let actual = 0;
    let errors = 0;
    for (let i = 0; i < packets.length; i++) {
      const got = Math.min(results?.[i]?.actualLength ?? 0, packets[i]!.length);
      actual += got;
      if ((results?.[i]?.status ?? c.status) !== 0) errors++;
    }
    const dataBytes = r.directionIn ? actual : 0;
    const tail = new Uint8Array(dataBytes + packets.length * ISO_DESCRIPTOR_SIZE);
    const v = new DataView(tail.buffer);
    let at = 0;
    for (let i = 0; i < packets.length; i++) {
      const p = packets[i]!;
      const got = Math.min(results?.[i]?.actualLength ?? 0, p.length);
      if (r.directionIn && got > 0) {
        tail.set(this.memoryBytes.subarray(r.offset + p.offset, r.offset + p.offset + got), at);
        at += got;
      }
      const d = dataBytes + i * ISO_DESCRIPTOR_SIZE;
      v.setUint32(d, p.offset);
      v.setUint32(d + 4, p.length);
      v.setUint32(d + 8, got);
      v.setInt32(d + 12, results?.[i]?.status ?? c.status);
    }
    s.writer!.retSubmit(r.seqnum, c.status, actual, c.startFrame, packets.length, errors, 0, 0, tail, null);
  }

  unlink(s: Session, seqnum: number, devid: number, target: number): void {
    const slot = s.slot!;
    if (devid !== slot.devid) {
      this.drop(s, `CMD_UNLINK for devid 0x${devid.toString(16)}, imported 0x${slot.devid.toString(16)}`);
      return;
    }
    const r = s.inflight.get(target);
    if (r === undefined) {
      // Already completed: its RET_SUBMIT is ahead of this in the stream.
      s.writer!.retUnlink(seqnum, OK);
      return;
    }
    r.unlinks.push(seqnum);
    if (r.urb !== null && r.unlinks.length === 1) void this.hcd.unlink(r.urb);
  }

  malformed(s: Session, reason: string): void {
    this.drop(s, reason);
  }

  // ---------------------------------------------------------------- flow control and ends

  /** Something of `s`'s share came back: try the request its reader stopped at. */
  progress(s: Session): void {
    if (s.phase !== "urb" || s.blocked === Blocked.NO) return;
    if (s.blockTimer !== null) {
      clearTimeout(s.blockTimer);
      s.blockTimer = null;
    }
    s.blocked = Blocked.NO;
    this.hcd.batch(() => s.reader!.resume());
    this.updateFlow(s);
  }

  /** A flush of `s`'s replies reached the kernel. */
  written(s: Session): void {
    if (s.phase !== "urb") return;
    if (s.writer!.unsent <= this.maxSendQueue) {
      if (s.stallTimer !== null) clearTimeout(s.stallTimer);
      s.stallTimer = null;
      if (s.blocked === Blocked.SEND) this.progress(s);
    }
  }

  /** Reads paused while the reader is stopped at a request; the stall timer runs while replies pile up. */
  private updateFlow(s: Session): void {
    if (s.phase !== "urb") return;
    const pause = s.reader!.isBlocked;
    if (pause && !s.paused) {
      s.paused = true;
      s.socket.pause();
    } else if (!pause && s.paused) {
      s.paused = false;
      s.socket.resume();
    }
    if (s.stallTimer === null && s.writer!.unsent + s.writer!.pending * URB_HEADER_SIZE > this.maxSendQueue) {
      s.stallTimer = setTimeout(() => {
        s.stallTimer = null;
        if (s.phase !== "urb" || s.writer!.unsent <= this.maxSendQueue) return;
        this.drop(s, `client stopped reading: ${s.writer!.unsent} bytes unsent for ${this.stalledMs} ms`);
      }, this.stalledMs);
    }
  }

  /** Malformed or hostile input: log, close this connection only. */
  private drop(s: Session, reason: string): void {
    if (s.phase === "closed") return;
    this.end(s, `protocol error: ${reason}; closing the connection`, "error");
  }

  /**
   * The connection is over: stop reading, drop unsent replies (their guest memory comes back),
   * cancel everything the client had in flight, and free the device once it all came back.
   */
  private end(s: Session, reason: string | null, level: "info" | "warn" | "error"): void {
    if (s.phase === "closed") return;
    s.phase = "closed";
    if (s.stallTimer !== null) clearTimeout(s.stallTimer);
    if (s.blockTimer !== null) clearTimeout(s.blockTimer);
    s.stallTimer = null;
    s.blockTimer = null;
    s.queue.clear();
    s.reader?.stop();
    s.abandonCurrent();
    s.writer?.close();
    if (reason !== null) s.socket.destroy();
    const slot = s.slot;
    const inFlight = s.inflight.size;
    if (reason !== null) {
      const what = slot !== null ? `detached ${slot.busid} (${slot.name}): ` : "";
      const urbs = slot !== null ? `; ${inFlight} URBs in flight cancelled` : "";
      this.log[level](`${s.peer}: ${what}${reason}${urbs}`, s.fields());
    }
    if (slot === null || slot.owner !== s) {
      this.sessions.delete(s);
      return;
    }
    slot.owner = null;
    slot.draining = new Promise<void>((resolve) => {
      s.onDrained = () => {
        s.onDrained = null;
        this.sessions.delete(s);
        if (slot.draining === drained) slot.draining = null;
        this.emit("detach", slot.busid, s.peer);
        resolve();
      };
    });
    const drained = slot.draining;
    if (inFlight === 0) {
      s.onDrained!();
      return;
    }
    for (const r of s.inflight.values()) if (r.urb !== null) void this.hcd.unlink(r.urb);
  }

  /** Stop listening, cancel every client's URBs, release the devices, stop the engine. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      // Stop listening. Its callback would wait for the accepted sockets the server counts, which
      // adopted connections never close: the sessions are ended below instead.
      this.server.close();
      const drains: Promise<void>[] = [];
      for (const s of [...this.sessions]) {
        this.end(s, "server shutting down", "info");
        if (s.slot?.draining) drains.push(s.slot.draining);
      }
      for (const slot of this.slots) if (slot.draining !== null) drains.push(slot.draining);
      await Promise.race([Promise.all(drains), new Promise((r) => setTimeout(r, 3000).unref())]);
      await this.connection.close();
      this.log.info("server stopped: in-flight URBs completed or cancelled, devices released");
    })();
    return this.closing;
  }
}

/** Attach one device on its port and read what the device record needs, through the engine. */
async function describeDevice(
  conn: Connection,
  guest: GuestUsbDriver,
  port: PortNum,
  spec: DeviceSpec,
  memory: GuestBufferAllocator,
  memoryBytes: number,
): Promise<Slot> {
  let summary: Awaited<ReturnType<Connection["attach"]>>;
  try {
    summary = await conn.attach(port, spec);
  } catch (err) {
    // The device's own words, without the engine's "port N:" (an exported device has no port to a user).
    const why = err instanceof PortStartError && err.cause instanceof Error ? err.cause : (err as Error);
    throw new UsbipServerError(
      "ERR_USBVIRT_USBIP_DEVICE",
      `cannot export ${describeSpec(spec)}: ${why.message}`,
      { cause: err },
    );
  }
  const hcd = conn.frontend!;
  let d: DeviceDescription;
  try {
    d = await readDeviceDescription(guest, port);
  } catch (err) {
    if (!(err instanceof DeviceDescriptionError)) throw err;
    throw new UsbipServerError("ERR_USBVIRT_USBIP_DEVICE", `${summary.name}: ${err.message}`);
  }
  const endpoints = new Map<number, Map<number, EndpointEntry>>();
  const anyEndpoints = new Map<number, EndpointEntry>();
  for (const parsed of d.configurations) {
    const table = new Map<number, EndpointEntry>();
    for (const itf of parsed.interfaces) {
      for (const ep of itf.endpoints) {
        const entry = { type: ep.attributes & ENDPOINT_TYPE_MASK, interval: ep.interval };
        table.set(ep.address, entry);
        if (!anyEndpoints.has(ep.address)) anyEndpoints.set(ep.address, entry);
      }
    }
    endpoints.set(parsed.value, table);
  }
  const first = d.configurations[0] ?? { value: 0, interfaces: [] };
  const busid = `1-${port}`;
  const vendor = d.vendorId;
  const product = d.productId;
  const record: DeviceRecord = {
    path: `/sys/devices/platform/usbvirt/usb1/${busid}`,
    busid,
    busnum: 1,
    devnum: port,
    speed: usbipSpeedOf(hcd.portStatus(port).speed),
    idVendor: vendor,
    idProduct: product,
    bcdDevice: d.bcdDevice,
    bDeviceClass: d.deviceClass,
    bDeviceSubClass: d.deviceSubClass,
    bDeviceProtocol: d.deviceProtocol,
    bConfigurationValue: first.value,
    bNumConfigurations: d.configurations.length,
    interfaces: first.interfaces
      .filter((i) => i.alternate === 0)
      .map((i) => ({ cls: i.cls, subclass: i.subclass, protocol: i.protocol })),
  };
  return {
    port,
    busid,
    devid: devidOf(record),
    spec,
    name: `${summary.name} ${hex4(vendor)}:${hex4(product)}`,
    record,
    endpoints,
    anyEndpoints,
    address: port as number as DevAddr,
    memory,
    memoryBytes,
    owner: null,
    draining: null,
    configuration: 0,
    failed: null,
    gone: false,
  };
}
