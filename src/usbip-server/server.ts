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
 *   `maxUnsentBytes` (every reply counts, local answers and RET_UNLINKs too) has
 *   no request started until it reads, and is dropped when it does not read for
 *   `stalledPeerMs` — the per-peer share of src/network-face, as usbredir's.
 *
 * Per client connection: management phase (one request, as usbipd: OP_REQ_DEVLIST
 * answered then closed, or OP_REQ_IMPORT), then the URB phase on the same socket. On import the server resets the
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
 *
 * This file: the listener, accepting a connection (allowlist), each client's lifecycle and its
 * management phase, exporting and withdrawing devices, stats. The rest, one seam each: urb-phase.ts (the
 * URB phase and each client's bounds), session.ts (a client's state and its CMD_SUBMIT records),
 * exported-device.ts (the device slots and describing a device), options.ts (options and their checks).
 */
import { EventEmitter } from "node:events";
import type { BlockList, Server, Socket } from "node:net";
import type { DeviceSpec } from "../devices/spec.js";
import { bytesToFrames, framesToBytes, frameToOffset, guestFrame } from "../dma-map/types.js";
import { Connection } from "../engine/connection.js";
import type { VirtualHostController } from "../frontend/index.js";
import { GuestUsbDriver } from "../guest/guest-driver.js";
import { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import type { PeerBounds } from "../network-face/bounds.js";
import {
  admitPeer,
  ConnectionCap,
  createPausedServer,
  listenAt,
  listeningAt,
  peerName,
} from "../network-face/listener.js";
import { escapingLogger, type FaceLogger, peerText, stderrLogger } from "../network-face/log.js";
import { PeerShare, ReadTarget } from "../network-face/share.js";
import { TlsFace } from "../network-face/tls.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { setAddressSetup } from "../usb/index.js";
import { encodeDevlistReply, encodeImportReply, readOpRequest } from "../usbip/management-pdus.js";
import { OpStatus, opStatusName, USBIP_PORT } from "../usbip/protocol.js";
import { buildAllowList } from "../util/ip-prefix.js";
import { adoptWithReadBuffer, readTlsInto } from "../util/read-into.js";
import { describeDevice, type ExportedDeviceInfo } from "./exported-device.js";
import { checkOptions, UsbipServerError, type UsbipServerOptions } from "./options.js";
import { type Phase, Session, type Slot } from "./session.js";
import { UrbPhase } from "./urb-phase.js";

export type { ExportedDeviceInfo } from "./exported-device.js";
export { UsbipServerError, type UsbipServerOptions } from "./options.js";

/** Bytes a client may send before its import completes (a devlist and an import request are 48). */
const MAX_OP_BYTES = 64 * 1024;
/** Scratch frames per exported device: iso descriptor arrays (a 1024-packet URB takes 4). */
const SCRATCH_FRAMES_PER_DEVICE = 16;
/** Guest memory kept at the start for the server's own enumeration transfers (descriptors at start-up). */
const DRIVER_FRAMES = 32;

export class UsbipServer extends EventEmitter {
  private readonly server: Server;
  private readonly sessions = new Set<Session>();
  private readonly slots: Slot[];
  private readonly log: FaceLogger;
  private readonly hcd: VirtualHostController;
  private readonly allow: BlockList | null;
  private readonly memory: SharedArrayBuffer;
  /** Every client's URBs: admission against its share, the engine, replies, unlinks. */
  private readonly urbPhase: UrbPhase;
  /** Each client's bounds (network-face/bounds.ts), and the cap on connections held at once. */
  private readonly bounds: PeerBounds;
  private readonly cap: ConnectionCap;
  /** Mutual TLS on every connection (null: plain TCP). */
  private readonly tls: TlsFace | null;
  /** The descriptor systemd passed, listened on instead of a port. */
  private readonly listenFd: number | undefined;
  private closing: Promise<void> | null = null;
  /** Each port's region of guest memory (index: port - 1), kept for devices exported later. */
  private readonly regions: readonly { readonly memory: GuestBufferAllocator; readonly bytes: number }[];

  private constructor(
    readonly connection: Connection,
    private readonly guest: GuestUsbDriver,
    slots: Slot[],
    server: Server,
    options: UsbipServerOptions,
    shares: { bounds: PeerBounds; scratchFrames: number; tls: TlsFace | null },
    regions: readonly { readonly memory: GuestBufferAllocator; readonly bytes: number }[],
  ) {
    super();
    this.slots = slots;
    this.regions = regions;
    this.server = server;
    this.hcd = connection.frontend!;
    this.memory = connection.handles.memory[0]!;
    this.log = escapingLogger(options.logger ?? stderrLogger);
    this.allow = buildAllowList(
      options.allow,
      (reason) => new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", reason),
    );
    this.bounds = shares.bounds;
    this.cap = new ConnectionCap(this.bounds.maxConnections, this.log);
    this.tls = shares.tls;
    this.listenFd = options.listenFd;
    this.urbPhase = new UrbPhase(
      this.hcd,
      new Uint8Array(this.memory),
      this.log,
      { scratchShare: shares.scratchFrames, stallPortReset: options.portReset === "stall" },
      { drop: (s, reason) => this.drop(s, reason), resetAndAddress: (slot) => this.resetAndAddress(slot) },
    );
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
    const { devices, guestMemoryMiB: mib, bounds, tls } = checkOptions(options); // before any worker starts
    const log = escapingLogger(options.logger ?? stderrLogger);
    const tlsFace = tls === null ? null : new TlsFace(tls, bounds.handshakeMs, log);
    const specs = options.devices;
    const scratchFrames = Math.max(64, SCRATCH_FRAMES_PER_DEVICE * devices);
    const frames = bytesToFrames(mib * 1024 * 1024);
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
        const start = frameToOffset(guestFrame(first + i * perDevice));
        const bytes = framesToBytes(perDevice);
        const region = new GuestBufferAllocator(start, start + bytes);
        regions.push({ memory: region, bytes });
        const spec = specs[i];
        if (spec === null || spec === undefined) continue;
        slots.push(await describeDevice(connection, guest, (i + 1) as PortNum, spec, region, bytes));
      }
      // Paused: accept() hands each connection to a socket that reads where the server says (onread).
      const server = createPausedServer();
      const self = new UsbipServer(
        connection,
        guest,
        slots,
        server,
        options,
        { bounds, scratchFrames: Math.floor(scratchFrames / devices), tls: tlsFace },
        regions,
      );
      await listenAt(
        server,
        options.listenFd !== undefined
          ? { fd: options.listenFd }
          : { port: options.port ?? USBIP_PORT, host: options.host ?? "127.0.0.1" },
        self.log,
      );
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

  /**
   * Cut `busid`'s importer off (its connection is closed: vhci reports the device gone) and keep the
   * device exported for the next import. Resolves false when `busid` is not exported or not imported.
   */
  async detachClient(busid: string, reason: string): Promise<boolean> {
    const slot = this.slots.find((s) => s.busid === busid);
    if (slot === undefined || slot.owner === null) return false;
    this.end(slot.owner, reason, "info");
    if (slot.draining !== null) await slot.draining;
    return true;
  }

  /** Whether connections need mutual TLS. */
  get tlsRequired(): boolean {
    return this.tls !== null;
  }

  /** Where the server listens. */
  /** Where it listens: its TCP address (a socket systemd passed: that socket's own); on a Unix socket, host "" and port 0. */
  get address(): { host: string; port: number } {
    const at = listeningAt(this.server, this.listenFd);
    return at !== null && "host" in at ? at : { host: "", port: 0 };
  }

  /** The Unix-domain socket it listens on (one systemd passed), or null on TCP. */
  get socketPath(): string | null {
    const at = listeningAt(this.server, this.listenFd);
    return at !== null && "path" in at ? at.path : null;
  }

  get devices(): readonly ExportedDeviceInfo[] {
    return this.slots.map((s) => ({
      busid: s.busid,
      devid: s.devid,
      port: s.port,
      name: s.name,
      spec: s.spec,
      record: s.record,
      ...(s.serial !== undefined ? { serial: s.serial } : {}),
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
          urbs: s.owner!.share.urbs,
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
    const peer = peerName(raw);
    if (this.closing !== null) {
      raw.destroy();
      return;
    }
    if (!admitPeer(raw, peer, this.allow, this.log)) return;
    if (!this.cap.admit(raw, peer)) return;
    if (this.tls === null) {
      const reads = new ReadTarget();
      const adopted = adoptWithReadBuffer(raw, reads.options);
      this.open(adopted ?? raw, peer, adopted === null ? null : reads);
      return;
    }
    // TLS: the plaintext lands as a plain connection's reads do (read-into.ts), where this Node allows.
    this.tls.handshake(raw, peer, {
      secure: (socket, name) => {
        if (this.closing !== null) {
          socket.destroy();
          this.cap.release();
          return;
        }
        const reads = new ReadTarget();
        this.open(socket, name, readTlsInto(socket, reads.options) ? reads : null);
      },
      refused: () => this.cap.release(),
    });
  }

  /** An admitted connection (through its TLS handshake, if any); `reads` when it reads through onread. */
  private open(socket: Socket, peer: string, reads: ReadTarget | null): void {
    const s = new Session(
      this.urbPhase,
      peer,
      socket,
      (session) =>
        new PeerShare(socket, this.bounds, {
          batch: (fn) => this.hcd.batch(fn),
          drop: (reason) => this.drop(session, reason),
          owed: () => session.writer?.owed ?? socket.writableLength,
          memoryInUse: () =>
            session.slot === null ? 0 : session.slot.memoryBytes - session.slot.memory.freeBytes,
          forcing: (ms) =>
            this.log.warn(
              `${peer}: a request on ${session.slot?.busid} waited ${ms} ms for its share of the engine ` +
                `(${session.share.urbs} URBs, ${session.slot === null ? 0 : session.slot.memoryBytes - session.slot.memory.freeBytes} bytes of guest memory in use): -ENOMEM`,
              session.fields(),
            ),
        }),
      this.log,
    );
    if (reads !== null) {
      reads.sink = {
        get readsDone() {
          return s.phase === "closed";
        },
        directTarget: () => s.directTarget(),
        received: (chunk) => this.onChunk(s, chunk, true),
        receivedDirect: (n) => {
          if (s.phase === "urb") this.urbPhase.receivedDirect(s, n);
        },
      };
    } else socket.on("data", (chunk: Buffer) => this.onChunk(s, chunk, false));
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
    // The whole management phase (one request, and the import it asks for) within handshakeTimeoutMs.
    s.share.startHandshake((ms) => this.drop(s, `management phase not done within ${ms} ms`));
    socket.resume();
  }

  /** Bytes from the socket; `reused` when `chunk` is the read buffer, read into again next time. */
  private onChunk(s: Session, chunk: Buffer, reused: boolean): void {
    if (s.phase === "closed") return;
    if (s.phase === "urb") {
      this.urbPhase.received(s, chunk);
      return;
    }
    // Management phase (or an import in progress): a few bytes, framed by the op reader.
    if (s.queue.length + chunk.length > MAX_OP_BYTES) {
      this.drop(s, `more than ${MAX_OP_BYTES} bytes before an import completed`);
      return;
    }
    s.queue.push(reused ? Buffer.from(chunk) : chunk);
    this.pumpOp(s);
    s.share.watchRequest();
  }

  /**
   * Management phase: one request per connection, as Linux's usbipd answers — a device list is answered
   * and the connection closed; an import is answered and the URB phase follows on the same connection.
   */
  private pumpOp(s: Session): void {
    if (s.phase !== "op") return;
    const r = readOpRequest(s.queue);
    if (r.kind === "need") return;
    if (r.kind === "malformed") {
      this.drop(s, r.reason);
      return;
    }
    if (r.frame.op === "devlist") {
      this.log.info(`${s.peer}: device list (${this.slots.length} devices)`, s.fields());
      s.socket.end(encodeDevlistReply(this.slots.map((slot) => slot.record)));
      this.end(s, null, "info");
    } else void this.importDevice(s, r.frame.busid, r.frame.busidValid);
  }

  private async importDevice(s: Session, busid: string, busidValid: boolean): Promise<void> {
    const slot = busidValid ? this.slots.find((x) => x.busid === busid) : undefined;
    const refuse = (status: OpStatus, why: string) => {
      this.log.warn(`${s.peer}: import of ${peerText(busid)} refused (${opStatusName(status)}): ${why}`, {
        client: s.peer,
        busid,
      });
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
    s.share.close();
    s.warnings.flush();
    this.cap.release();
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
      this.tls?.close();
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
