/**
 * The daemon face `serve` and `redirect` share around their server: the log (text or JSON lines, quiet,
 * each device's last lines kept for the status page), the metrics endpoint and status page, the warnings
 * at start (a listener beyond loopback, the socket systemd passed), then the wait for SIGINT/SIGTERM or
 * for the engine's death, and the shutdown in order: exit 0, or 1 so a supervisor restarts the daemon.
 */

import {
  contextLogger,
  type FaceLogger,
  type LogFields,
  type LogFormat,
  streamLogger,
} from "../network-face/log.js";
import type { TlsServerOptions } from "../network-face/tls.js";
import { isLoopbackHost, parseIpPrefix } from "../util/ip-prefix.js";
import { EngineWatch, packageVersion } from "./daemon.js";
import type { ExportingServer } from "./exporting-server.js";
import { MetricsEndpoint, parseMetricsAddress } from "./metrics.js";
import { type ControlSource, StatusTracker } from "./status-page.js";

/** The settings every daemon command has (config keys, checked by config.ts). */
export interface DaemonSettings {
  readonly quiet?: boolean | undefined;
  readonly logFormat?: LogFormat | undefined;
  readonly metrics?: string | undefined;
}

export interface DaemonLog {
  readonly logger: FaceLogger;
  /** Keeps each device's last lines and rates for the status page (with --metrics only). */
  readonly tracker: StatusTracker | null;
}

/**
 * The command's logger: `given` (tests) or stderr in the settings' format; `quiet` drops info lines; with
 * metrics the tracker sees every line; `fields` are added to every line (redirect's one bus id).
 */
export function daemonLog(settings: DaemonSettings, given?: FaceLogger, fields?: LogFields): DaemonLog {
  const base = given ?? streamLogger(settings.logFormat ?? "text");
  const quietable: FaceLogger = settings.quiet === true ? { ...base, info: () => {} } : base;
  const tracker = settings.metrics !== undefined ? new StatusTracker() : null;
  const tracked = tracker?.wrap(quietable) ?? quietable;
  if (fields === undefined) return { logger: tracked, tracker };
  return { logger: contextLogger(tracked, { fields }), tracker };
}

export interface DaemonParts {
  /** What the metrics endpoint and the status page read. */
  readonly view: ExportingServer;
  readonly log: DaemonLog;
  readonly settings: DaemonSettings;
  /** The control socket's toolstack (--control), for the status page and the metrics. */
  readonly control?: ControlSource | null;
  /** Mutual TLS for the metrics endpoint (metricsTlsOptions, checked before the server started), or null. */
  readonly metricsTls?: TlsServerOptions | null;
  /** Closes what the command started (its server, hotplug), after the endpoint. */
  readonly close: () => Promise<void>;
}

/** The server's daemon life once it is up: its engine watched, its metrics served, its end awaited. */
export class Daemon {
  private constructor(
    private readonly parts: DaemonParts,
    private readonly watch: EngineWatch,
    private readonly metrics: MetricsEndpoint | null,
  ) {}

  /** Watch the engine and start the metrics endpoint; when that fails, close everything and throw. */
  static async start(parts: DaemonParts): Promise<Daemon> {
    const watch = new EngineWatch(parts.view.connection);
    const { tracker } = parts.log;
    const text = parts.settings.metrics;
    if (text === undefined || tracker === null) return new Daemon(parts, watch, null);
    try {
      tracker.attach(parts.view, packageVersion());
      tracker.control = parts.control ?? null;
      const endpoint = await MetricsEndpoint.start({
        view: parts.view,
        at: parseMetricsAddress(text),
        version: packageVersion(),
        tracker,
        tls: parts.metricsTls ?? null,
        log: parts.log.logger,
      });
      return new Daemon(parts, watch, endpoint);
    } catch (err) {
      tracker.close();
      watch.dispose();
      await parts.close();
      throw new Error(`cannot serve metrics on ${text}: ${(err as Error).message}`);
    }
  }

  /** Where the metrics and the status page are, as lines for stdout ("" without metrics). */
  addresses(): string {
    if (this.metrics === null) return "";
    const at = this.metrics.url;
    if (at.startsWith("unix:")) {
      const path = at.slice(5);
      return `metrics: ${at} (mode 0660; curl --unix-socket ${path} http://usbvirt/metrics; usbvirt status --metrics ${at})\n`;
    }
    return `metrics: ${at}/metrics\nstatus page: ${at}/\n`;
  }

  /**
   * The metrics endpoint's HOST:PORT and whether it speaks HTTPS with mutual TLS (what an announcement
   * names), or null without one or on a socket file.
   */
  statusAddress(): { readonly address: string; readonly tls: boolean } | null {
    if (this.metrics === null) return null;
    const m = this.metrics.address;
    if ("path" in m) return null; // not reachable from the network: nothing to announce
    return {
      address: `${m.host.includes(":") ? `[${m.host}]` : m.host}:${m.port}`,
      tls: (this.parts.metricsTls ?? null) !== null,
    };
  }

  /** Close everything now, without waiting for a signal (a start that failed after the daemon was up). */
  async stopNow(): Promise<void> {
    this.watch.dispose();
    this.parts.log.tracker?.close();
    await this.metrics?.close();
    await this.parts.close();
  }

  /** Wait for `stopSignal` or the engine's death, close everything, and return the exit status. */
  async run(stopSignal: () => Promise<string>): Promise<number> {
    const { logger, tracker } = this.parts.log;
    const stop = await Promise.race([
      stopSignal().then((signal) => ({ signal })),
      this.watch.died.then((died) => ({ died })),
    ]);
    this.watch.dispose();
    if ("died" in stop)
      logger.error(`${stop.died}: exiting with status 1 so a supervisor can restart usbvirt`);
    else logger.info(`${stop.signal}: shutting down`);
    tracker?.close();
    await this.metrics?.close();
    await this.parts.close();
    return "died" in stop ? 1 : 0;
  }
}

// ---------------------------------------------------------------- warnings at start

/** How a network face's exposure is worded. */
export interface Exposure {
  /** The protocol, as the warning names it. */
  readonly protocol: string;
  /** What a peer that connects can do ("import devices"). */
  readonly gains: string;
  /** The same, of an allowed address that is spoofed ("import them and read their traffic"). */
  readonly spoofed: string;
}

export const USBIP_EXPOSURE: Exposure = {
  protocol: "USB/IP",
  gains: "import devices",
  spoofed: "import them and read their traffic",
};

export const USBREDIR_EXPOSURE: Exposure = {
  protocol: "usbredir",
  gains: "take the device",
  spoofed: "take it and read its traffic",
};

/**
 * What to warn about a server listening beyond loopback. Neither protocol has authentication or
 * encryption, so an allowlist narrows who can connect but is no lock: the warning stays, and says so.
 */
export function exposureWarning(
  bound: string,
  allowClients: readonly string[],
  face: Exposure = USBIP_EXPOSURE,
  tls: TlsServerOptions | null = null,
): string | null {
  if (isLoopbackHost(bound)) return null;
  const at = bound.includes(":") ? `[${bound}]` : bound;
  if (tls !== null) return tlsExposure(at, allowClients, face, tls);
  if (allowClients.length === 0) {
    return `listening on ${at} with no --allow-client list: any host that reaches this port can ${face.gains}`;
  }
  const everyone = allowClients.filter((c) => {
    const p = parseIpPrefix(c);
    return p.ok && p.prefix.bits === 0;
  });
  const wide =
    everyone.length > 0 ? `; ${everyone.join(", ")} lets in every client of its address family` : "";
  return (
    `listening on ${at}: ${face.protocol} has no authentication or encryption; only the --allow-client list` +
    ` (${allowClients.join(", ")}) decides who can ${face.gains}, and any host that has or spoofs an` +
    ` allowed address can ${face.spoofed}${wide}`
  );
}

/** Under mutual TLS: what protects the port (said as an info line, not a warning). */
function tlsExposure(
  at: string,
  allowClients: readonly string[],
  face: Exposure,
  tls: TlsServerOptions,
): string {
  const pins = tls.clientFingerprints?.length ?? 0;
  const who = [
    tls.clientCa !== undefined ? "a client certificate the --tls-client-ca signed" : "",
    pins > 0 ? `a client certificate pinned by --tls-client-fingerprint (${pins})` : "",
  ]
    .filter((w) => w !== "")
    .join(" and ");
  const list =
    allowClients.length > 0 ? ` from an address in --allow-client (${allowClients.join(", ")})` : "";
  return (
    `listening on ${at} with mutual TLS: a client must present ${who}${list}; whoever holds such a ` +
    `certificate's key can ${face.gains}`
  );
}

/** The host a peer elsewhere should dial: THIS_HOST for a wildcard address, else the address itself. */
export function hostForPeers(bound: string): string {
  return bound === "0.0.0.0" || bound === "::" ? "THIS_HOST" : bound;
}

/** What to warn about dialling a peer beyond loopback (redirect --connect): its traffic is in clear. */
export function dialWarning(host: string, face: Exposure): string | null {
  if (isLoopbackHost(host)) return null;
  return `connecting to ${host}: ${face.protocol} has no authentication or encryption; the device's traffic crosses the network in clear`;
}

/** What a listening daemon logs at start: its exposure, and the socket systemd passed if it listens there. */
export interface ListenerNotes {
  /**
   * Where it listens (as bound: the passed socket's own under socket activation): an address, or a
   * Unix-domain socket's path, which no network peer reaches (its file mode decides), so it has no exposure.
   */
  readonly bound: { readonly host: string } | { readonly path: string };
  readonly allowClients: readonly string[];
  readonly face: Exposure;
  /** Mutual TLS on the listener (the note then says what protects it, at info level), or null. */
  readonly tls?: TlsServerOptions | null;
  /** The descriptor systemd passed, or null. */
  readonly activated: number | null;
  /** The settings the passed socket replaces ("--bind/--port"). */
  readonly replaces: string;
}

export function logListenerNotes(logger: FaceLogger, notes: ListenerNotes): void {
  const tls = notes.tls ?? null;
  const exposure =
    "host" in notes.bound ? exposureWarning(notes.bound.host, notes.allowClients, notes.face, tls) : null;
  if (exposure !== null && tls !== null) logger.info(exposure);
  else if (exposure !== null) logger.warn(exposure);
  if (notes.activated !== null) {
    logger.info(`listening on the socket systemd passed (fd ${notes.activated}), not ${notes.replaces}`);
  }
}

/** A failed listen(2) said for a user (which address, and what to do), or null for any other error. */
export function listenErrorText(err: unknown): string | null {
  const e = err as NodeJS.ErrnoException & { address?: unknown; port?: unknown };
  if (e?.syscall !== "listen" && e?.syscall !== "bind") return null;
  const where =
    typeof e.address === "string"
      ? `${e.address.includes(":") ? `[${e.address}]` : e.address}${typeof e.port === "number" ? `:${e.port}` : ""}`
      : "the address asked for";
  const why: Readonly<Record<string, string>> = {
    EADDRINUSE: "the port is in use (by another program, or another usbvirt): choose another port",
    EADDRNOTAVAIL: "no network interface of this host has that address",
    EACCES: "permission denied (ports below 1024 need privilege)",
  };
  const reason = e.code !== undefined ? why[e.code] : undefined;
  return reason === undefined ? null : `cannot listen on ${where}: ${reason}`;
}
