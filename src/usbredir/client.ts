/**
 * A usbredir usb-guest (the side QEMU plays): connects to a usb-host, negotiates, learns the device
 * (ep_info, interface_info, device_connect) and moves transfers with promises. usbvirt's tests and
 * benchmark drive `usbvirt redirect` with it; it frames what it reads with the same parse gate as the
 * server (reader.ts, peer role "host").
 */

import { connect as netConnect, type Socket } from "node:net";
import { endpointAddress, requestIsIn } from "../usb/index.js";
import {
  type Caps,
  capsOf,
  type DeviceConnectInfo,
  dataOf,
  decodeDeviceConnect,
  decodeEpInfo,
  decodeHello,
  decodeInterfaceInfo,
  type EndpointEntry,
  encodeBulkPacket,
  encodeBytes,
  encodeControlPacket,
  encodeEmpty,
  encodeHello,
  encodeSmallDataPacket,
  hasCap,
  type Id,
  type InterfaceEntry,
  type Negotiated,
  negotiate,
  RedirCap,
  type RedirPacket,
  RedirType,
} from "./protocol.js";
import { RedirReader, type RedirReaderSink } from "./reader.js";

/** What QEMU 7 advertises (USBREDIR.md §3, observed 0xff). */
export const QEMU_GUEST_CAPS: Caps = capsOf(
  RedirCap.BULK_STREAMS,
  RedirCap.CONNECT_DEVICE_VERSION,
  RedirCap.FILTER,
  RedirCap.DEVICE_DISCONNECT_ACK,
  RedirCap.EP_INFO_MAX_PACKET_SIZE,
  RedirCap.IDS_64BIT,
  RedirCap.BULK_LENGTH_32BIT,
  RedirCap.BULK_RECEIVING,
);

export interface ClientOptions {
  readonly host?: string;
  readonly caps?: Caps;
  readonly version?: string;
  readonly timeoutMs?: number;
  /** Resolve once hellos are exchanged instead of at device_connect (default: wait for the device). */
  readonly waitForDevice?: boolean;
}

export interface TransferResult {
  readonly status: number;
  /** The reply's length (actual bytes). */
  readonly length: number;
  /** IN data (empty for OUT). */
  readonly data: Uint8Array;
}

/** A packet the client did not ask for, or a status, as the host sent it. */
export interface HostPacket {
  readonly type: number;
  readonly id: Id;
  readonly endpoint: number;
  readonly status: number;
  readonly configuration: number;
  readonly interface: number;
  readonly alt: number;
  readonly data: Uint8Array;
}

export class UsbredirClient implements RedirReaderSink {
  readonly reader: RedirReader;
  negotiated: Negotiated | null = null;
  hostVersion = "";
  hostCaps: Caps = 0;
  device: DeviceConnectInfo | null = null;
  endpoints = new Map<number, EndpointEntry>();
  interfaces: InterfaceEntry[] = [];
  /** Every non-reply packet (statuses, interrupt and iso data, disconnects), in arrival order. */
  readonly events: HostPacket[] = [];
  closed: Error | null = null;
  private nextId = 1;
  private readonly waiting = new Map<string, (r: TransferResult) => void>();
  private readonly watchers: { match: (p: HostPacket) => boolean; resolve: (p: HostPacket) => void }[] = [];
  private readonly closeWaiters: ((e: Error) => void)[] = [];

  private constructor(
    readonly socket: Socket,
    readonly caps: Caps,
  ) {
    this.reader = new RedirReader("host", this);
    socket.on("data", (chunk: Buffer) => this.reader.push(chunk));
    socket.on("close", () => this.fail(new Error("connection closed")));
    socket.on("error", (err) => this.fail(err));
  }

  /** Connect, exchange hellos and wait for device_connect (or a timeout). */
  static async connect(port: number, options: ClientOptions = {}): Promise<UsbredirClient> {
    const socket = netConnect({ host: options.host ?? "127.0.0.1", port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return await UsbredirClient.over(socket, options);
  }

  /** Play the usb-guest on a connected socket (e.g. one a usb-host dialled into). */
  static async over(socket: Socket, options: ClientOptions = {}): Promise<UsbredirClient> {
    const c = new UsbredirClient(socket, options.caps ?? QEMU_GUEST_CAPS);
    socket.write(encodeHello(options.version ?? "usbvirt test guest", c.caps));
    if (options.waitForDevice !== false) {
      await c.waitFor((p) => p.type === RedirType.DEVICE_CONNECT, options.timeoutMs ?? 10_000);
    }
    return c;
  }

  /** Resolve with the first packet (already received or coming) that matches. */
  waitFor(match: (p: HostPacket) => boolean, timeoutMs = 10_000): Promise<HostPacket> {
    const seen = this.events.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no matching packet within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const done = (p: HostPacket) => {
        clearTimeout(timer);
        resolve(p);
      };
      this.watchers.push({ match, resolve: done });
      this.closeWaiters.push((e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  /** Resolves when the host closes the connection. */
  closedPromise(): Promise<Error> {
    if (this.closed !== null) return Promise.resolve(this.closed);
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  private id(): Id {
    return { low: this.nextId++ >>> 0, high: 1 };
  }

  private expect(type: number, id: Id): Promise<TransferResult> {
    if (this.closed !== null) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      this.waiting.set(`${type}:${id.high}:${id.low}`, resolve);
      this.closeWaiters.push(reject);
    });
  }

  control(
    setup: { requestType: number; request: number; value: number; index: number; length: number },
    out?: Uint8Array,
  ): Promise<TransferResult> {
    const n = this.negotiated!;
    const id = this.id();
    const directionIn = requestIsIn(setup.requestType);
    const pkt = encodeControlPacket(
      n,
      id,
      { endpoint: endpointAddress(0, directionIn), status: 0, ...setup },
      directionIn ? 0 : setup.length,
    );
    if (!directionIn && out !== undefined) dataOf(n, pkt, 10).set(out.subarray(0, setup.length));
    const reply = this.expect(RedirType.CONTROL_PACKET, id);
    this.socket.write(pkt);
    return reply;
  }

  /** Bulk IN of `length` bytes (endpoint has 0x80) or OUT of `out`, on `streamId` (0: none). Returns the packet id too (to cancel). */
  bulk(
    endpoint: number,
    lengthOrOut: number | Uint8Array,
    streamId = 0,
  ): { id: Id; reply: Promise<TransferResult> } {
    const n = this.negotiated!;
    const id = this.id();
    const out = typeof lengthOrOut === "number" ? null : lengthOrOut;
    const length = out?.length ?? (lengthOrOut as number);
    const pkt = encodeBulkPacket(n, id, endpoint, 0, length, out?.length ?? 0, streamId);
    if (out !== null) dataOf(n, pkt, hasCap(n.caps, RedirCap.BULK_LENGTH_32BIT) ? 10 : 8).set(out);
    const reply = this.expect(RedirType.BULK_PACKET, id);
    this.socket.write(pkt);
    return { id, reply };
  }

  interruptOut(endpoint: number, out: Uint8Array): Promise<TransferResult> {
    const n = this.negotiated!;
    const id = this.id();
    const pkt = encodeSmallDataPacket(n, RedirType.INTERRUPT_PACKET, id, endpoint, 0, out.length, out.length);
    dataOf(n, pkt, 4).set(out);
    const reply = this.expect(RedirType.INTERRUPT_PACKET, id);
    this.socket.write(pkt);
    return reply;
  }

  isoOut(endpoint: number, out: Uint8Array): void {
    const n = this.negotiated!;
    const pkt = encodeSmallDataPacket(
      n,
      RedirType.ISO_PACKET,
      { low: 0, high: 0 },
      endpoint,
      0,
      out.length,
      out.length,
    );
    dataOf(n, pkt, 4).set(out);
    this.socket.write(pkt);
  }

  cancel(id: Id): void {
    this.socket.write(encodeEmpty(this.negotiated!, RedirType.CANCEL_DATA_PACKET, id.low, id.high));
  }

  /** A request with a small fixed header (set_configuration, start_interrupt_receiving, …); resolves with the status packet. */
  request(type: number, bytes: readonly number[], statusType: number): Promise<HostPacket> {
    const id = this.id();
    const status = this.waitFor((p) => p.type === statusType && p.id.low === id.low && p.id.high === id.high);
    this.socket.write(encodeBytes(this.negotiated!, type, id, bytes));
    return status;
  }

  /** Send raw bytes (hostile tests). */
  raw(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  close(): void {
    this.socket.destroy();
  }

  // ---------------------------------------------------------------- RedirReaderSink

  admit(): null {
    return null;
  }

  deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    const h = new DataView(typeHeader.buffer, typeHeader.byteOffset, typeHeader.byteLength);
    switch (p.type) {
      case RedirType.HELLO: {
        const hello = decodeHello(typeHeader, data);
        this.hostVersion = hello.version;
        this.hostCaps = hello.caps;
        this.negotiated = negotiate(this.caps, hello.caps);
        this.reader.setNegotiated(this.negotiated);
        return;
      }
      case RedirType.EP_INFO:
        this.endpoints = decodeEpInfo(h);
        break;
      case RedirType.INTERFACE_INFO:
        this.interfaces = decodeInterfaceInfo(h);
        break;
      case RedirType.DEVICE_CONNECT:
        this.device = decodeDeviceConnect(h);
        break;
      case RedirType.DEVICE_DISCONNECT:
        this.device = null;
        if (hasCap(this.negotiated!.caps, RedirCap.DEVICE_DISCONNECT_ACK)) {
          this.socket.write(encodeEmpty(this.negotiated!, RedirType.DEVICE_DISCONNECT_ACK));
        }
        break;
      case RedirType.CONTROL_PACKET:
      case RedirType.BULK_PACKET:
      case RedirType.INTERRUPT_PACKET: {
        const key = `${p.type}:${p.idHigh}:${p.idLow}`;
        const resolve = this.waiting.get(key);
        if (resolve !== undefined) {
          this.waiting.delete(key);
          resolve({ status: p.status, length: p.length, data: data.slice() });
          return;
        }
        break;
      }
      default:
        break;
    }
    const packet: HostPacket = {
      type: p.type,
      id: { low: p.idLow, high: p.idHigh },
      endpoint: p.endpoint,
      status: p.status,
      configuration: p.configuration,
      interface: p.interface,
      alt: p.alt,
      data: data.slice(),
    };
    this.events.push(packet);
    for (let i = 0; i < this.watchers.length; i++) {
      const w = this.watchers[i]!;
      if (w.match(packet)) {
        this.watchers.splice(i--, 1);
        w.resolve(packet);
      }
    }
  }

  malformed(reason: string): void {
    this.fail(new Error(`host sent a malformed packet: ${reason}`));
    this.socket.destroy();
  }

  private fail(err: Error): void {
    if (this.closed !== null) return;
    this.closed = err;
    for (const w of this.closeWaiters.splice(0)) w(err);
  }
}
