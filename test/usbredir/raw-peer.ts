/**
 * A raw usbredir usb-guest for the hostile and fuzz tests: it writes whatever bytes a test gives it
 * (before or after its hello) and frames everything the server sends with the parse gate in the
 * "host" role — the same rules QEMU's strict parser applies, so a reply QEMU would refuse (and abort
 * the VM on) is recorded in `refused` instead of being read past.
 */
import { connect as netConnect, type Socket } from "node:net";
import { QEMU_GUEST_CAPS } from "../../src/usbredir/client.js";
import {
  type Caps,
  decodeHello,
  encodeHello,
  type Negotiated,
  negotiate,
  type RedirPacket,
  RedirType,
} from "../../src/usbredir/protocol.js";
import { RedirReader, type RedirReaderSink } from "../../src/usbredir/reader.js";
import { HOST_CAPS } from "../../src/usbredir/server.js";

/** One packet the server sent, copied out of the reader. */
export interface SeenPacket {
  readonly type: number;
  readonly idLow: number;
  readonly idHigh: number;
  readonly endpoint: number;
  readonly status: number;
  readonly length: number;
  readonly data: Uint8Array;
}

export class RawPeer implements RedirReaderSink {
  readonly reader = new RedirReader("host", this);
  readonly packets: SeenPacket[] = [];
  /** Why the server's stream did not frame (null while it does). */
  refused: string | null = null;
  closed = false;
  /** What both sides use after the hellos (the server negotiates the same way). */
  readonly negotiated: Negotiated;
  private readonly closedP: Promise<void>;

  private constructor(
    readonly socket: Socket,
    readonly caps: Caps,
  ) {
    this.negotiated = negotiate(HOST_CAPS, caps);
    socket.on("data", (c: Buffer) => this.reader.push(c));
    socket.on("error", () => undefined);
    this.closedP = new Promise((r) =>
      socket.once("close", () => {
        this.closed = true;
        r();
      }),
    );
  }

  static async open(port: number, caps: Caps = QEMU_GUEST_CAPS): Promise<RawPeer> {
    const socket = netConnect({ host: "127.0.0.1", port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new RawPeer(socket, caps);
  }

  /** Send our hello, and wait for the device (device_connect) if asked. */
  async hello(waitForDevice = true): Promise<void> {
    this.write(encodeHello("usbvirt raw test guest", this.caps));
    if (waitForDevice) await this.waitFor((p) => p.type === RedirType.DEVICE_CONNECT, 5000, "device_connect");
  }

  write(bytes: Uint8Array): void {
    if (!this.closed) this.socket.write(bytes);
  }

  /** Resolves true once the server closed the connection, false after `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      this.closedP.then(() => true),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(false), ms);
      }),
    ]);
    clearTimeout(timer);
    return result;
  }

  async waitFor(match: (p: SeenPacket) => boolean, ms: number, what: string): Promise<SeenPacket> {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = this.packets.find(match);
      if (hit !== undefined) return hit;
      if (this.refused !== null) throw new Error(`server sent a packet QEMU would refuse: ${this.refused}`);
      if (this.closed) throw new Error(`connection closed before ${what}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  destroy(): void {
    this.socket.destroy();
  }

  admit(): null {
    return null;
  }

  deliver(p: RedirPacket, typeHeader: Uint8Array, data: Uint8Array): void {
    if (p.type === RedirType.HELLO) {
      const { caps } = decodeHello(typeHeader, data);
      this.reader.setNegotiated(negotiate(this.caps, caps));
    }
    this.packets.push({
      type: p.type,
      idLow: p.idLow,
      idHigh: p.idHigh,
      endpoint: p.endpoint,
      status: p.status,
      length: p.length,
      data: data.slice(),
    });
  }

  malformed(reason: string): void {
    this.refused = reason;
  }
}
