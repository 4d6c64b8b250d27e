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
 * resource is bounded, by the bounds both servers share (network-face/bounds.ts): URBs in the engine
 * (`maxUrbsPerPeer`), guest memory (its region), unsent replies of every kind (`maxUnsentBytes`, then
 * `stalledPeerMs`), device-state requests queued (MAX_QUEUED_REQUESTS), the wait for a hello
 * (`handshakeTimeoutMs`), a half-received packet (`requestTimeoutMs`), connections (`maxConnections`) and
 * the wait for its share of the engine (`blockedRequestMs`, then the packet is answered `inval`).
 *
 * This file: listening or dialling (allowlist, one holder at a time, reconnect backoff), each connection's
 * lifecycle (hello and its timer, the end and the drain), announcing the device, the device leaving and
 * coming back, the VMM's filter, and the dispatch of every packet that is not a data packet. The rest,
 * one seam each: data-packets.ts (data packets, flow control, the streams' context), device-requests.ts
 * (configuration, alternate settings, reset), streams.ts (interrupt and iso streams), session.ts (a
 * connection's state), vmm-filter.ts (the VMM's filter, judged), options.ts (options and their checks).
 */
import { EventEmitter } from "node:events";
import { type BlockList, connect as netConnect, type Server, type Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { PortStartError } from "../backend/port-link.js";
import { describeSpec } from "../devices/spec.js";
import { bytesToFrames, frameToOffset, guestFrame } from "../dma-map/types.js";
import { Connection } from "../engine/connection.js";
import type { VirtualHostController } from "../frontend/index.js";
import { type DeviceDescription, readDeviceDescription } from "../guest/device-description.js";
import { GuestUsbDriver } from "../guest/guest-driver.js";
import { GuestBufferAllocator } from "../guest/guest-memory-allocator.js";
import type { PeerBounds } from "../network-face/bounds.js";
import {
  admitPeer,
  ConnectionCap,
  createPausedServer,
  type ListeningAt,
  listenAt,
  listeningAt,
  peerName,
  RefusalLog,
} from "../network-face/listener.js";
import { escapingLogger, type FaceLogger, peerText, stderrLogger } from "../network-face/log.js";
import { PeerShare, ReadTarget } from "../network-face/share.js";
import { TlsFace } from "../network-face/tls.js";
import { connectTls, type TlsClientSettings } from "../tls/tls-settings.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { endpointIsIn, setConfigurationSetup } from "../usb/index.js";
import { buildAllowList } from "../util/ip-prefix.js";
import { adoptWithReadBuffer, readTlsInto } from "../util/read-into.js";
import { DataPackets, hex, idKey } from "./data-packets.js";
import { RedirDeviceModel, redirSpeedOf } from "./device-model.js";
import { DeviceRequests } from "./device-requests.js";
import { checkOptions, UsbredirServerError, type UsbredirServerOptions } from "./options.js";
import {
  type Caps,
  capsOf,
  decodeHello,
  encodeAltSettingStatus,
  encodeBulkReceivingStatus,
  encodeBulkStreamsStatus,
  encodeDeviceConnect,
  encodeEmpty,
  encodeEpInfo,
  encodeHello,
  encodeInterfaceInfo,
  encodeStatusPair,
  hasCap,
  type Id,
  negotiate,
  RedirCap,
  RedirEpType,
  type RedirPacket,
  RedirStatus,
  RedirType,
  redirTypeName,
} from "./protocol.js";
import { judgeVmmFilter } from "./vmm-filter.js";

export { redirStatusOf } from "./data-packets.js";
export {
  type UsbredirEndpoint,
  UsbredirServerError,
  type UsbredirServerOptions,
} from "./options.js";

import { Session } from "./session.js";
import {
  isoOut,
  MAX_ISO_PKTS_PER_URB,
  MAX_ISO_URBS,
  startInterrupt,
  startIso,
  stopInterrupt,
  stopIso,
} from "./streams.js";

/** What we advertise: what QEMU's xHCI needs (64-bit ids, 32-bit bulk lengths, ep_info packet sizes) and the rest we implement. */
export const HOST_CAPS: Caps = capsOf(
  RedirCap.CONNECT_DEVICE_VERSION,
  RedirCap.FILTER,
  RedirCap.DEVICE_DISCONNECT_ACK,
  RedirCap.EP_INFO_MAX_PACKET_SIZE,
  RedirCap.IDS_64BIT,
  RedirCap.BULK_LENGTH_32BIT,
  RedirCap.BULK_STREAMS,
);

const PORT = 1 as PortNum;
const ADDRESS = 1 as DevAddr;
const DRIVER_FRAMES = 16;
const SCRATCH_FRAMES = 64;

/**
 * Plaintext per TLS record we send to QEMU. Its socket chardev reads at most 4096 bytes per wakeup and
 * (7.2 at least) waits for the socket to be readable again for the rest: plaintext that gnutls decrypted
 * and still holds is never read, so a 4106-byte data packet in one record stalls the link. Records of at
 * most 4096 bytes are read whole each time. Set once QEMU's hello named it: until then we send only our
 * own hello, far smaller. Any other guest keeps TLS's 16 KiB records (a quarter of the records to seal
 * and open per byte); OpenSSL cannot raise the size again once lowered, so it is never lowered first.
 */
const QEMU_TLS_RECORD_BYTES = 4096;

/** QEMU's usb-redir names itself "qemu usb-redir guest <version>" (hw/usb/redirect.c); any "qemu…" counts. */
function isQemuGuest(version: string): boolean {
  return /^qemu/i.test(version);
}

export class UsbredirServer extends EventEmitter {
  private readonly log: FaceLogger;
  private readonly hcd: VirtualHostController;
  /** The data path: data packets, the streams, flow control (data-packets.ts). */
  private readonly packets: DataPackets;
  /** The device-state requests (device-requests.ts). */
  private readonly requests: DeviceRequests;
  private readonly shared: SharedArrayBuffer;
  private readonly allow: BlockList | null;
  /** Each connection's bounds (network-face/bounds.ts), and the cap on connections held at once. */
  private readonly bounds: PeerBounds;
  private readonly cap: ConnectionCap;
  /** Listen modes: mutual TLS on every connection (null: plain TCP). */
  private readonly tls: TlsFace | null;
  /** Connect mode: TLS to the VMM (null: plain TCP). */
  private readonly connectTls: TlsClientSettings | null;
  /** Connections refused because the device is redirected to another peer: logged once per interval. */
  private readonly busyRefusals: RefusalLog;
  private readonly version: string;
  private listener: Server | null = null;
  private session: Session | null = null;
  private readonly sessions = new Set<Session>();
  /** Resolves once the previous holder's URBs all came back. */
  private draining: Promise<void> = Promise.resolve();
  private failed: string | null = null;
  /** The failure was the device going away (unplug), not misbehaving. */
  private gone = false;
  /** The device came back and is being described. */
  private returning: Promise<void> | null = null;
  private closing: Promise<void> | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectDelay: number;
  private readonly counters = { connections: 0 };

  private constructor(
    readonly connection: Connection,
    private readonly guest: GuestUsbDriver,
    readonly name: string,
    description: DeviceDescription,
    private readonly options: UsbredirServerOptions,
    checked: ReturnType<typeof checkOptions>,
  ) {
    super();
    this.hcd = connection.frontend!;
    const shared = connection.handles.memory[0]!;
    this.shared = shared;
    const first = frameToOffset(guestFrame(1 + DRIVER_FRAMES));
    const end = frameToOffset(guestFrame(connection.handles.scratchFirstFrame));
    this.log = escapingLogger(options.logger ?? stderrLogger);
    const bounds = checked.bounds;
    this.bounds = bounds;
    this.cap = new ConnectionCap(bounds.maxConnections, this.log);
    this.tls = checked.tls === null ? null : new TlsFace(checked.tls, bounds.handshakeMs, this.log);
    this.connectTls = checked.connectTls;
    this.busyRefusals = new RefusalLog(this.log);
    this.allow = buildAllowList(
      options.allow,
      (reason) => new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", reason),
    );
    this.version = options.version ?? "usbvirt";
    this.reconnectDelay = options.reconnectMinMs ?? 250;
    this.packets = new DataPackets(
      {
        hcd: this.hcd,
        port: PORT,
        deviceAddress: ADDRESS,
        memory: new GuestBufferAllocator(first, end),
        memoryBytes: new Uint8Array(shared),
        regionBytes: end - first,
        isoScratchFrames: SCRATCH_FRAMES / 2,
      },
      new RedirDeviceModel(description, redirSpeedOf(this.hcd.portStatus(PORT).speed)),
      name,
      this.log,
      {
        deliver: (s, p, typeHeader, data) => this.deliver(s, p, typeHeader, data),
        drop: (s, reason) => this.drop(s, reason),
        applyConfiguration: (s, value) => this.requests.applyConfiguration(s, value),
        applyAlternate: (s, itf, alt) => this.requests.applyAlternate(s, itf, alt),
        disconnectGuest: (s) => this.disconnectGuest(s),
      },
    );
    this.requests = new DeviceRequests(this.hcd, guest, PORT, ADDRESS, name, this.log, this.packets, {
      stopStreams: (s) => this.stopStreams(s),
      disconnectGuest: (s) => this.disconnectGuest(s),
    });
    connection.on("port-failed", (_port: number, reason: string, gone: boolean) => {
      this.failed = reason;
      this.gone = gone;
      this.log.error(`${this.name} ${gone ? "went away" : "failed"}: ${reason}`);
      if (this.session !== null) this.disconnectGuest(this.session);
    });
    // A device that comes back (replugged, or a USB/IP import reconnected) is announced again.
    this.hcd.on("portChange", (status) => {
      if (status.port !== PORT) return;
      if (status.connected && this.failed !== null) {
        // Describing it resets the port (more port changes): one return at a time.
        this.returning ??= this.returned().finally(() => {
          this.returning = null;
        });
      } else if (!status.connected && this.failed === null) {
        // Taken off its port without a failure (detached by an embedder, or unplugged).
        this.failed = "disconnected";
        this.gone = true;
        this.log.warn(`${this.name} was disconnected`);
        if (this.session !== null) this.disconnectGuest(this.session);
      }
    });
  }

  /** The device as the guest was told of it (the data path checks packets against it). */
  private get model(): RedirDeviceModel {
    return this.packets.model;
  }
  private set model(model: RedirDeviceModel) {
    this.packets.model = model;
  }

  /** Bring up the engine, attach and describe the device, then listen or connect. */
  static async start(options: UsbredirServerOptions): Promise<UsbredirServer> {
    const checked = checkOptions(options);
    const { guestMemoryMiB: mib } = checked;
    const connection = await Connection.create({
      backendThread: "shared",
      ...options.connection,
      ports: 1,
      memory: bytesToFrames(mib * 1024 * 1024),
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
      const self = new UsbredirServer(connection, guest, name, description, options, checked);
      if (options.connect !== undefined) self.dial();
      else await self.listen();
      return self;
    } catch (err) {
      await connection.close().catch(() => undefined);
      throw err;
    }
  }

  /** The device's vendor and product id, device class and serial (as announced). */
  get identity(): { vendorId: number; productId: number; deviceClass: number; serial?: string } {
    const d = this.model.description;
    return {
      vendorId: d.vendorId,
      productId: d.productId,
      deviceClass: d.deviceClass,
      ...(d.serial !== undefined ? { serial: d.serial } : {}),
    };
  }

  /** The Unix-domain socket the server listens on (listen mode on a path, or one systemd passed), or null. */
  get socketPath(): string | null {
    const at = this.listening();
    return at !== null && "path" in at ? at.path : null;
  }

  /** Where the server listens (listen mode on a TCP port, or one systemd passed). */
  get address(): { host: string; port: number } | null {
    const at = this.listening();
    return at !== null && "host" in at ? at : null;
  }

  private listening(): ListeningAt | null {
    return this.listener === null ? null : listeningAt(this.listener, this.options.listenFd);
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
    gone: boolean;
  } {
    const s = this.session;
    return {
      peer: s?.peer ?? null,
      announced: s?.announced ?? false,
      urbs: s?.share.urbs ?? 0,
      memoryBytes: this.packets.memoryInUse,
      unsentBytes: s?.unsent ?? 0,
      connections: this.counters.connections,
      packets: s?.packets ?? 0,
      failed: this.failed,
      gone: this.failed !== null && this.gone,
    };
  }

  // ---------------------------------------------------------------- connections

  private async listen(): Promise<void> {
    // Paused: open() hands each connection to a socket that reads where the session says (onread).
    const server = createPausedServer();
    this.listener = server;
    server.on("connection", (socket) => {
      const peer = peerName(socket);
      if (this.closing !== null) {
        socket.destroy();
        return;
      }
      if (!admitPeer(socket, peer, this.allow, this.log)) return;
      if (this.session !== null) {
        this.busyRefusals.refuse(peer, `${this.name} is redirected to ${this.session.peer}`);
        socket.destroy();
        return;
      }
      if (!this.cap.admit(socket, peer)) return;
      if (this.tls === null) {
        const reads = new ReadTarget();
        const adopted = adoptWithReadBuffer(socket, reads.options);
        this.open(adopted ?? socket, peer, adopted === null ? null : reads);
        return;
      }
      // TLS: the plaintext lands as a plain connection's reads do (read-into.ts), where this Node allows.
      this.tls.handshake(socket, peer, {
        secure: (tlsSocket, name) => {
          if (this.closing !== null || this.session !== null) {
            if (this.session !== null) {
              this.busyRefusals.refuse(name, `${this.name} is redirected to ${this.session.peer}`);
            }
            tlsSocket.destroy();
            this.cap.release();
          } else {
            const reads = new ReadTarget();
            this.open(tlsSocket, name, readTlsInto(tlsSocket, reads.options) ? reads : null);
          }
        },
        refused: () => this.cap.release(),
      });
    });
    const o = this.options;
    await listenAt(
      server,
      o.listenFd !== undefined
        ? { fd: o.listenFd }
        : "path" in o.listen!
          ? { path: o.listen.path }
          : { port: o.listen!.port, host: o.listen!.host ?? "127.0.0.1" },
      this.log,
    );
  }

  /** Connect mode: one attempt now; on failure or when the link drops, again after a backoff. */
  private dial(): void {
    if (this.closing !== null) return;
    const target = this.options.connect!;
    const { host, port } = target;
    const peer = target.path !== undefined ? `unix:${target.path}` : `${host}:${port}`;
    const reads = new ReadTarget();
    const tls = this.connectTls;
    const socket =
      target.path !== undefined
        ? netConnect({ path: target.path, onread: reads.options })
        : tls === null
          ? netConnect({
              host: host!,
              port: port!,
              noDelay: true,
              keepAlive: true,
              keepAliveInitialDelay: 30_000,
              onread: reads.options,
            })
          : connectTls({ host: host!, port: port!, onread: reads.options }, tls);
    if (tls !== null) socket.setKeepAlive(true, 30_000);
    let opened = false;
    // With TLS the connection is opened once the VMM's certificate passed (and TLS reads go through onread too).
    socket.once(tls === null ? "connect" : "verified", () => {
      opened = true;
      this.log.info(`connected to ${peer}`, { client: peer });
      if (this.cap.admit(socket, peer)) this.open(socket, peer, reads);
      else this.redial();
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

  /** A new connection; `reads` when its socket reads through onread (else 'data' events). */
  private open(socket: Socket, peer: string, reads: ReadTarget | null): void {
    const s = new Session(
      this.packets,
      socket,
      peer,
      this.shared,
      (session) =>
        new PeerShare(socket, this.bounds, {
          batch: (fn) => this.hcd.batch(fn),
          drop: (reason) => this.drop(session, reason),
          owed: () => session.unsent,
          memoryInUse: () => this.packets.memoryInUse,
          forcing: (ms) => this.packets.forcing(session, ms),
          drained: () => this.packets.drained(session),
        }),
      this.log,
    );
    this.session = s;
    this.sessions.add(s);
    this.counters.connections++;
    socket.setNoDelay(true);
    if (reads !== null) {
      const packets = this.packets;
      reads.sink = {
        get readsDone() {
          return s.closed;
        },
        directTarget: () => s.reader.directTarget,
        received: (chunk) => packets.received(s, chunk, true),
        receivedDirect: (n) => packets.receivedDirect(s, n),
      };
    } else socket.on("data", (chunk: Buffer) => this.packets.received(s, chunk, false));
    socket.on("error", (err) => {
      if (!s.closed) this.log.warn(`${peer}: socket error: ${err.message}`, s.fields());
    });
    socket.on("close", () => {
      const cut = s.reader.partialBytes;
      const partial = cut > 0 ? ` with ${cut} bytes of an incomplete packet` : "";
      this.end(s, `peer closed the connection${partial}`, partial === "" ? "info" : "warn");
    });
    s.send(encodeHello(this.version, HOST_CAPS));
    socket.resume();
    s.share.startHandshake((ms) => {
      if (s.negotiated === null) this.drop(s, `no hello within ${ms} ms`);
    });
  }

  /** A whole packet from the guest that is not a data packet (those start in data-packets.ts). */
  private deliver(s: Session, p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    if (s.closed) return;
    s.packets++;
    if (p.type === RedirType.HELLO) {
      this.hello(s, typeHeader, data);
      return;
    }
    const n = s.negotiated!;
    const id: Id = { low: p.idLow, high: p.idHigh };
    if (p.type === RedirType.RESET && s.resetMerged) {
      s.resetMerged = false;
      return;
    }
    if (s.forcedRequest && this.refuseForced(s, p, id)) return;
    switch (p.type) {
      case RedirType.SET_CONFIGURATION: {
        const value = p.configuration;
        this.serialize(s, true, () => this.requests.setConfiguration(s, id, value));
        return;
      }
      case RedirType.GET_CONFIGURATION:
        this.serialize(s, true, () => this.requests.getConfiguration(s, id));
        return;
      case RedirType.SET_ALT_SETTING: {
        const { interface: itf, alt } = p;
        this.serialize(s, true, () => this.requests.setAlternate(s, id, itf, alt));
        return;
      }
      case RedirType.GET_ALT_SETTING: {
        const itf = p.interface;
        this.serialize(s, true, () => this.requests.getAlternate(s, id, itf));
        return;
      }
      case RedirType.RESET:
        s.resetQueued = true;
        this.serialize(s, true, () => {
          s.resetQueued = false;
          return this.requests.reset(s);
        });
        return;
      case RedirType.CANCEL_DATA_PACKET:
        this.packets.cancel(s, idKey(p.idLow, p.idHigh));
        return;
      case RedirType.START_INTERRUPT_RECEIVING:
        this.startInterrupt(s, id, p.endpoint);
        return;
      case RedirType.STOP_INTERRUPT_RECEIVING:
        stopInterrupt(this.packets, s, p.endpoint);
        // As for start: QEMU's parser refuses an interrupt_receiving_status for an OUT endpoint.
        if (endpointIsIn(p.endpoint)) {
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
        isoOut(this.packets, s, p.endpoint, data);
        return;
      case RedirType.ALLOC_BULK_STREAMS:
      case RedirType.FREE_BULK_STREAMS: {
        const alloc = p.type === RedirType.ALLOC_BULK_STREAMS;
        const streams = alloc ? p.noStreams : 0;
        const addresses = this.requests.streamEndpoints(s, p.endpoints, streams);
        // A refusal is answered at once (a flood of them queues nothing); a valid one goes to the device.
        if (addresses === null)
          s.send(encodeBulkStreamsStatus(n, id, p.endpoints, streams, RedirStatus.INVAL));
        else if (alloc)
          this.serialize(s, true, () =>
            this.requests.allocStreams(s, id, { eps: p.endpoints, streams, addresses }),
          );
        else this.serialize(s, true, () => this.requests.freeStreams(s, id, p.endpoints, addresses));
        return;
      }
      case RedirType.START_BULK_RECEIVING:
      case RedirType.STOP_BULK_RECEIVING:
        s.warnings.warn(`${s.peer}: ${redirTypeName(p.type)}: buffered bulk input is not supported`);
        // QEMU's parser refuses a bulk_receiving_status for an OUT endpoint: answer IN ones only.
        if (endpointIsIn(p.endpoint)) {
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
        if (s.awaitingAck) {
          s.awaitingAck = false;
          if (this.failed === null) this.serialize(s, false, () => this.announce(s));
        }
        return;
      default:
        return;
    }
  }

  private hello(s: Session, typeHeader: Uint8Array, data: Uint8Array): void {
    const { version, caps } = decodeHello(typeHeader, data);
    const n = negotiate(HOST_CAPS, caps);
    s.negotiate(n);
    s.peerVersion = version;
    if (s.socket instanceof TLSSocket && isQemuGuest(version))
      s.socket.setMaxSendFragment(QEMU_TLS_RECORD_BYTES);
    s.share.handshakeDone();
    this.reconnectDelay = this.options.reconnectMinMs ?? 250;
    this.log.info(
      `${s.peer}: usbredir peer ${peerText(version)} (caps ${hex(caps)}, ${n.headerSize === 16 ? "64" : "32"}-bit ids)`,
      s.fields(),
    );
    this.serialize(s, false, () => this.announce(s));
  }

  /**
   * Device-state requests run in order, after the previous holder's URBs drained. `peer`: one of the
   * peer's requests, counted against MAX_QUEUED_REQUESTS until it is done (data-packets.ts admit).
   */
  private serialize(s: Session, peer: boolean, step: () => Promise<void>): void {
    s.steps.push({ peer, step });
    if (!s.stepping) void this.runSteps(s);
  }

  /** Run `s`'s queued device-state requests one after another (one loop per connection, not a promise per request). */
  private async runSteps(s: Session): Promise<void> {
    s.stepping = true;
    try {
      for (let next = s.steps.shift(); next !== undefined; next = s.steps.shift()) {
        try {
          if (!s.closed) await next.step();
        } catch (err) {
          if (!s.closed) this.drop(s, `device request failed: ${(err as Error).message}`);
        }
        if (next.peer) this.packets.requestDone(s);
      }
    } finally {
      s.stepping = false;
    }
  }

  /**
   * A device-state request that waited blockedRequestMs behind the others: answered inval without being
   * performed (a reset, which has no status, is not performed); true when it was such a request.
   */
  private refuseForced(s: Session, p: RedirPacket, id: Id): boolean {
    s.forcedRequest = false;
    const n = s.negotiated!;
    switch (p.type) {
      case RedirType.SET_CONFIGURATION:
      case RedirType.GET_CONFIGURATION:
        s.send(
          encodeStatusPair(
            n,
            RedirType.CONFIGURATION_STATUS,
            id,
            RedirStatus.INVAL,
            this.model.configuration,
          ),
        );
        break;
      case RedirType.SET_ALT_SETTING:
      case RedirType.GET_ALT_SETTING:
        s.send(encodeAltSettingStatus(n, id, RedirStatus.INVAL, p.interface, 0xff));
        break;
      case RedirType.RESET:
        s.warnings.warn(`${s.peer}: reset waited behind the device's other requests too long: not performed`);
        break;
      default:
        return false;
    }
    this.packets.requestDone(s);
    return true;
  }

  /** Reset, address and configure the device through the engine, then tell the guest about it. */
  private async announce(s: Session): Promise<void> {
    await this.draining;
    if (s.closed || s.refusedBy !== null) return;
    if (this.failed !== null) {
      this.log.warn(
        `${s.peer}: ${this.name} is not available (${this.failed}); nothing to announce`,
        s.fields(),
      );
      return;
    }
    const first = this.model.description.configurations[0]?.value ?? 0;
    await this.requests.resetAndAddress();
    if (first !== 0) await this.requests.standardRequest(setConfigurationSetup(first));
    this.model.configure(first);
    // The VMM's filter may have arrived while the device was being reset and configured.
    if (s.closed || s.refusedBy !== null) return;
    const n = s.negotiated!;
    s.send(encodeEpInfo(n, this.model.endpoints, this.model.controlMaxPacket));
    s.send(encodeInterfaceInfo(n, this.model.interfaces));
    s.send(encodeDeviceConnect(n, this.model.connectInfo));
    s.announced = true;
    this.log.info(`${s.peer}: redirected ${this.name}`, s.fields());
    this.emit("connect", s.peer);
  }

  /** The VMM's device filter: a device it refuses is disconnected from the guest (vmm-filter.ts). */
  private filter(s: Session, data: Uint8Array): void {
    const v = judgeVmmFilter(data, this.model);
    switch (v.kind) {
      case "malformed":
        this.drop(s, v.reason);
        return;
      case "unreadable":
        this.log.warn(
          `${s.peer}: the VMM's device filter ${peerText(v.text)} cannot be read (${v.error}); ignored`,
          s.fields(),
        );
        return;
      case "allowed":
        this.log.info(
          `${s.peer}: the VMM's device filter ${peerText(v.text)} allows ${this.name} (${v.why})`,
          s.fields(),
        );
        return;
      case "refused":
        s.refusedBy = v.why;
        this.log.error(
          `${s.peer}: the VMM's device filter ${peerText(v.text)} refuses ${this.name}: ${v.why}`,
          s.fields(),
        );
        this.disconnectGuest(s);
    }
  }

  /** The guest loses the device (it sees a USB disconnect); the connection stays for its return. */
  private disconnectGuest(s: Session): void {
    if (!s.announced || s.closed || s.negotiated === null) return;
    s.announced = false;
    this.stopStreams(s);
    s.awaitingAck = hasCap(s.negotiated.caps, RedirCap.DEVICE_DISCONNECT_ACK);
    s.send(encodeEmpty(s.negotiated, RedirType.DEVICE_DISCONNECT));
  }

  /** The port has a device again: describe it anew and offer it to the connected guest. */
  private async returned(): Promise<void> {
    let description: DeviceDescription;
    try {
      description = await readDeviceDescription(this.guest, PORT);
    } catch (err) {
      this.log.error(`${this.name} came back but cannot be described: ${(err as Error).message}`);
      return;
    }
    this.failed = null;
    this.model = new RedirDeviceModel(description, redirSpeedOf(this.hcd.portStatus(PORT).speed));
    this.log.info(`${this.name} is back`);
    const s = this.session;
    if (s !== null && !s.closed && s.negotiated !== null && !s.announced && !s.awaitingAck) {
      this.serialize(s, false, () => this.announce(s));
    }
  }

  // ---------------------------------------------------------------- interrupt and iso streams (streams.ts)

  private startInterrupt(s: Session, id: Id, endpoint: number): void {
    const n = s.negotiated!;
    const ep = this.model.endpoint(endpoint);
    if (!s.announced || ep === undefined || ep.type !== RedirEpType.INTERRUPT || !endpointIsIn(endpoint)) {
      s.warnings.warn(
        `${s.peer}: start_interrupt_receiving on ${hex(endpoint)}: not an interrupt IN endpoint`,
      );
      // The status needs an IN endpoint (QEMU's parser): an OUT one gets no answer, as it asked for nothing valid.
      if (endpointIsIn(endpoint)) {
        s.send(encodeStatusPair(n, RedirType.INTERRUPT_RECEIVING_STATUS, id, RedirStatus.INVAL, endpoint));
      }
      return;
    }
    startInterrupt(this.packets, s, endpoint, ep.maxPacketSize, ep.interval);
    s.send(encodeStatusPair(n, RedirType.INTERRUPT_RECEIVING_STATUS, id, RedirStatus.SUCCESS, endpoint));
  }

  private startIso(s: Session, id: Id, endpoint: number, pktsPerUrb: number, noUrbs: number): void {
    const ep = this.model.endpoint(endpoint);
    const ok =
      s.announced &&
      ep !== undefined &&
      ep.type === RedirEpType.ISO &&
      pktsPerUrb >= 1 &&
      pktsPerUrb <= MAX_ISO_PKTS_PER_URB &&
      noUrbs >= 1 &&
      noUrbs <= MAX_ISO_URBS;
    if (!ok) {
      s.warnings.warn(
        `${s.peer}: start_iso_stream on ${hex(endpoint)} (${pktsPerUrb} packets × ${noUrbs} URBs) refused`,
      );
    } else {
      startIso(this.packets, s, endpoint, pktsPerUrb, noUrbs, ep.maxPacketSize, ep.interval);
    }
    const status = ok ? RedirStatus.SUCCESS : RedirStatus.INVAL;
    s.send(encodeStatusPair(s.negotiated!, RedirType.ISO_STREAM_STATUS, id, status, endpoint));
  }

  private stopIso(s: Session, endpoint: number): void {
    const dropped = stopIso(this.packets, s, endpoint);
    if (dropped > 0)
      this.log.warn(`${s.peer}: iso stream ${hex(endpoint)} dropped ${dropped} packets`, s.fields());
  }

  private stopStreams(s: Session): void {
    for (const ep of [...s.interrupt.keys()]) stopInterrupt(this.packets, s, ep);
    for (const ep of [...s.iso.keys()]) this.stopIso(s, ep);
  }

  /** Malformed or hostile input: log, close this connection only. */
  private drop(s: Session, reason: string): void {
    this.end(s, `protocol error: ${reason}; closing the connection`, "error");
  }

  /** The connection is over: cancel its URBs; the device is free for the next one once they are back. */
  private end(s: Session, reason: string, level: "info" | "warn" | "error"): void {
    if (s.closed) return;
    s.share.close();
    s.warnings.flush();
    this.cap.release();
    this.stopStreams(s);
    s.close();
    // A transfer admitted whose data never all arrived holds a URB slot and guest memory, but no URB.
    const cut = s.current;
    s.current = null;
    if (cut !== null && cut.urb === null && cut.verdict === null) this.packets.abandon(s, cut);
    const inFlight = s.share.urbs;
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

  /** Stop listening or dialling, cancel the peer's URBs, release the device, stop the engine. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.listener?.close();
      this.tls?.close();
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
