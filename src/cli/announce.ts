/**
 * `serve --announce` and `redirect --listen --announce`: the server's DNS-SD announcement
 * (src/discovery/announcer.ts) fed from what the server exports now. The TXT record is read again on
 * every import and detach and once a second (exports come and go with hotplug), and announced when it
 * changed. A serial is announced when the export's spec names one (serve --device serial=S); the record
 * has no room for what it does not know.
 */
import { hostname } from "node:os";
import type { DeviceSpec } from "../devices/spec.js";
import { Announcer } from "../discovery/announcer.js";
import type { ServiceType } from "../discovery/mdns.js";
import type { AnnouncedDevice, AnnouncedInfo } from "../discovery/txt-record.js";
import { packageVersion } from "./daemon.js";
import type { ExportingServer } from "./exporting-server.js";

/** What the TLS face tells the announcement: whether clients must use TLS, and the certificate's fingerprint. */
export interface AnnouncedTls {
  readonly required: boolean;
  /** SHA-256 of the server certificate, lowercase hex without colons. */
  readonly fingerprint?: string;
}

export interface AnnounceParts {
  readonly service: ServiceType;
  readonly server: ExportingServer & { readonly devices: readonly { readonly spec?: DeviceSpec }[] };
  readonly port: number;
  /** --name: added to the host's name. */
  readonly name?: string | undefined;
  /** The metrics/status address, "HOST:PORT", when served. */
  readonly status?: string | undefined;
  readonly tls?: AnnouncedTls;
}

/** The devices of `server` as the record says them. */
export function announcedDevices(server: AnnounceParts["server"]): AnnouncedDevice[] {
  const held = new Set(server.stats().imported);
  return server.devices.map((d, i) => {
    const spec = server.devices[i]?.spec;
    const record = d.record as { idVendor: number; idProduct: number; bDeviceClass?: number };
    const serial = spec?.kind === "host" ? spec.serial : undefined;
    return {
      busid: d.busid,
      vendorId: record.idVendor,
      productId: record.idProduct,
      deviceClass: record.bDeviceClass ?? 0,
      ...(serial !== undefined ? { serial } : {}),
      held: held.has(d.busid),
    };
  });
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
      tls: parts.tls?.required === true,
      ...(parts.tls?.fingerprint !== undefined ? { fingerprint: parts.tls.fingerprint } : {}),
      ...(parts.status !== undefined ? { status: parts.status } : {}),
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
