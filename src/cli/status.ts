/**
 * `usbvirt status [--metrics HOST:PORT] [--json]`: reads a running server's /status.json on its metrics
 * endpoint (status-page.ts; `serve --metrics`) and prints a short table — engine up, clients, backend
 * losses, grant faults, and per exported device its state, client, URBs, bytes, errors, URBs in flight
 * and rates. --json prints /status.json as the server wrote it. With the dialling TLS flags (--tls-ca or
 * --tls-server-fingerprint, --tls-cert/--tls-key) it reads an endpoint that speaks HTTPS with mutual TLS
 * (`serve --metrics-tls-…`), through the same TLS client as attach.
 */

import { get } from "node:http";
import { escapeControls } from "../network-face/log.js";
import { checkTlsClientOptions, connectTls, type TlsClientSettings } from "../tls/tls-settings.js";
import type { CommandSpec } from "./args.js";
import { UsageError } from "./errors.js";
import { DEFAULT_METRICS_PORT, type MetricsAt, parseMetricsAddress } from "./metrics.js";
import type { ServerStatus } from "./status-page.js";
import { TLS_CERT_OPTION, TLS_CLIENT_OPTIONS, TLS_KEY_OPTION, tlsClientOptions } from "./tls-flags.js";

const FETCH_TIMEOUT_MS = 5000;
/** A metrics page is a few KiB; anything past this is not ours. */
const MAX_BODY_BYTES = 4 * 1024 * 1024;

/**
 * GET http://host:port/path (or over a Unix-domain socket; https:// with `tls`) with node:http (fetch refuses
 * some ports) within FETCH_TIMEOUT_MS. Over TLS the server's certificate is checked (CA and name, or a pin)
 * before the answer is read.
 */
function httpGet(where: MetricsAt, path: string, tls: TlsClientSettings | null): Promise<string> {
  return new Promise((resolve, reject) => {
    const at = "path" in where ? { socketPath: where.path } : { host: where.host, port: where.port };
    const secure =
      tls !== null && !("path" in where)
        ? { createConnection: () => connectTls({ host: where.host, port: where.port }, tls) }
        : {};
    const req = get({ ...at, ...secure, path, timeout: FETCH_TIMEOUT_MS }, (res) => {
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
    req.on("timeout", () => req.destroy(new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000} s`)));
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
  ],
  details: `The server must run with --metrics (e.g. usbvirt serve --metrics ${DEFAULT_METRICS_PORT}).
An endpoint with mutual TLS (serve --metrics-tls-cert … --metrics-tls-client-ca CA) is read over HTTPS with
--tls-ca CA (or --tls-server-fingerprint) and this side's --tls-cert/--tls-key.
Exit status 1 when the endpoint cannot be reached or the engine is not up.`,
};

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => `  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ")}`.trimEnd()).join("\n");
}

/** What `status` writes to (run.ts's CliIo is one). */
export interface StatusIo {
  out(text: string): void;
}

export async function statusCommand(
  options: Readonly<Record<string, unknown>>,
  io: StatusIo,
): Promise<number> {
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
  const report = JSON.parse(body) as ServerStatus;
  if (options.json === true) {
    io.out(body.endsWith("\n") ? body : `${body}\n`);
    return report.up ? 0 : 1;
  }
  const n = (v: number | null) => (v === null ? "-" : String(v));
  // The endpoint's strings are the remote server's: no line break or escape of theirs reaches the terminal.
  const t = (v: unknown) => escapeControls(String(v));
  io.out(
    `usbvirt ${t(report.version)} at ${endpoint}: engine ${report.up ? "up" : "DOWN"}, ` +
      `${t(report.clients)} client connection(s), ${t(report.backendLosses)} backend loss(es), ` +
      `${n(report.grantFaults)} grant fault(s)\n`,
  );
  io.out(`${report.announce ?? "not announced on the network (serve --announce)"}\n`);
  if (report.devices.length > 0) {
    io.out(
      `${table([
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
      ])}\n`,
    );
    for (const d of report.devices)
      if (d.failure !== null) io.out(`${t(d.busid)}: ${t(d.state)}: ${t(d.failure)}\n`);
  }
  return report.up ? 0 : 1;
}
