/**
 * The standalone passthrough host's USB/IP server (Linux usbipd + usbip-host,
 * drivers/usb/usbip/stub_rx.c / stub_tx.c, rebuilt on the engine).
 *
 * One engine Connection serves every exported device: device i sits on root
 * port i (busid "1-i", devid 1 << 16 | i). The server is that connection's
 * guest: each CMD_SUBMIT becomes an engine URB whose buffer lives in the
 * connection's guest memory (OUT data copied in from the socket, IN data
 * copied out to it — the one copy at the network edge), so every transfer
 * crosses the same rings, grants and port workers as an embedded VMM's.
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
 * Hostile input: a PDU the frame reader cannot frame (bad version, unknown
 * command, lengths over the limits), a CMD_SUBMIT for another devid, or a
 * duplicate seqnum ends that connection with a log line; a request that is
 * well framed but wrong (bad endpoint, a setup packet the device refuses) gets
 * a RET_SUBMIT with an error status. A client that stops reading has its
 * reads paused once its send queue passes a bound and is dropped after a timeout.
 */
import { EventEmitter } from "node:events";
import { BlockList, createServer, isIP, type Server, type Socket } from "node:net";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { FRAME_SIZE } from "../dma-map/types.js";
import { Connection, type ConnectionOptions } from "../engine/connection.js";
import type { Urb, UrbCompletion, VirtualHostController } from "../frontend/index.js";
import { GuestUsbDriver, parseConfiguration, USB_DT_CONFIG, USB_DT_DEVICE } from "../guest/guest-driver.js";
import type { GuestRange } from "../guest/guest-memory-allocator.js";
import { ECONNRESET, EINVAL, OK, type UrbStatus } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum, SetupPacket } from "../urb/types.js";
import { UsbvirtError } from "../util/errors.js";
import { stderrLogger, type UsbipLogger } from "./log.js";
import {
  ByteQueue,
  type CmdSubmit,
  type CmdUnlink,
  type DeviceRecord,
  decodeSetup,
  devidOf,
  encodeDevlistReply,
  encodeImportReply,
  encodeRetSubmit,
  encodeRetUnlink,
  type IsoDescriptor,
  OpStatus,
  opStatusName,
  readClientPdu,
  readOpRequest,
  TransferFlag,
  USBIP_PORT,
  usbipSpeedOf,
} from "./protocol.js";

export class UsbipServerError extends UsbvirtError {}

export interface UsbipServerOptions {
  /** What to export, in port order (at most 31). */
  readonly devices: readonly DeviceSpec[];
  /** Address to bind (default 127.0.0.1). */
  readonly host?: string;
  /** TCP port (default 3240; 0 picks a free one). */
  readonly port?: number;
  readonly logger?: UsbipLogger;
  /** Client addresses or CIDR subnets allowed to connect; absent or empty allows every client. */
  readonly allow?: readonly string[];
  /** A client whose unsent replies exceed this many bytes has its reads paused (default 16 MiB). */
  readonly maxSendQueueBytes?: number;
  /** ... and is dropped if it does not read for this long (default 30 s). */
  readonly stalledClientMs?: number;
  /** URBs one client may have in the engine at once; more wait, reads paused (default 1024). */
  readonly maxUrbsPerClient?: number;
  /** Guest memory that holds URB buffers, MiB (default 64). */
  readonly guestMemoryMiB?: number;
  /** Extra options for the engine connection (tests). */
  readonly connection?: Omit<ConnectionOptions, "ports" | "memory">;
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

const EP_CONTROL = 0;
const EP_ISO = 1;
const EP_BULK = 2;
const EP_INTERRUPT = 3;

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
  owner: Session | null;
  /** Resolves once the previous owner's URBs have all come back. */
  draining: Promise<void> | null;
  configuration: number;
  failed: string | null;
}

/** One CMD_SUBMIT while the engine has it. */
interface ServerUrb {
  readonly cmd: CmdSubmit;
  readonly kind: "control" | "bulk" | "interrupt" | "isochronous" | "local";
  urb: Urb | null;
  range: GuestRange | null;
  /** Seqnums of CMD_UNLINKs waiting for this URB. */
  unlinks: number[];
}

type Phase = "op" | "importing" | "urb" | "closed";

class Session {
  readonly queue = new ByteQueue();
  phase: Phase = "op";
  slot: Slot | null = null;
  readonly inflight = new Map<number, ServerUrb>();
  /** Submits waiting for guest memory or the per-client URB bound, in order. */
  readonly waiting: CmdSubmit[] = [];
  sendBlocked = false;
  paused = false;
  stallTimer: NodeJS.Timeout | null = null;
  urbs = 0;
  /** Called once the last in-flight URB of a closed session came back. */
  onDrained: (() => void) | null = null;

  constructor(
    readonly socket: Socket,
    readonly peer: string,
  ) {}
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

function setupOf(bytes: Uint8Array): SetupPacket {
  return decodeSetup(bytes);
}

const SET_ADDRESS = { type: 0x00, request: 5 };
const SET_CONFIGURATION = { type: 0x00, request: 9 };
const PORT_RESET = { type: 0x23, request: 3, feature: 4 };

export class UsbipServer extends EventEmitter {
  private readonly server: Server;
  private readonly sessions = new Set<Session>();
  private readonly slots: Slot[];
  private readonly log: UsbipLogger;
  private readonly hcd: VirtualHostController;
  private readonly allow: BlockList | null;
  private readonly maxSendQueue: number;
  private readonly stalledMs: number;
  private readonly maxUrbs: number;
  private closing: Promise<void> | null = null;

  private constructor(
    readonly connection: Connection,
    private readonly guest: GuestUsbDriver,
    slots: Slot[],
    server: Server,
    options: UsbipServerOptions,
  ) {
    super();
    this.slots = slots;
    this.server = server;
    this.hcd = connection.frontend!;
    this.log = options.logger ?? stderrLogger;
    this.allow = buildAllowList(options.allow);
    this.maxSendQueue = options.maxSendQueueBytes ?? 16 * 1024 * 1024;
    this.stalledMs = options.stalledClientMs ?? 30_000;
    this.maxUrbs = options.maxUrbsPerClient ?? 1024;
    server.on("connection", (socket) => this.accept(socket));
    connection.on("port-failed", (port: number, reason: string) => {
      const slot = this.slots.find((s) => s.port === port);
      if (slot === undefined) return;
      slot.failed = reason;
      this.log.error(`device ${slot.busid} (${slot.name}) failed: ${reason}`);
      if (slot.owner !== null) this.drop(slot.owner, `its device ${slot.busid} failed`);
    });
  }

  /** Bring up the engine, attach and describe every device, then listen. */
  static async start(options: UsbipServerOptions): Promise<UsbipServer> {
    const specs = options.devices;
    if (!Array.isArray(specs) || specs.length < 1 || specs.length > 31) {
      throw new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", "options.devices must list 1 to 31 devices");
    }
    buildAllowList(options.allow); // validate eagerly, before any worker starts
    const mib = options.guestMemoryMiB ?? 64;
    if (!Number.isInteger(mib) || mib < 8 || mib > 1024) {
      throw new UsbipServerError(
        "ERR_USBVIRT_USBIP_OPTIONS",
        `options.guestMemoryMiB must be in [8, 1024], got ${mib}`,
      );
    }
    const connection = await Connection.create({
      ...options.connection,
      ports: specs.length,
      memory: (mib * 1024 * 1024) / FRAME_SIZE,
      grantEntries: 8192,
    });
    try {
      const guest = new GuestUsbDriver(connection.frontend!, connection.handles);
      const slots: Slot[] = [];
      for (let i = 0; i < specs.length; i++) {
        slots.push(await describeDevice(connection, guest, (i + 1) as PortNum, specs[i]!));
      }
      const server = createServer({ noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
      const self = new UsbipServer(connection, guest, slots, server, options);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(options.port ?? USBIP_PORT, options.host ?? "127.0.0.1", () => {
          server.off("error", reject);
          resolve();
        });
      });
      server.on("error", (err) => self.log.error(`listener: ${String(err)}`));
      return self;
    } catch (err) {
      await connection.close().catch(() => undefined);
      throw err;
    }
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

  /** Clients connected now (any phase), and which busids are imported. */
  stats(): { clients: number; imported: string[] } {
    return {
      clients: this.sessions.size,
      imported: this.slots.filter((s) => s.owner !== null).map((s) => s.busid),
    };
  }

  // ---------------------------------------------------------------- connections

  private accept(socket: Socket): void {
    const peer = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
    if (this.closing !== null) {
      socket.destroy();
      return;
    }
    if (this.allow !== null && !allowed(this.allow, socket.remoteAddress)) {
      this.log.warn(`${peer}: refused, not in the allowlist`);
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    const s = new Session(socket, peer);
    this.sessions.add(s);
    socket.on("data", (chunk: Buffer) => {
      if (s.phase === "closed") return;
      s.queue.push(chunk);
      this.pump(s);
    });
    socket.on("drain", () => {
      if (s.stallTimer !== null) clearTimeout(s.stallTimer);
      s.stallTimer = null;
      s.sendBlocked = false;
      this.updateFlow(s);
    });
    socket.on("error", (err) => {
      if (s.phase !== "closed") this.log.warn(`${peer}: socket error: ${err.message}`);
    });
    socket.on("close", () => {
      if (s.phase === "closed") return;
      const partial = s.queue.length > 0 ? ` with ${s.queue.length} bytes of an incomplete PDU` : "";
      this.end(s, `client closed the connection${partial}`, partial === "" ? "info" : "warn");
    });
  }

  /** Parse and handle whatever whole PDUs are buffered. Bounded by the bytes received. */
  private pump(s: Session): void {
    while (s.phase === "op" || s.phase === "urb") {
      if (s.phase === "op") {
        const r = readOpRequest(s.queue);
        if (r.kind === "need") return;
        if (r.kind === "malformed") {
          this.drop(s, r.reason);
          return;
        }
        if (r.frame.op === "devlist") {
          this.send(s, encodeDevlistReply(this.slots.map((slot) => slot.record)));
          this.log.info(`${s.peer}: device list (${this.slots.length} devices)`);
        } else {
          void this.importDevice(s, r.frame.busid, r.frame.busidValid);
          return;
        }
      } else {
        const r = readClientPdu(s.queue);
        if (r.kind === "need") return;
        if (r.kind === "malformed") {
          this.drop(s, r.reason);
          return;
        }
        if (r.frame.command === "unlink") this.onUnlink(s, r.frame);
        else this.onSubmit(s, r.frame);
      }
    }
  }

  private async importDevice(s: Session, busid: string, busidValid: boolean): Promise<void> {
    const slot = busidValid ? this.slots.find((x) => x.busid === busid) : undefined;
    const refuse = (status: OpStatus, why: string) => {
      this.log.warn(
        `${s.peer}: import of ${JSON.stringify(busid)} refused (${opStatusName(status)}): ${why}`,
      );
      this.send(s, encodeImportReply(status));
      this.finish(s);
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
    s.phase = "urb";
    this.send(s, encodeImportReply(OpStatus.OK, slot.record));
    this.log.info(`${s.peer}: imported ${slot.busid} (${slot.name})`);
    this.emit("import", slot.busid, s.peer);
    this.pump(s);
  }

  /** Port reset, then SET_ADDRESS, both through the engine (the device starts from its default state). */
  private async resetAndAddress(slot: Slot): Promise<void> {
    if (!this.hcd.portStatus(slot.port).connected) throw new Error(`port ${slot.port} has no device`);
    await this.hcd.resetPort(slot.port);
    slot.configuration = 0;
    await this.guest.control(
      slot.port,
      0 as DevAddr,
      {
        bmRequestType: SET_ADDRESS.type,
        bRequest: SET_ADDRESS.request,
        wValue: slot.address,
        wIndex: 0,
        wLength: 0,
      },
      undefined,
      "SET_ADDRESS",
    );
  }

  // ---------------------------------------------------------------- URBs

  private onSubmit(s: Session, cmd: CmdSubmit): void {
    const slot = s.slot!;
    if (cmd.devid !== slot.devid) {
      this.drop(s, `CMD_SUBMIT for devid 0x${cmd.devid.toString(16)}, imported 0x${slot.devid.toString(16)}`);
      return;
    }
    if (s.inflight.has(cmd.seqnum) || s.waiting.some((w) => w.seqnum === cmd.seqnum)) {
      this.drop(s, `seqnum ${cmd.seqnum} is already in flight`);
      return;
    }
    if (s.waiting.length > 0) {
      s.waiting.push(cmd);
      this.updateFlow(s);
      return;
    }
    if (!this.start(s, cmd)) {
      s.waiting.push(cmd);
      this.updateFlow(s);
    }
  }

  /** Start a submit in the engine; false when it must wait (guest memory or the per-client bound). */
  private start(s: Session, cmd: CmdSubmit): boolean {
    const slot = s.slot!;
    const fail = (status: UrbStatus) => this.sendRet(s, cmd, status, 0, new Uint8Array(0), []);
    if (cmd.ep > 15) {
      fail(EINVAL);
      return true;
    }
    if (cmd.ep === 0) {
      const setup = setupOf(cmd.setup);
      if (setup.bmRequestType === SET_ADDRESS.type && setup.bRequest === SET_ADDRESS.request) {
        // vhci never forwards it; the device already has the address the server gave it.
        fail(OK);
        return true;
      }
      if (
        setup.bmRequestType === PORT_RESET.type &&
        setup.bRequest === PORT_RESET.request &&
        setup.wValue === PORT_RESET.feature
      ) {
        this.portReset(s, cmd);
        return true;
      }
    }
    const address = cmd.ep === 0 ? 0 : (cmd.directionIn ? 0x80 : 0) | cmd.ep;
    const table = slot.endpoints.get(slot.configuration) ?? slot.anyEndpoints;
    const entry = cmd.ep === 0 ? { type: EP_CONTROL, interval: 0 } : table.get(address);
    if (entry === undefined) {
      fail(EINVAL);
      return true;
    }
    const packets = cmd.iso.length;
    if ((entry.type === EP_ISO) !== packets > 0) {
      fail(EINVAL);
      return true;
    }
    if (s.inflight.size >= this.maxUrbs) return false;
    let range: GuestRange | null = null;
    if (cmd.transferBufferLength > 0) {
      try {
        range = this.guest.buffers.allocate(
          cmd.transferBufferLength,
          cmd.transferBufferLength >= FRAME_SIZE ? FRAME_SIZE : 64,
        );
      } catch {
        if (s.inflight.size === 0 && this.allIdle()) {
          fail(EINVAL); // larger than guest memory can ever hold
          return true;
        }
        return false;
      }
      if (!cmd.directionIn) this.guest.bytes(range).set(cmd.data.subarray(0, cmd.transferBufferLength));
    }
    const common = {
      port: slot.port,
      device: slot.address,
      endpoint: cmd.ep as EndpointNum,
      directionIn: cmd.directionIn,
      buffer: range === null ? [] : [range],
      shortNotOk: cmd.directionIn && (cmd.transferFlags & TransferFlag.SHORT_NOT_OK) !== 0,
    };
    const zeroPacket = !cmd.directionIn && (cmd.transferFlags & TransferFlag.ZERO_PACKET) !== 0;
    const interval = cmd.interval >= 1 ? cmd.interval : Math.max(1, entry.interval);
    let urb: Urb;
    let kind: ServerUrb["kind"];
    switch (entry.type) {
      case EP_CONTROL:
        kind = "control";
        urb = { type: "control", ...common, setup: setupOf(cmd.setup) };
        break;
      case EP_BULK:
        kind = "bulk";
        urb = { type: "bulk", ...common, zeroPacket };
        break;
      case EP_INTERRUPT:
        kind = "interrupt";
        urb = { type: "interrupt", ...common, zeroPacket, interval };
        break;
      default:
        kind = "isochronous";
        urb = {
          type: "isochronous",
          ...common,
          interval: Math.min(interval, 0xffff),
          iso: {
            asap: (cmd.transferFlags & TransferFlag.ISO_ASAP) !== 0,
            startFrame: cmd.startFrame >>> 0,
            packets: cmd.iso.map((d) => ({ offset: d.offset, length: d.length })),
          },
        };
    }
    const entryUrb: ServerUrb = { cmd, kind, urb, range, unlinks: [] };
    s.inflight.set(cmd.seqnum, entryUrb);
    s.urbs++;
    this.hcd.submitWithCallback(urb, (c) => this.onComplete(s, entryUrb, c));
    return true;
  }

  private allIdle(): boolean {
    for (const s of this.sessions) if (s.inflight.size > 0) return false;
    return true;
  }

  /** A forwarded SET_FEATURE(PORT_RESET): reset in the engine, then give the device its address back. */
  private portReset(s: Session, cmd: CmdSubmit): void {
    const slot = s.slot!;
    const entry: ServerUrb = { cmd, kind: "local", urb: null, range: null, unlinks: [] };
    s.inflight.set(cmd.seqnum, entry);
    this.resetAndAddress(slot).then(
      () => this.onComplete(s, entry, { status: OK, actualLength: 0, startFrame: 0, errorCount: 0 }),
      (err: unknown) => {
        this.log.warn(`${s.peer}: port reset of ${slot.busid} failed: ${(err as Error).message}`);
        this.onComplete(s, entry, { status: EINVAL, actualLength: 0, startFrame: 0, errorCount: 0 });
      },
    );
  }

  private onComplete(s: Session, entry: ServerUrb, c: UrbCompletion): void {
    const cmd = entry.cmd;
    s.inflight.delete(cmd.seqnum);
    let data: Uint8Array = new Uint8Array(0);
    let actual = c.actualLength;
    let iso: IsoDescriptor[] = [];
    const live = s.phase === "urb";
    if (live && entry.urb !== null && !(entry.unlinks.length > 0 && c.status === ECONNRESET)) {
      if (entry.kind === "control" || entry.kind === "local") {
        const setup = setupOf(cmd.setup);
        if (
          c.status === OK &&
          setup.bmRequestType === SET_CONFIGURATION.type &&
          setup.bRequest === SET_CONFIGURATION.request
        ) {
          s.slot!.configuration = setup.wValue & 0xff;
        }
      }
      if (entry.kind === "isochronous") {
        const packets = c.isoPackets;
        iso = cmd.iso.map((d, i) => ({
          offset: d.offset,
          length: d.length,
          actualLength: packets?.[i]?.actualLength ?? 0,
          status: packets?.[i]?.status ?? c.status,
        }));
        actual = iso.reduce((sum, d) => sum + d.actualLength, 0);
        if (cmd.directionIn && entry.range !== null && actual > 0) {
          // IN iso data travels compacted: each packet's actual bytes, in order.
          const bytes = this.guest.bytes(entry.range);
          data = new Uint8Array(actual);
          let at = 0;
          for (const d of iso) {
            data.set(bytes.subarray(d.offset, d.offset + d.actualLength), at);
            at += d.actualLength;
          }
        }
      } else if (cmd.directionIn && entry.range !== null && actual > 0) {
        data = this.guest.bytes(entry.range).subarray(0, actual);
      }
    }
    if (live) {
      if (entry.unlinks.length > 0 && c.status === ECONNRESET) {
        // Cancelled: RET_UNLINK -ECONNRESET, and no RET_SUBMIT for it.
        for (const u of entry.unlinks) this.send(s, encodeRetUnlink(retBase(u, ECONNRESET)));
      } else {
        this.sendRet(s, cmd, c.status, actual, data, iso, iso.length > 0 ? c.startFrame : 0);
        for (const u of entry.unlinks) this.send(s, encodeRetUnlink(retBase(u, OK)));
      }
    }
    if (entry.range !== null) this.guest.buffers.release(entry.range);
    entry.range = null;
    if (s.phase === "closed" && s.inflight.size === 0) s.onDrained?.();
    this.retryWaiting();
  }

  private onUnlink(s: Session, cmd: CmdUnlink): void {
    const slot = s.slot!;
    if (cmd.devid !== slot.devid) {
      this.drop(s, `CMD_UNLINK for devid 0x${cmd.devid.toString(16)}, imported 0x${slot.devid.toString(16)}`);
      return;
    }
    const waitingAt = s.waiting.findIndex((w) => w.seqnum === cmd.unlinkSeqnum);
    if (waitingAt >= 0) {
      // Never reached the engine: cancelled here.
      s.waiting.splice(waitingAt, 1);
      this.send(s, encodeRetUnlink(retBase(cmd.seqnum, ECONNRESET)));
      this.updateFlow(s);
      return;
    }
    const target = s.inflight.get(cmd.unlinkSeqnum);
    if (target === undefined) {
      // Already completed: its RET_SUBMIT is ahead of this in the stream.
      this.send(s, encodeRetUnlink(retBase(cmd.seqnum, OK)));
      return;
    }
    target.unlinks.push(cmd.seqnum);
    if (target.urb !== null && target.unlinks.length === 1) void this.hcd.unlink(target.urb);
  }

  private sendRet(
    s: Session,
    cmd: CmdSubmit,
    status: number,
    actual: number,
    data: Uint8Array,
    iso: readonly IsoDescriptor[],
    startFrame = 0,
  ): void {
    this.send(
      s,
      encodeRetSubmit({
        seqnum: cmd.seqnum,
        devid: 0,
        directionIn: false,
        ep: 0,
        status,
        actualLength: actual,
        startFrame,
        numberOfPackets: iso.length,
        errorCount: iso.filter((d) => d.status !== 0).length,
        data,
        iso,
      }),
    );
  }

  /** Start waiting submits of every client, in order, while memory and bounds allow. */
  private retryWaiting(): void {
    for (const s of this.sessions) {
      while (s.phase === "urb" && s.waiting.length > 0) {
        if (!this.start(s, s.waiting[0]!)) break;
        s.waiting.shift();
      }
      this.updateFlow(s);
      if (s.phase === "urb" && s.waiting.length === 0 && s.queue.length > 0) this.pump(s);
    }
  }

  // ---------------------------------------------------------------- flow control and ends

  private send(s: Session, bytes: Uint8Array): void {
    if (s.phase === "closed") return;
    s.socket.write(bytes);
    if (!s.sendBlocked && s.socket.writableLength > this.maxSendQueue) {
      s.sendBlocked = true;
      this.updateFlow(s);
      s.stallTimer = setTimeout(() => {
        this.drop(
          s,
          `client stopped reading: ${s.socket.writableLength} bytes unsent for ${this.stalledMs} ms`,
        );
      }, this.stalledMs);
    }
  }

  private updateFlow(s: Session): void {
    if (s.phase === "closed") return;
    const pause = s.sendBlocked || s.waiting.length > 0;
    if (pause && !s.paused) {
      s.paused = true;
      s.socket.pause();
    } else if (!pause && s.paused) {
      s.paused = false;
      s.socket.resume();
    }
  }

  /** Malformed or hostile input: log, close this connection only. */
  private drop(s: Session, reason: string): void {
    if (s.phase === "closed") return;
    this.end(s, `protocol error: ${reason}; closing the connection`, "error");
  }

  /** Close after the replies already queued are flushed (refused imports). */
  private finish(s: Session): void {
    s.socket.end();
    this.end(s, null, "info");
  }

  /**
   * The connection is over: stop parsing, cancel everything the client had in
   * flight, and free the device once it all came back.
   */
  private end(s: Session, reason: string | null, level: "info" | "warn" | "error"): void {
    if (s.phase === "closed") return;
    s.phase = "closed";
    if (s.stallTimer !== null) clearTimeout(s.stallTimer);
    s.stallTimer = null;
    s.queue.clear();
    s.waiting.length = 0;
    if (reason !== null) s.socket.destroy();
    const slot = s.slot;
    const inFlight = s.inflight.size;
    if (reason !== null) {
      const what = slot !== null ? `detached ${slot.busid} (${slot.name}): ` : "";
      const urbs = slot !== null ? `; ${inFlight} URBs in flight cancelled` : "";
      this.log[level](`${s.peer}: ${what}${reason}${urbs}`);
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
    for (const entry of s.inflight.values()) if (entry.urb !== null) void this.hcd.unlink(entry.urb);
  }

  /** Stop listening, cancel every client's URBs, release the devices, stop the engine. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      const drains: Promise<void>[] = [];
      for (const s of [...this.sessions]) {
        this.end(s, "server shutting down", "info");
        if (s.slot?.draining) drains.push(s.slot.draining);
      }
      for (const slot of this.slots) if (slot.draining !== null) drains.push(slot.draining);
      await Promise.race([Promise.all(drains), new Promise((r) => setTimeout(r, 3000).unref())]);
      await listenerClosed;
      await this.connection.close();
      this.log.info("server stopped: in-flight URBs completed or cancelled, devices released");
    })();
    return this.closing;
  }
}

function retBase(seqnum: number, status: number) {
  return { seqnum, devid: 0, directionIn: false, ep: 0, status };
}

/** Attach one device on its port and read what the device record needs, through the engine. */
async function describeDevice(
  conn: Connection,
  guest: GuestUsbDriver,
  port: PortNum,
  spec: DeviceSpec,
): Promise<Slot> {
  let summary: Awaited<ReturnType<Connection["attach"]>>;
  try {
    summary = await conn.attach(port, spec);
  } catch (err) {
    throw new UsbipServerError(
      "ERR_USBVIRT_USBIP_DEVICE",
      `cannot export ${describeSpec(spec)}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  const hcd = conn.frontend!;
  await guest.waitForConnect(port);
  await hcd.resetPort(port);
  const zero = 0 as DevAddr;
  const dev = await guest.getDescriptor(port, zero, USB_DT_DEVICE, 0, 18);
  if (dev.length < 18)
    throw new UsbipServerError("ERR_USBVIRT_USBIP_DEVICE", `${summary.name}: short device descriptor`);
  const configs: Uint8Array[] = [];
  for (let i = 0; i < dev[17]!; i++) {
    const head = await guest.getDescriptor(port, zero, USB_DT_CONFIG, i, 9);
    const total = head[2]! | (head[3]! << 8);
    configs.push(await guest.getDescriptor(port, zero, USB_DT_CONFIG, i, total));
  }
  const endpoints = new Map<number, Map<number, EndpointEntry>>();
  const anyEndpoints = new Map<number, EndpointEntry>();
  for (const config of configs) {
    const parsed = parseConfiguration(config);
    const table = new Map<number, EndpointEntry>();
    for (const itf of parsed.interfaces) {
      for (const ep of itf.endpoints) {
        const entry = { type: ep.attributes & 3, interval: ep.interval };
        table.set(ep.address, entry);
        if (!anyEndpoints.has(ep.address)) anyEndpoints.set(ep.address, entry);
      }
    }
    endpoints.set(parsed.value, table);
  }
  const first = configs[0] !== undefined ? parseConfiguration(configs[0]) : { value: 0, interfaces: [] };
  const busid = `1-${port}`;
  const vendor = dev[8]! | (dev[9]! << 8);
  const product = dev[10]! | (dev[11]! << 8);
  const record: DeviceRecord = {
    path: `/sys/devices/platform/usbvirt/usb1/${busid}`,
    busid,
    busnum: 1,
    devnum: port,
    speed: usbipSpeedOf(hcd.portStatus(port).speed),
    idVendor: vendor,
    idProduct: product,
    bcdDevice: dev[12]! | (dev[13]! << 8),
    bDeviceClass: dev[4]!,
    bDeviceSubClass: dev[5]!,
    bDeviceProtocol: dev[6]!,
    bConfigurationValue: first.value,
    bNumConfigurations: dev[17]!,
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
    owner: null,
    draining: null,
    configuration: 0,
    failed: null,
  };
}

function buildAllowList(allow: readonly string[] | undefined): BlockList | null {
  if (allow === undefined || allow.length === 0) return null;
  const list = new BlockList();
  for (const entry of allow) {
    const [address, prefix] = entry.split("/");
    const family = isIP(address ?? "");
    if (family === 0) {
      throw new UsbipServerError(
        "ERR_USBVIRT_USBIP_OPTIONS",
        `allowlist entry ${JSON.stringify(entry)} is not an IP address or subnet`,
      );
    }
    const type = family === 4 ? "ipv4" : "ipv6";
    if (prefix === undefined) list.addAddress(address!, type);
    else {
      const bits = Number(prefix);
      if (!Number.isInteger(bits) || bits < 0 || bits > (family === 4 ? 32 : 128)) {
        throw new UsbipServerError(
          "ERR_USBVIRT_USBIP_OPTIONS",
          `allowlist entry ${JSON.stringify(entry)} has a bad prefix length`,
        );
      }
      list.addSubnet(address!, bits, type);
    }
  }
  return list;
}

function allowed(list: BlockList, remote: string | undefined): boolean {
  if (remote === undefined) return false;
  const mapped = remote.startsWith("::ffff:") ? remote.slice(7) : remote;
  const family = isIP(mapped);
  if (family === 0) return false;
  return list.check(mapped, family === 4 ? "ipv4" : "ipv6");
}
