/**
 * `usbvirt status [--metrics HOST:PORT] [--json]`: reads a running server's /status.json on its metrics
 * endpoint (status-page.ts; `serve --metrics`) and prints a short table — engine up, clients, backend
 * losses, grant faults, and per exported device its state, client, URBs, bytes, errors, URBs in flight
 * and rates. --json prints /status.json as the server wrote it. With the dialling TLS flags (--tls-ca or
 * --tls-server-fingerprint, --tls-cert/--tls-key) it reads an endpoint that speaks HTTPS with mutual TLS
 * (`serve --metrics-tls-…`), through the same TLS client as attach.
 *
 * `usbvirt status --discover [--timeout S] [--json]`: the same for every server announcing on the
 * network (list --discover) whose TXT record names a status address, read a few at a time (over HTTPS
 * with the same TLS flags when the record says its status page needs TLS). What a /status.json says is
 * another program's answer (with --discover, anyone's on the link): checkReport checks the fields printed
 * before anything is printed, and every string is escaped for the terminal.
 */

import { get } from "node:http";
import * as v from "valibot";
import { describeIssues } from "../devices/spec-schema.js";
import { type DiscoveredServer, discover } from "../discovery/browser.js";
import { escapeControls } from "../network-face/log.js";
import { checkTlsClientOptions, connectTls, type TlsClientSettings } from "../tls/tls-settings.js";
import { type CommandSpec, secondsOption } from "./args.js";
import { DEFAULT_DISCOVER_S, statusAddressOf, statusUrl } from "./discover.js";
import { UsageError } from "./errors.js";
import { DEFAULT_METRICS_PORT, type MetricsAt, parseMetricsAddress } from "./metrics.js";
import { TLS_CERT_OPTION, TLS_CLIENT_OPTIONS, TLS_KEY_OPTION, tlsClientOptions } from "./tls-flags.js";

const FETCH_TIMEOUT_MS = 5000;
/** With --discover: each host's page within this time, this many at once. */
const DISCOVERED_FETCH_MS = 3000;
const DISCOVERED_AT_ONCE = 8;
/** A metrics page is a few KiB; anything past this is not ours. */
const MAX_BODY_BYTES = 4 * 1024 * 1024;

/**
 * GET http://host:port/path (or over a Unix-domain socket; https:// with `tls`) with node:http (fetch refuses
 * some ports) within `timeoutMs`. Over TLS the server's certificate is checked (CA and name, or a pin)
 * before the answer is read.
 */
function httpGet(
  where: MetricsAt,
  path: string,
  tls: TlsClientSettings | null,
  timeoutMs = FETCH_TIMEOUT_MS,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const at = "path" in where ? { socketPath: where.path } : { host: where.host, port: where.port };
    const secure =
      tls !== null && !("path" in where)
        ? { createConnection: () => connectTls({ host: where.host, port: where.port }, tls) }
        : {};
    const req = get({ ...at, ...secure, path, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY_BYTES)
          req.destroy(new Error(`the answer is larger than ${MAX_BODY_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode === 200) resolve(text);
        else reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on("error", reject);
  });
}

export const STATUS: CommandSpec = {
  name: "status",
  summary: "Show a running 'usbvirt serve --metrics' server's devices and counters.",
  positionals: [],
  options: [
    {
      name: "metrics",
      kind: "string",
      value: "[HOST:]PORT|unix:PATH",
      help: `the server's metrics endpoint, [HOST:]PORT or unix:PATH (default 127.0.0.1:${DEFAULT_METRICS_PORT})`,
    },
    { name: "json", kind: "boolean", help: "print the server's /status.json instead of a table" },
    ...TLS_CLIENT_OPTIONS,
    TLS_CERT_OPTION,
    TLS_KEY_OPTION,
    {
      name: "discover",
      kind: "boolean",
      help: "every server announcing on the local network (multicast DNS) with a status address: its status",
    },
    {
      name: "timeout",
      kind: "string",
      value: "SECONDS",
      help: `with --discover: how long to listen for announcements (default ${DEFAULT_DISCOVER_S})`,
    },
  ],
  details: `The server must run with --metrics (e.g. usbvirt serve --metrics ${DEFAULT_METRICS_PORT}).
An endpoint with mutual TLS (serve --metrics-tls-cert … --metrics-tls-client-ca CA) is read over HTTPS with
--tls-ca CA (or --tls-server-fingerprint) and this side's --tls-cert/--tls-key.
Exit status 1 when the endpoint cannot be reached or the engine is not up.
With --discover (serve --announce --metrics ADDR on each host): every announcing server, and for each that
names a status address its engine, clients and devices with their live rates; a host whose status page
listens on loopback only is said to be out of reach (serve --metrics 0.0.0.0:PORT); one whose status page
needs TLS is read with the TLS flags above (never without them). --json prints
{"servers": [{name, service, host, port, status, report | error}]}. Exit status 0 once the network was asked.`,
};

/** Longest string of a status report printed (a server writes short ones; the rest is not ours). */
const REPORT_TEXT_MAX = 1024;
const text = v.pipe(v.string(), v.maxLength(REPORT_TEXT_MAX));
const count = v.pipe(v.number(), v.finite(), v.minValue(0));
const DeviceReport = v.looseObject({
  busid: text,
  name: text,
  identity: text,
  state: text,
  holder: v.nullable(text),
  failure: v.nullable(text),
  urbs: v.nullable(count),
  bytes: v.nullable(count),
  errors: v.nullable(count),
  inFlight: count,
  urbsPerSec: count,
  bytesPerSec: count,
});
const StatusReport = v.looseObject({
  version: text,
  up: v.boolean(),
  clients: count,
  backendLosses: count,
  grantFaults: v.nullable(count),
  announce: v.optional(v.nullable(text)),
  devices: v.pipe(v.array(DeviceReport), v.maxLength(64)),
});
/** The fields of a /status.json (status-page.ts ServerStatus) that `status` prints. */
export type StatusReport = v.InferOutput<typeof StatusReport>;

/** Check a /status.json's text; an Error says what is wrong with it. */
export function checkReport(body: string): StatusReport {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch (err) {
    throw new Error(`the answer is not JSON: ${(err as Error).message}`);
  }
  const result = v.safeParse(StatusReport, json, { abortPipeEarly: true });
  if (!result.success)
    throw new Error(
      `the answer is not a usbvirt status: ${escapeControls(describeIssues(result.issues, ""))}`,
    );
  return result.output;
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => `  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ")}`.trimEnd()).join("\n");
}

/** What `status` writes to (run.ts's CliIo is one). */
export interface StatusIo {
  out(text: string): void;
}

export async function statusCommand(
  options: Readonly<Record<string, string | boolean | string[] | undefined>>,
  io: StatusIo,
): Promise<number> {
  if (options.discover === true) {
    if (options.metrics !== undefined)
      throw new UsageError("status", "--discover and --metrics exclude each other");
    return await discoveredStatus(options, io);
  }
  if (options.timeout !== undefined) throw new UsageError("status", "--timeout applies to --discover only");
  const text = typeof options.metrics === "string" ? options.metrics : String(DEFAULT_METRICS_PORT);
  let where: MetricsAt;
  try {
    where = parseMetricsAddress(text, false);
  } catch (err) {
    throw new UsageError("status", (err as Error).message);
  }
  const tlsOptions = tlsClientOptions("status", options);
  if (tlsOptions !== null && "path" in where) {
    throw new UsageError("status", "TLS is for a TCP endpoint: a unix: socket is read without it");
  }
  const tls = tlsOptions !== null ? checkTlsClientOptions(tlsOptions) : null;
  const endpoint =
    "path" in where
      ? `unix:${where.path}`
      : `http${tls !== null ? "s" : ""}://${where.host.includes(":") ? `[${where.host}]` : where.host}:${where.port}`;
  let body: string;
  try {
    body = await httpGet(where, "/status.json", tls);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === "ECONNREFUSED"
        ? "nothing listens there (is 'usbvirt serve --metrics' running?)"
        : e.code === "ECONNRESET" && tls !== null
          ? `${e.message}: the server closed the TLS connection (it refused this side's certificate, or wants one: its log says which check failed)`
          : e.message;
    throw new Error(`cannot read the status at ${endpoint}${"path" in where ? " " : ""}/status.json: ${why}`);
  }
  const report = checkReport(body);
  if (options.json === true) {
    io.out(body.endsWith("\n") ? body : `${body}\n`);
    return report.up ? 0 : 1;
  }
  io.out(reportText(report, endpoint));
  return report.up ? 0 : 1;
}

/** A checked report as lines: the engine and its counters, whether it announces, then a table of devices. */
function reportText(report: StatusReport, endpoint: string, indent = ""): string {
  const n = (x: number | null) => (x === null ? "-" : String(x));
  // The endpoint's strings are the remote server's: no line break or escape of theirs reaches the terminal.
  const t = (x: unknown) => escapeControls(String(x));
  let out =
    `${indent}usbvirt ${t(report.version)} at ${endpoint}: engine ${report.up ? "up" : "DOWN"}, ` +
    `${t(report.clients)} client connection(s), ${t(report.backendLosses)} backend loss(es), ` +
    `${n(report.grantFaults)} grant fault(s)\n`;
  out += `${indent}${report.announce != null ? t(report.announce) : "not announced on the network (serve --announce)"}\n`;
  if (report.devices.length > 0) {
    const rows = table([
      ["BUSID", "DEVICE", "STATE", "CLIENT", "URBS", "BYTES", "ERRORS", "IN-FLIGHT", "URBS/S", "BYTES/S"],
      ...report.devices.map((d) => [
        t(d.busid),
        t(`${d.name} ${d.identity}`),
        t(d.state),
        t(d.holder ?? "-"),
        n(d.urbs),
        n(d.bytes),
        n(d.errors),
        t(d.inFlight),
        t(d.urbsPerSec),
        t(d.bytesPerSec),
      ]),
    ]);
    out += `${rows.replace(/^/gm, indent)}\n`;
    for (const d of report.devices)
      if (d.failure !== null) out += `${indent}${t(d.busid)}: ${t(d.state)}: ${t(d.failure)}\n`;
  }
  return out;
}

/** One discovered server's status, or why there is none. */
export interface DiscoveredStatus {
  readonly name: string;
  readonly service: DiscoveredServer["service"];
  readonly host: string;
  readonly port: number;
  /** The status page's address, as reached from here, or null when the server names none. */
  readonly status: string | null;
  readonly report?: StatusReport;
  readonly error?: string;
}

/** One server's status; a page that needs TLS is read with `tls` (the user's TLS flags), never without. */
async function statusOf(server: DiscoveredServer, tls: TlsClientSettings | null): Promise<DiscoveredStatus> {
  const base = { name: server.name, service: server.service, host: server.host, port: server.port };
  let at: ReturnType<typeof statusAddressOf>;
  try {
    at = statusAddressOf(server);
  } catch (err) {
    return { ...base, status: null, error: `its status address cannot be read: ${(err as Error).message}` };
  }
  if (at === null) return { ...base, status: null };
  if ("unreachable" in at) return { ...base, status: null, error: at.unreachable };
  const url = statusUrl(at);
  if (at.tls && tls === null)
    return {
      ...base,
      status: url,
      error:
        "its status page needs mutual TLS: give --tls-cert, --tls-key and --tls-ca (or --tls-server-fingerprint)",
    };
  try {
    return {
      ...base,
      status: url,
      report: checkReport(await httpGet(at, "/status.json", at.tls ? tls : null, DISCOVERED_FETCH_MS)),
    };
  } catch (err) {
    return { ...base, status: url, error: (err as Error).message };
  }
}

async function discoveredStatus(
  options: Readonly<Record<string, string | boolean | string[] | undefined>>,
  io: StatusIo,
): Promise<number> {
  const timeoutMs = secondsOption(options, "timeout", DEFAULT_DISCOVER_S, "status");
  const tlsOptions = tlsClientOptions("status", options);
  const tls = tlsOptions !== null ? checkTlsClientOptions(tlsOptions) : null;
  const found = await discover({ timeoutMs });
  const servers = found.servers;
  const results: DiscoveredStatus[] = new Array(servers.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < servers.length; i = next++) results[i] = await statusOf(servers[i]!, tls);
  };
  await Promise.all(Array.from({ length: Math.min(DISCOVERED_AT_ONCE, servers.length) }, worker));
  if (options.json === true) {
    io.out(`${JSON.stringify({ servers: results, ignored: found.ignored }, null, 2)}\n`);
    return 0;
  }
  if (results.length === 0) io.out("no usbvirt server answered (is one running with --announce?)\n");
  for (const r of results) {
    const kind = r.service === "_usbip._tcp" ? "USB/IP" : "usbredir";
    io.out(`${escapeControls(r.name)}  ${kind} ${r.host}:${r.port}\n`);
    if (r.report !== undefined) io.out(reportText(r.report, r.status!, "  "));
    else if (r.error !== undefined)
      io.out(`  status${r.status !== null ? ` at ${r.status}` : ""}: ${escapeControls(r.error)}\n`);
    else io.out("  no status address announced (serve --metrics)\n");
  }
  return 0;
}
