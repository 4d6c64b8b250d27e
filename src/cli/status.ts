/**
 * `usbvirt status [--metrics HOST:PORT] [--json]`: reads a running server's metrics endpoint
 * (metrics.ts; `serve --metrics`) and prints a short table — engine up, clients, backend losses,
 * grant faults, and per exported device its client, URBs, bytes, errors and URBs in flight.
 */
import { get } from "node:http";
import type { CommandSpec } from "./args.js";
import { UsageError } from "./errors.js";
import { DEFAULT_METRICS_PORT, type MetricSample, parseMetricsAddress, parseMetricsText } from "./metrics.js";
import type { CliIo } from "./run.js";

const FETCH_TIMEOUT_MS = 5000;
/** A metrics page is a few KiB; anything past this is not ours. */
const MAX_BODY_BYTES = 4 * 1024 * 1024;

/** GET http://host:port/path with node:http (fetch refuses some ports) within FETCH_TIMEOUT_MS. */
function httpGet(host: string, port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host, port, path, timeout: FETCH_TIMEOUT_MS }, (res) => {
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
      value: "[HOST:]PORT",
      help: `the server's metrics endpoint (default 127.0.0.1:${DEFAULT_METRICS_PORT})`,
    },
    { name: "json", kind: "boolean", help: "print JSON instead of a table" },
  ],
  details: `The server must run with --metrics (e.g. usbvirt serve --metrics ${DEFAULT_METRICS_PORT}).
Exit status 1 when the endpoint cannot be reached or the engine is not up.`,
};

export interface StatusReport {
  readonly endpoint: string;
  readonly version: string | null;
  readonly up: boolean;
  readonly clients: number;
  readonly backendLosses: number;
  readonly grantFaults: number | null;
  readonly devices: {
    busid: string;
    device: string;
    client: boolean;
    urbs: number | null;
    bytes: number | null;
    errors: number | null;
    inFlight: number;
  }[];
}

export function statusFromMetrics(endpoint: string, samples: readonly MetricSample[]): StatusReport {
  const one = (name: string): number | null => samples.find((s) => s.name === name)?.value ?? null;
  const per = (name: string, busid: string): number | null =>
    samples.find((s) => s.name === name && s.labels.busid === busid)?.value ?? null;
  const devices = samples
    .filter((s) => s.name === "usbvirt_device_clients")
    .map((s) => {
      const busid = s.labels.busid ?? "?";
      return {
        busid,
        device: s.labels.device ?? "?",
        client: s.value > 0,
        urbs: per("usbvirt_device_urbs_total", busid),
        bytes: per("usbvirt_device_bytes_total", busid),
        errors: per("usbvirt_device_errors_total", busid),
        inFlight: per("usbvirt_device_in_flight", busid) ?? 0,
      };
    });
  return {
    endpoint,
    version: samples.find((s) => s.name === "usbvirt_build_info")?.labels.version ?? null,
    up: one("usbvirt_up") === 1,
    clients: one("usbvirt_clients") ?? 0,
    backendLosses: one("usbvirt_backend_losses_total") ?? 0,
    grantFaults: one("usbvirt_grant_faults_total"),
    devices,
  };
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => `  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ")}`.trimEnd()).join("\n");
}

export async function statusCommand(options: Readonly<Record<string, unknown>>, io: CliIo): Promise<number> {
  const text = typeof options.metrics === "string" ? options.metrics : String(DEFAULT_METRICS_PORT);
  let where: { host: string; port: number };
  try {
    where = parseMetricsAddress(text, false);
  } catch (err) {
    throw new UsageError("status", (err as Error).message);
  }
  const host = where.host.includes(":") ? `[${where.host}]` : where.host;
  const endpoint = `${host}:${where.port}`;
  let body: string;
  try {
    body = await httpGet(where.host, where.port, "/metrics");
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === "ECONNREFUSED" ? "nothing listens there (is 'usbvirt serve --metrics' running?)" : e.message;
    throw new Error(`cannot read the metrics at http://${endpoint}/metrics: ${why}`);
  }
  const report = statusFromMetrics(endpoint, parseMetricsText(body));
  if (options.json === true) {
    io.out(`${JSON.stringify(report, null, 2)}\n`);
    return report.up ? 0 : 1;
  }
  const n = (v: number | null) => (v === null ? "-" : String(v));
  io.out(
    `usbvirt ${report.version ?? "?"} at ${endpoint}: engine ${report.up ? "up" : "DOWN"}, ` +
      `${report.clients} client connection(s), ${report.backendLosses} backend loss(es), ` +
      `${n(report.grantFaults)} grant fault(s)\n`,
  );
  if (report.devices.length > 0) {
    io.out(
      `${table([
        ["BUSID", "DEVICE", "CLIENT", "URBS", "BYTES", "ERRORS", "IN-FLIGHT"],
        ...report.devices.map((d) => [
          d.busid,
          d.device,
          d.client ? "yes" : "-",
          n(d.urbs),
          n(d.bytes),
          n(d.errors),
          String(d.inFlight),
        ]),
      ])}\n`,
    );
  }
  return report.up ? 0 : 1;
}
