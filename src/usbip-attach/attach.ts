/**
 * The client side of `usbvirt attach HOST[:PORT] BUSID`: a local engine
 * connection whose port 1 holds a device imported from a USB/IP server
 * (src/devices/remote/usbip-remote.ts), enumerated by the guest driver the way a
 * VMM's guest would. `loopbackCheck` moves data through it when the remote
 * device is usbvirt's loopback (the `--check` round trip).
 *
 * Errors and losses are told in the user's words (the device, the server),
 * not the engine's (its port number, its worker handshake). Lifecycle: when
 * the link is lost (the server closed, a read error, the keepalive timed
 * out) the guest sees the port disconnect and every URB in flight completes
 * with -ESHUTDOWN; then, unless `reconnect: false`, the engine reconnects
 * with exponential backoff and re-imports the same bus id
 * (src/engine/reconnect.ts), and this module enumerates the device again:
 * 'disconnected' (reason), 'reconnecting' (attempt, delay), 'reconnected'
 * (device) on `events`, each also a line on `log`. `lost` resolves with a
 * plain reason only when the device is gone for good (no reconnect, or
 * reconnecting gave up, or the local engine stopped).
 */
import { EventEmitter } from "node:events";
import { LoopbackRequest } from "../devices/emulated/loopback.js";
import { Connection } from "../engine/connection.js";
import { type EnumeratedDevice, GuestUsbDriver } from "../guest/guest-driver.js";
import { peerText } from "../network-face/log.js";
import type { TlsClientOptions } from "../tls/tls-settings.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { RequestTypeByte } from "../usb/index.js";
import { USBIP_PORT } from "../usbip/protocol.js";
import { InvalidOptionError, registerErrorClass, UsbvirtError } from "../util/errors.js";

export interface AttachOptions {
  readonly host: string;
  readonly port?: number;
  readonly busid: string;
  /** Bound on connecting and importing, and on the answer to a keepalive probe (default 5000 ms). */
  readonly timeoutMs?: number;
  /** Quiet time after which the server is probed (default 5000 ms). */
  readonly keepaliveMs?: number;
  /** Reconnect and re-import after a lost link (default true). */
  readonly reconnect?: boolean;
  /** Backoff bounds of the reconnect (defaults 500 ms and 30 s) and the attempts before giving up (no limit). */
  readonly retryMinMs?: number;
  readonly retryMaxMs?: number;
  readonly retryAttempts?: number;
  /** Connect with TLS (verify the server, present a client certificate). */
  readonly tls?: TlsClientOptions;
  /** Every transition, one line each (lost, each attempt, reconnected, a stalled reset). */
  readonly log?: (line: string) => void;
}

export interface AttachEvents {
  disconnected: [reason: string];
  reconnecting: [attempt: number, delayMs: number];
  reconnected: [device: EnumeratedDevice];
}

/** The import did not work; the message says why in plain words. */
export class AttachError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_ATTACH";
  constructor(message: string, cause: unknown) {
    super("ERR_USBVIRT_ATTACH", message, { cause });
  }
}
registerErrorClass(AttachError);

export interface AttachedDevice {
  readonly conn: Connection;
  readonly guest: GuestUsbDriver;
  /** The device as last enumerated (again after each reconnect). */
  readonly device: EnumeratedDevice;
  readonly port: PortNum;
  readonly address: DevAddr;
  /** Resolves with a plain reason once the device is gone for good (see the header). */
  readonly lost: Promise<string>;
  readonly events: EventEmitter<AttachEvents>;
  close(): Promise<void>;
}

/** "host", "host:port", "[v6]:port" → host and port. */
export function parseHostPort(text: string, defaultPort = USBIP_PORT): { host: string; port: number } {
  let host = text;
  let port = defaultPort;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (v6 !== null) {
    host = v6[1]!;
    if (v6[2] !== undefined) port = Number(v6[2]);
  } else if ((text.match(/:/g) ?? []).length === 1) {
    const [h, p] = text.split(":");
    host = h!;
    port = Number(p);
  }
  if (host === "" || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidOptionError(`"${text}" is not HOST or HOST:PORT with a port in 1..65535`);
  }
  return { host, port };
}

/** Import `busid` from the server onto port 1 of a new local controller and enumerate it. */
export async function attachRemote(options: AttachOptions): Promise<AttachedDevice> {
  const conn = await Connection.create({ ports: 1, memory: 8192 });
  const port = 1 as PortNum;
  const address = 1 as DevAddr;
  const server = `${options.host}:${options.port ?? USBIP_PORT}`;
  const reconnect = options.reconnect !== false;
  const log = options.log ?? (() => undefined);
  const events = new EventEmitter<AttachEvents>();
  let closing = false;
  const lost = new Promise<string>((resolve) => {
    conn.on("port-failed", (p: number, reason: string, gone: boolean) => {
      if (p !== port) return;
      const plain = plainReason(reason, port);
      events.emit("disconnected", plain);
      // A lost link comes back through the reconnect; anything else (a crashed worker) is final.
      if (!(reconnect && gone)) resolve(plain);
    });
    conn.on("port-reconnect-failed", (p: number, reason: string) => {
      if (p === port) resolve(reason);
    });
    conn.on("backend-lost", (reason: string) => resolve(`the local engine stopped (${reason})`));
  });
  conn.on("log", (line) => log(plainReason(line, port)));
  conn.on("port-reconnecting", (p, attempt, delayMs) => {
    if (p === port) events.emit("reconnecting", attempt, delayMs);
  });
  try {
    await conn.attach(port, {
      kind: "usbip",
      host: options.host,
      port: options.port ?? USBIP_PORT,
      busid: options.busid,
      reconnect,
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
      ...(options.keepaliveMs !== undefined ? { keepaliveMs: options.keepaliveMs } : {}),
      ...(options.retryMinMs !== undefined ? { retryMinMs: options.retryMinMs } : {}),
      ...(options.retryMaxMs !== undefined ? { retryMaxMs: options.retryMaxMs } : {}),
      ...(options.retryAttempts !== undefined ? { retryAttempts: options.retryAttempts } : {}),
      ...(options.tls !== undefined ? { tls: options.tls } : {}),
    });
    const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
    let device = await guest.enumerate(port, address);
    conn.on("port-reconnected", (p) => {
      if (p !== port || closing) return;
      // The guest's part of a reconnect: the port shows a device again, so enumerate it (as a hub driver would).
      guest.enumerate(port, address).then(
        (d) => {
          device = d;
          log(`${options.busid} from ${server} is attached again: ${describeEnumerated(d)}`);
          events.emit("reconnected", d);
        },
        (err: unknown) => {
          const why = err instanceof Error ? err.message : String(err);
          log(`${options.busid} from ${server} came back but did not enumerate: ${why}`);
        },
      );
    });
    return {
      conn,
      guest,
      get device() {
        return device;
      },
      port,
      address,
      lost,
      events,
      close: async () => {
        closing = true;
        await conn.detach(port).catch(() => undefined);
        await conn.close();
      },
    };
  } catch (err) {
    await conn.close().catch(() => undefined);
    throw new AttachError(
      `could not attach ${options.busid} from ${server}: ${plainReason((err as Error).message ?? String(err), port)}`,
      err,
    );
  }
}

/**
 * The engine words a port's failure for an engine's reader ("port 1: …",
 * "device gone: …"); the user of `attach` has one device and no ports, so
 * those exact prefixes (built by src/backend/port-link.ts and backend-host.ts)
 * are dropped. The rest is the device backend's own, already plain, message.
 */
function plainReason(message: string, port: number): string {
  let m = message;
  for (const prefix of [`port ${port}: `, "device gone: "]) {
    if (m.startsWith(prefix)) m = m.slice(prefix.length);
  }
  return m;
}

export const LOOPBACK_VENDOR_ID = 0x1209;
export const LOOPBACK_PRODUCT_ID = 0x0001;

/** Write patterned bytes to the loopback's bulk OUT and read them back from bulk IN; also a vendor control round trip. */
export async function loopbackCheck(
  att: AttachedDevice,
  bytes = 64 * 1024,
): Promise<{ ok: boolean; detail: string }> {
  const d = att.device;
  if (d.vendorId !== LOOPBACK_VENDOR_ID || d.productId !== LOOPBACK_PRODUCT_ID) {
    return {
      ok: false,
      detail: `the device is ${hex4(d.vendorId)}:${hex4(d.productId)}, not usbvirt's loopback (1209:0001)`,
    };
  }
  const payload = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) payload[i] = (i * 31 + 7) & 0xff;
  const wrote = await att.guest.transferOut(att.port, att.address, 1, payload);
  const back = await att.guest.transferIn(att.port, att.address, 1, bytes);
  if (wrote !== bytes || Buffer.compare(back, payload) !== 0) {
    return {
      ok: false,
      detail: `bulk round trip of ${bytes} bytes came back different (${back.length} bytes)`,
    };
  }
  const ctl = payload.subarray(0, 200);
  await att.guest.control(
    att.port,
    att.address,
    {
      bmRequestType: RequestTypeByte.VENDOR_DEVICE_OUT,
      bRequest: LoopbackRequest.CONTROL_WRITE,
      wValue: 0,
      wIndex: 0,
      wLength: ctl.length,
    },
    ctl,
  );
  const ctlBack = await att.guest.control(att.port, att.address, {
    bmRequestType: RequestTypeByte.VENDOR_DEVICE_IN,
    bRequest: LoopbackRequest.CONTROL_READ,
    wValue: 0,
    wIndex: 0,
    wLength: ctl.length,
  });
  if (Buffer.compare(ctlBack, ctl) !== 0)
    return { ok: false, detail: "vendor control write/read came back different" };
  return {
    ok: true,
    detail: `${bytes} bytes bulk OUT→IN and a ${ctl.length}-byte control write/read verified`,
  };
}

export function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

export function describeEnumerated(d: EnumeratedDevice): string {
  const eps = d.interfaces.flatMap((i) => i.endpoints.map((e) => `0x${e.address.toString(16)}`)).join(" ");
  const classes = d.interfaces
    .filter((i) => i.alternate === 0)
    .map((i) => `${i.cls}/${i.subclass}/${i.protocol}`)
    .join(", ");
  // The product string is the remote device's: quoted and escaped (network-face/log.ts).
  return `${hex4(d.vendorId)}:${hex4(d.productId)} ${peerText(d.product)} address ${d.address}, configuration ${d.configurationValue}, interfaces ${classes}, endpoints ${eps}`;
}
