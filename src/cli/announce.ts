/**
 * `serve --announce` and `redirect --listen --announce`: the server's DNS-SD announcement
 * (src/discovery/announcer.ts) fed from what the server exports now. The TXT record is read again on
 * every import and detach and once a second (exports come and go with hotplug), and announced when it
 * changed. A device's serial is the one it gives itself (its iSerialNumber string, read when it is
 * exported), whatever selected it. With TLS the record says so and carries the server certificate's
 * SHA-256, which a client may pin when it has no CA (README: what trusting an announced fingerprint means).
 */
import { hostname } from "node:os";
import { Announcer } from "../discovery/announcer.js";
import type { ServiceType } from "../discovery/mdns.js";
import type { AnnouncedDevice, AnnouncedInfo } from "../discovery/txt-record.js";
import type { TlsServerOptions } from "../network-face/tls.js";
import { fingerprintOfPem } from "../tls/tls-settings.js";
import { packageVersion } from "./daemon.js";
import type { Daemon, DaemonLog } from "./daemon-run.js";
import type { ExportingServer } from "./exporting-server.js";

/** What the TLS face tells the announcement: whether clients must use TLS, and the certificate's fingerprint. */
export interface AnnouncedTls {
  readonly required: boolean;
  /** SHA-256 of the server certificate, lowercase hex without colons. */
  readonly fingerprint?: string;
}

/** What the announcement says of a server's TLS settings (null: no TLS): required, and its certificate's SHA-256. */
export function announcedTls(tls: TlsServerOptions | null): AnnouncedTls {
  if (tls === null) return { required: false };
  const fp = fingerprintOfPem(tls.cert, "the TLS certificate");
  return { required: true, fingerprint: fp.slice("SHA256:".length).replace(/:/g, "").toLowerCase() };
}

export interface AnnounceParts {
  readonly service: ServiceType;
  readonly server: ExportingServer;
  readonly port: number;
  /** --name: added to the host's name. */
  readonly name?: string | undefined;
  /** The metrics/status address, "HOST:PORT", when served, and whether it needs (mutual) TLS. */
  readonly status?: { readonly address: string; readonly tls: boolean } | undefined;
  readonly tls: AnnouncedTls;
}

/** The devices of `server` as the record says them (each with the serial the device itself gives). */
export function announcedDevices(server: ExportingServer): AnnouncedDevice[] {
  const held = new Set(server.stats().imported);
  return server.devices.map((d) => ({
    busid: d.busid,
    vendorId: d.record.idVendor,
    productId: d.record.idProduct,
    deviceClass: d.record.bDeviceClass ?? 0,
    ...(d.serial !== undefined ? { serial: d.serial } : {}),
    held: held.has(d.busid),
  }));
}

export function instanceName(name: string | undefined): string {
  const host = hostname().split(".")[0] || "usbvirt";
  return name !== undefined && name !== "" ? `${host} ${name}` : host;
}

/** A running announcement of a server; stop() says goodbye. */
export class ServerAnnouncement {
  private constructor(
    readonly announcer: Announcer,
    private readonly stopFollowing: () => void,
  ) {}

  static async start(parts: AnnounceParts): Promise<ServerAnnouncement> {
    const info = (): AnnouncedInfo => ({
      version: packageVersion(),
      tls: parts.tls.required,
      ...(parts.tls.fingerprint !== undefined ? { fingerprint: parts.tls.fingerprint } : {}),
      ...(parts.status !== undefined
        ? { status: parts.status.address, ...(parts.status.tls ? { statusTls: true } : {}) }
        : {}),
      devices: announcedDevices(parts.server),
    });
    const announcer = await Announcer.start({
      service: parts.service,
      instance: instanceName(parts.name),
      hostName: hostname(),
      port: parts.port,
      info,
    });
    const refresh = () => announcer.refresh();
    parts.server.on("import", refresh);
    parts.server.on("detach", refresh);
    const timer = setInterval(refresh, 1000);
    timer.unref();
    return new ServerAnnouncement(announcer, () => {
      clearInterval(timer);
      parts.server.off("import", refresh);
      parts.server.off("detach", refresh);
    });
  }

  /** One line for the log, the status page and `usbvirt status`. */
  describe(): string {
    const s = this.announcer.state;
    const left = s.devicesLeftOut > 0 ? `, ${s.devicesLeftOut} more not in the record (too large)` : "";
    return `announced on multicast DNS as "${s.instance}" (${s.devicesShown} device(s) in a ${s.txtBytes}-byte TXT record${left})`;
  }

  async stop(): Promise<void> {
    this.stopFollowing();
    await this.announcer.close();
  }
}

/**
 * Announce a daemon's server once it is up (serve, redirect --listen): the status address is the daemon's
 * metrics endpoint, the line goes to the log and the status page. When the mDNS socket cannot be opened
 * the daemon is stopped and the error says why.
 */
export async function announceDaemon(
  daemon: Daemon,
  log: DaemonLog,
  parts: Omit<AnnounceParts, "status">,
): Promise<ServerAnnouncement> {
  let announcement: ServerAnnouncement;
  try {
    announcement = await ServerAnnouncement.start({ ...parts, status: daemon.statusAddress() ?? undefined });
  } catch (err) {
    await daemon.stopNow();
    throw new Error(`cannot announce on multicast DNS: ${(err as Error).message}`);
  }
  log.tracker?.setAnnouncement(() => announcement.describe());
  log.logger.info(announcement.describe());
  return announcement;
}
