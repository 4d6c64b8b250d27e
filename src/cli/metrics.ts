/**
 * `usbvirt serve --metrics [HOST:]PORT`: the engine's counters over HTTP as Prometheus text
 * (exposition format 0.0.4: `# HELP`, `# TYPE`, `name{label="v"} value`), at GET /metrics.
 *
 * Sources: the backend's BackendStats (per port: URBs, bytes, errors; grant faults, rejected requests;
 * counted by the current backend, so they restart from 0 after a backend loss — Prometheus counters
 * allow resets), the frontend's ControllerStats (backend losses, counted for the connection's whole
 * life) and the USB/IP server's stats() (clients, each imported device's URBs in flight). While the
 * engine is not Connected the backend's metrics are left out and `usbvirt_up` is 0.
 *
 * With a StatusTracker (serve passes one) the same endpoint serves the status page: GET /status.json and
 * GET / or /status (src/cli/status-page.ts).
 *
 * It answers only requests that name it (http-guard.ts: a Host of its own, else 421, so a DNS-rebinding page
 * reads nothing), refuses a request with a body (413), and holds each client to small limits: header bytes,
 * header and request timeouts, connections open at once. Plain HTTP has no authentication; with TLS options
 * (--metrics-tls-…) it speaks HTTPS with mutual TLS through the network faces' TlsFace: a connection's
 * handshake and client certificate are checked (a refusal is one log line) before HTTP reads a byte of it.
 *
 * Also the reading side for `usbvirt status`: a parser for the lines this module writes.
 */

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isIP, type Socket } from "node:net";
import { listenUnix, peerName, removeStaleSocket } from "../network-face/listener.js";
import { contextLogger, type FaceLogger } from "../network-face/log.js";
import { checkTlsServerOptions, TlsFace, type TlsServerOptions } from "../network-face/tls.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import type { ExportingServer } from "./exporting-server.js";
import { type BoundAddress, hostAllowed, METRICS_LIMITS } from "./http-guard.js";
import { type ControlSource, renderStatusPage, type StatusTracker } from "./status-page.js";

/** The default metrics port (serve has no default: --metrics is opt-in; `status` looks here). */
export const DEFAULT_METRICS_PORT = 9240;

export class MetricsAddressError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_METRICS_ADDRESS";
  constructor(message: string) {
    super("ERR_USBVIRT_METRICS_ADDRESS", message);
  }
}
registerErrorClass(MetricsAddressError);

/** Where the metrics endpoint listens: a TCP port on an address, or a Unix-domain socket (mode 0660). */
export type MetricsAt = { readonly host: string; readonly port: number } | { readonly path: string };

/**
 * "[HOST:]PORT": a port 0..65535 (digits only) and an optional IPv4, [IPv6] or "localhost"; host 127.0.0.1.
 * "unix:PATH": a Unix-domain socket.
 */
export function parseMetricsAddress(text: string, allowZero = true): MetricsAt {
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (path.length === 0 || path.includes("\0"))
      throw new MetricsAddressError(`"${text}": unix: needs a file path`);
    return { path };
  }
  const m = /^(?:(\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost):)?(\d{1,5})$/.exec(text);
  const bad = () =>
    new MetricsAddressError(
      `"${text}" is not [HOST:]PORT (e.g. 9240, 127.0.0.1:9240, [::1]:9240) with a port in ${allowZero ? 0 : 1}..65535, or unix:PATH`,
    );
  if (m === null) throw bad();
  const port = Number(m[2]);
  if (port > 65535 || (!allowZero && port === 0)) throw bad();
  let host = m[1] ?? "127.0.0.1";
  if (host.startsWith("[")) host = host.slice(1, -1);
  if (host !== "localhost" && isIP(host) === 0) throw bad();
  return { host, port };
}

interface Sample {
  readonly labels?: Readonly<Record<string, string>>;
  readonly value: number;
}

interface Family {
  readonly name: string;
  readonly type: "counter" | "gauge";
  readonly help: string;
  readonly samples: readonly Sample[];
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

export function renderFamilies(families: readonly Family[]): string {
  let out = "";
  for (const f of families) {
    out += `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) {
      const labels =
        s.labels !== undefined && Object.keys(s.labels).length > 0
          ? `{${Object.entries(s.labels)
              .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
              .join(",")}}`
          : "";
      out += `${f.name}${labels} ${Number.isFinite(s.value) ? s.value : 0}\n`;
    }
  }
  return out;
}

/** The toolstack's counters (serve --control): actions done and requests refused. */
export function controlMetrics(control: ControlSource): string {
  const c = control.counters();
  return renderFamilies([
    {
      name: "usbvirt_control_actions_total",
      type: "counter",
      help: "Actions done through the control socket (usbvirt ctl), by kind.",
      samples: ["bind", "unbind", "detach", "assign", "release"].map((action) => ({
        labels: { action },
        value: c[`${action}${action === "detach" ? "es" : "s"}`] ?? 0,
      })),
    },
    {
      name: "usbvirt_control_refusals_total",
      type: "counter",
      help: "Control requests refused: malformed, oversized, over a bound, or refused by the toolstack (in use, denied, unknown).",
      samples: [{ value: c.refusals ?? 0 }],
    },
  ]);
}

/** Collect every metric from the server and its engine now. */
export async function collectMetrics(server: ExportingServer, version: string): Promise<string> {
  const conn = server.connection;
  let backend: Awaited<ReturnType<typeof conn.stats>> | null = null;
  try {
    backend = await conn.stats();
  } catch {
    backend = null; // not Connected (restarting or closed)
  }
  const front = conn.frontend?.stats() ?? null;
  const serverStats = server.stats();
  const inFlightByBusid = new Map(serverStats.perDevice.map((d) => [d.busid, d.urbs]));
  const imported = new Set(serverStats.imported);
  const devices = server.devices;
  const perDevice = (value: (d: (typeof devices)[number]) => number): Sample[] =>
    devices.map((d) => ({ labels: { busid: d.busid, device: d.name }, value: value(d) }));
  const families: Family[] = [
    {
      name: "usbvirt_build_info",
      type: "gauge",
      help: "Always 1; the version is a label.",
      samples: [{ labels: { version }, value: 1 }],
    },
    {
      name: "usbvirt_up",
      type: "gauge",
      help: "1 while the engine is connected (its backend answers), else 0.",
      samples: [{ value: backend !== null ? 1 : 0 }],
    },
    {
      name: "usbvirt_clients",
      type: "gauge",
      help: "USB/IP client connections open now (any phase).",
      samples: [{ value: serverStats.clients }],
    },
    {
      name: "usbvirt_device_clients",
      type: "gauge",
      help: "1 while a client has imported the device, else 0.",
      samples: perDevice((d) => (imported.has(d.busid) ? 1 : 0)),
    },
    {
      name: "usbvirt_device_in_flight",
      type: "gauge",
      help: "URBs the device's client has in the engine now.",
      samples: perDevice((d) => inFlightByBusid.get(d.busid) ?? 0),
    },
    {
      name: "usbvirt_backend_losses_total",
      type: "counter",
      help: "Times the engine lost its backend (crash, fault, restart) and started a new one.",
      samples: [{ value: front?.backendLosses ?? 0 }],
    },
  ];
  if (backend !== null) {
    const port = (d: (typeof devices)[number]) => backend.ports[d.port] ?? { urbs: 0, bytes: 0, errors: 0 };
    families.push(
      {
        name: "usbvirt_device_urbs_total",
        type: "counter",
        help: "URBs the device completed (since the current backend started).",
        samples: perDevice((d) => port(d).urbs),
      },
      {
        name: "usbvirt_device_bytes_total",
        type: "counter",
        help: "Bytes the device moved, both directions (since the current backend started).",
        samples: perDevice((d) => port(d).bytes),
      },
      {
        name: "usbvirt_device_errors_total",
        type: "counter",
        help: "URBs the device completed with an error status (since the current backend started).",
        samples: perDevice((d) => port(d).errors),
      },
      {
        name: "usbvirt_backend_requests_total",
        type: "counter",
        help: "Requests the backend took from the URB ring.",
        samples: [{ value: backend.requests }],
      },
      {
        name: "usbvirt_backend_rejected_total",
        type: "counter",
        help: "Requests the backend's parse gate or grant mapper refused.",
        samples: [{ value: backend.rejected }],
      },
      {
        name: "usbvirt_grant_faults_total",
        type: "counter",
        help: "Grant references the backend could not map (bad reference, domain, direction or bounds).",
        samples: [{ value: backend.grantFaults }],
      },
      {
        name: "usbvirt_backend_in_flight",
        type: "gauge",
        help: "URBs the backend holds now, all devices.",
        samples: [{ value: backend.inFlight }],
      },
    );
  }
  return renderFamilies(families);
}

/**
 * Refuse a request the endpoint does not serve at all: one that names another host (421), or carries a
 * body (413). Answers and returns true when it refused; the connection is closed after the answer.
 */
function refused(req: IncomingMessage, res: ServerResponse, bound: BoundAddress | null): boolean {
  const hosts = req.headersDistinct.host;
  // On a Unix-domain socket (bound null) no browser can be led to it by a name: any one Host does.
  if (hosts === undefined || hosts.length !== 1 || (bound !== null && !hostAllowed(hosts[0], bound))) {
    res
      .writeHead(421, { "content-type": "text/plain", connection: "close" })
      .end("usbvirt: misdirected request: this endpoint answers only to the names it listens on\n");
    return true;
  }
  const length = req.headers["content-length"];
  if (req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0")) {
    res
      .writeHead(413, { "content-type": "text/plain", connection: "close" })
      .end("usbvirt: this endpoint takes no request body\n");
    return true;
  }
  return false;
}

/** What the endpoint serves, where, and how. */
export interface MetricsEndpointOptions {
  /** The server whose metrics and status it serves. */
  readonly view: ExportingServer;
  readonly at: MetricsAt;
  readonly version: string;
  /** The status page's source (serve and redirect pass one); without it only /metrics is served. */
  readonly tracker?: StatusTracker | null;
  /** HTTPS with mutual TLS (metricsTlsOptions), or plain HTTP (null). */
  readonly tls?: TlsServerOptions | null;
  /** Where refused TLS clients are logged (prefixed "metrics endpoint: "). */
  readonly log: FaceLogger;
}

/**
 * The HTTP endpoint: GET /metrics; with a tracker also /status.json and the page at / and /status (without
 * one, / answers a pointer with 404); everything else 404, other methods 405. Requests that name another
 * host or carry a body are refused first (refused()).
 */
export class MetricsEndpoint {
  private constructor(
    private readonly http: Server,
    private readonly tls: TlsFace | null,
  ) {}

  static async start(o: MetricsEndpointOptions): Promise<MetricsEndpoint> {
    const { view: server, at: where, version } = o;
    const tracker = o.tracker ?? null;
    const limits = METRICS_LIMITS;
    // Files read and settings checked before anything listens.
    const tlsSettings = o.tls != null ? checkTlsServerOptions(o.tls) : null;
    const http = createServer(
      {
        maxHeaderSize: limits.maxHeaderBytes,
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        keepAliveTimeout: limits.keepAliveTimeoutMs,
        connectionsCheckingInterval: limits.checkIntervalMs,
        requireHostHeader: true,
      },
      (req, res) => {
        const bound = http.address();
        if (bound === null || refused(req, res, typeof bound === "string" ? null : bound)) {
          if (!res.headersSent) res.writeHead(503, { connection: "close" }).end();
          return;
        }
        const path = (req.url ?? "/").split("?")[0];
        if (req.method !== "GET" && req.method !== "HEAD") {
          res.writeHead(405, { allow: "GET, HEAD" }).end();
          return;
        }
        const page = path === "/" || path === "/status";
        if (tracker !== null && (page || path === "/status.json")) {
          tracker.status().then(
            (status) => {
              const body = page ? renderStatusPage(status) : `${JSON.stringify(status, null, 2)}\n`;
              res.writeHead(200, {
                "content-type": page ? "text/html; charset=utf-8" : "application/json",
                "cache-control": "no-store",
                // The page needs nothing from elsewhere: say so to the browser too.
                ...(page
                  ? {
                      "content-security-policy":
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'",
                    }
                  : {}),
              });
              res.end(req.method === "HEAD" ? undefined : body);
            },
            (err: unknown) => {
              res.writeHead(500, { "content-type": "text/plain" }).end(`usbvirt: ${String(err)}\n`);
            },
          );
          return;
        }
        if (path !== "/metrics") {
          res.writeHead(404, { "content-type": "text/plain" }).end("usbvirt: metrics are at /metrics\n");
          return;
        }
        collectMetrics(server, version).then(
          (served) => {
            const text = served + (tracker?.control != null ? controlMetrics(tracker.control) : "");
            res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
            res.end(req.method === "HEAD" ? undefined : text);
          },
          (err: unknown) => {
            res.writeHead(500, { "content-type": "text/plain" }).end(`usbvirt: ${String(err)}\n`);
          },
        );
      },
    );
    http.maxHeadersCount = limits.maxHeadersCount;
    // Node closes a connection over this as it arrives.
    http.maxConnections = limits.maxConnections;
    const tls =
      tlsSettings !== null
        ? new TlsFace(
            tlsSettings,
            limits.handshakeTimeoutMs,
            contextLogger(o.log, { prefix: "metrics endpoint: " }),
          )
        : null;
    if (tls !== null) secureConnections(http, tls);
    if ("path" in where) await removeStaleSocket(where.path);
    await new Promise<void>((resolve, reject) => {
      http.once("error", reject);
      const listening = () => {
        http.off("error", reject);
        resolve();
      };
      if ("path" in where) listenUnix(http, where.path, listening);
      else http.listen(where.port, where.host, listening);
    });
    return new MetricsEndpoint(http, tls);
  }

  get address(): MetricsAt {
    const a = this.http.address();
    if (typeof a === "string") return { path: a };
    if (a === null) return { host: "null", port: 0 };
    return { host: a.address, port: a.port };
  }

  /** How to reach it, for a message: http://HOST:PORT (https:// with TLS), or unix:PATH. */
  get url(): string {
    const m = this.address;
    if ("path" in m) return `unix:${m.path}`;
    return `http${this.tls !== null ? "s" : ""}://${m.host.includes(":") ? `[${m.host}]` : m.host}:${m.port}`;
  }

  close(): Promise<void> {
    this.tls?.close();
    this.http.closeAllConnections();
    return new Promise((resolve) => this.http.close(() => resolve()));
  }
}

/**
 * Put `tls` between `http`'s listener and its HTTP parsing: each accepted connection (already under the
 * connection cap) goes through the handshake and the client-certificate checks, and only a connection that
 * passed reaches http's own connection handler, as the TLS socket. http keeps listening itself, so its
 * cap, its header and request timeouts and address() hold as for plain HTTP.
 */
function secureConnections(http: Server, tls: TlsFace): void {
  const handlers = http.listeners("connection");
  // http.Server registers exactly one: the handler that parses requests on the socket it is given.
  if (handlers.length !== 1) throw new Error(`node:http has ${handlers.length} connection handlers, not 1`);
  const serveHttp = handlers[0] as (socket: Socket) => void;
  http.removeAllListeners("connection");
  http.on("connection", (raw: Socket) => {
    tls.handshake(raw, peerName(raw), {
      secure: (socket) => {
        serveHttp.call(http, socket);
        socket.resume();
      },
      refused: () => {},
    });
  });
}

// ---------------------------------------------------------------- reading

export interface MetricSample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** Parse Prometheus text (the subset collectMetrics writes: no timestamps); comment lines are skipped. */
export function parseMetricsText(text: string): MetricSample[] {
  const out: MetricSample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`not a metrics line: ${JSON.stringify(line.slice(0, 200))}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? "";
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/g;
    let consumed = 0;
    for (let lm = re.exec(body); lm !== null; lm = re.exec(body)) {
      labels[lm[1]!] = lm[2]!.replace(/\\n/g, "\n").replace(/\\(["\\])/g, "$1");
      consumed = re.lastIndex;
    }
    if (consumed !== body.length)
      throw new Error(`bad labels in metrics line: ${JSON.stringify(line.slice(0, 200))}`);
    const value = Number(m[3]);
    if (Number.isNaN(value) && m[3] !== "NaN")
      throw new Error(`bad value in metrics line: ${JSON.stringify(line)}`);
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}
