/**
 * The status page of `usbvirt serve --metrics`: GET /status.json and GET / (or /status), next to /metrics.
 *
 * StatusTracker holds what the counters alone do not say: who imported each device and since when (the
 * server's 'import'/'detach' events), URBs/s and bytes/s (deltas of the backend's per-port counters,
 * sampled once a second off the data path, over a RATE_WINDOW_S window), and the last LOG_LINES log
 * lines that name the device (the serve logger wrapped: every line with a `busid` field is kept).
 *
 * The page is one self-contained HTML document: inline CSS and JS, no external request. The table is
 * rendered here, so it works with JavaScript disabled; with JavaScript it polls /status.json every second
 * and redraws the table and an inline-SVG sparkline of each device's rates.
 */

import type { FaceLogger, LogFields } from "../network-face/log.js";
import type { DeviceRow, ListResult } from "../toolstack/protocol.js";
import type { ExportingServer } from "./exporting-server.js";

/** Log lines kept per device. */
export const LOG_LINES = 8;
/** Rate samples kept per device (one a second): the sparkline's width. */
export const HISTORY = 60;
/** Rates are the counter delta over this many one-second samples. */
export const RATE_WINDOW_S = 2;
const SAMPLE_MS = 1000;

export type DeviceState = "free" | "imported" | "gone" | "failed";

export interface DeviceLogLine {
  readonly time: string;
  readonly level: string;
  readonly message: string;
}

export interface DeviceStatus {
  readonly busid: string;
  readonly port: number;
  readonly name: string;
  /** "vvvv:pppp", lowercase hex. */
  readonly identity: string;
  readonly state: DeviceState;
  /** The importing client's "address:port", or null. */
  readonly holder: string | null;
  /** ISO time of the import, or null. */
  readonly since: string | null;
  /** Why the device failed or went away, or null. */
  readonly failure: string | null;
  /** Counters since the current backend started (null while the engine is down). */
  readonly urbs: number | null;
  readonly bytes: number | null;
  readonly errors: number | null;
  readonly inFlight: number;
  readonly urbsPerSec: number;
  readonly bytesPerSec: number;
  /** The last HISTORY one-second rates, oldest first. */
  readonly history: { readonly urbsPerSec: readonly number[]; readonly bytesPerSec: readonly number[] };
  readonly log: readonly DeviceLogLine[];
}

/** What the control socket's toolstack tells the status page and the metrics (serve --control). */
export interface ControlSource {
  readonly path: string;
  /** Binds, unbinds, detaches, assigns, releases and refusals so far. */
  counters(): Readonly<Record<string, number>>;
  /** Every device's state, as `usbvirt ctl list` says it. */
  list(): Promise<ListResult>;
}

export interface ControlStatus {
  readonly socket: string;
  readonly counters: Readonly<Record<string, number>>;
  readonly devices: readonly DeviceRow[];
}

export interface ServerStatus {
  /** With --control: every device's state (as `usbvirt ctl list`) and the toolstack's counters. */
  readonly control?: ControlStatus;
  readonly version: string;
  readonly time: string;
  readonly up: boolean;
  readonly clients: number;
  readonly backendLosses: number;
  readonly grantFaults: number | null;
  readonly rejected: number | null;
  /** How the server announces itself on multicast DNS, or null when it does not. */
  readonly announce: string | null;
  readonly devices: readonly DeviceStatus[];
}

interface Counters {
  readonly t: number;
  readonly urbs: number;
  readonly bytes: number;
}

interface PerDevice {
  readonly log: DeviceLogLine[];
  readonly samples: Counters[];
  readonly urbRates: number[];
  readonly byteRates: number[];
  holder: string | null;
  since: string | null;
}

function pushBounded<T>(list: T[], item: T, max: number): void {
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
}

export class StatusTracker {
  private readonly perDevice = new Map<string, PerDevice>();
  private server: ExportingServer | null = null;
  /** The toolstack behind the control socket (serve --control), or null. */
  control: ControlSource | null = null;
  private version = "?";
  private announcement: () => string | null = () => null;
  private timer: NodeJS.Timeout | null = null;
  private sampling = false;
  private readonly onImport = (busid: string, peer: string) => {
    const d = this.device(busid);
    d.holder = peer;
    d.since = new Date().toISOString();
  };
  private readonly onDetach = (busid: string, peer: string) => {
    const d = this.device(busid);
    if (d.holder === peer) {
      d.holder = null;
      d.since = null;
    }
  };

  private device(busid: string): PerDevice {
    let d = this.perDevice.get(busid);
    if (d === undefined) {
      d = { log: [], samples: [], urbRates: [], byteRates: [], holder: null, since: null };
      this.perDevice.set(busid, d);
    }
    return d;
  }

  /** `logger`, also keeping each line that names a device (its `busid` field) in that device's ring. */
  wrap(logger: FaceLogger): FaceLogger {
    const keep =
      (level: "info" | "warn" | "error") =>
      (message: string, fields?: LogFields): void => {
        logger[level](message, fields);
        if (fields?.busid !== undefined) {
          const line = { time: new Date().toISOString(), level, message };
          pushBounded(this.device(fields.busid).log, line, LOG_LINES);
        }
      };
    return { info: keep("info"), warn: keep("warn"), error: keep("error") };
  }

  /** Where the status says whether (and how) the server announces itself. */
  setAnnouncement(describe: () => string | null): void {
    this.announcement = describe;
  }

  /** Follow `server`: its imports and detaches, and its counters once a second until close(). */
  attach(server: ExportingServer, version: string): void {
    this.server = server;
    this.version = version;
    server.on("import", this.onImport);
    server.on("detach", this.onDetach);
    this.timer = setInterval(() => void this.sample(), SAMPLE_MS);
    this.timer.unref();
    void this.sample();
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.server?.off("import", this.onImport);
    this.server?.off("detach", this.onDetach);
  }

  /** One sample of every device's counters; a counter that went back (a new backend) restarts its window. */
  private async sample(): Promise<void> {
    const server = this.server;
    if (server === null || this.sampling) return;
    this.sampling = true;
    try {
      let ports: Readonly<Record<number, { urbs: number; bytes: number }>>;
      try {
        ports = (await server.connection.stats()).ports;
      } catch {
        return; // not Connected: no sample (the rates keep their last window)
      }
      const t = performance.now();
      for (const info of server.devices) {
        const d = this.device(info.busid);
        const p = ports[info.port] ?? { urbs: 0, bytes: 0 };
        const last = d.samples.at(-1);
        if (last !== undefined && (p.urbs < last.urbs || p.bytes < last.bytes)) d.samples.length = 0;
        pushBounded(d.samples, { t, urbs: p.urbs, bytes: p.bytes }, RATE_WINDOW_S + 1);
        const r = rates(d.samples);
        pushBounded(d.urbRates, r.urbsPerSec, HISTORY);
        pushBounded(d.byteRates, r.bytesPerSec, HISTORY);
      }
    } finally {
      this.sampling = false;
    }
  }

  /** Everything /status.json says, now. */
  async status(): Promise<ServerStatus> {
    const server = this.server;
    if (server === null) throw new Error("the status tracker follows no server yet");
    const conn = server.connection;
    let backend: Awaited<ReturnType<typeof conn.stats>> | null;
    try {
      backend = await conn.stats();
    } catch {
      backend = null;
    }
    const s = server.stats();
    const imported = new Map(s.perDevice.map((p) => [p.busid, p]));
    const failed = new Map(s.failed.map((f) => [f.busid, f]));
    const devices = server.devices.map((info): DeviceStatus => {
      const d = this.device(info.busid);
      const held = imported.get(info.busid);
      const failure = failed.get(info.busid) ?? null;
      const state: DeviceState =
        failure !== null ? (failure.gone ? "gone" : "failed") : held !== undefined ? "imported" : "free";
      const port = backend?.ports[info.port];
      const r = rates(d.samples);
      const hex = (n: number) => n.toString(16).padStart(4, "0");
      return {
        busid: info.busid,
        port: info.port,
        name: info.name,
        identity: `${hex(info.record.idVendor)}:${hex(info.record.idProduct)}`,
        state,
        holder: held?.client ?? null,
        since: held !== undefined ? (d.holder === held.client ? d.since : null) : null,
        failure: failure?.reason ?? null,
        urbs: port?.urbs ?? null,
        bytes: port?.bytes ?? null,
        errors: port?.errors ?? null,
        inFlight: held?.urbs ?? 0,
        urbsPerSec: r.urbsPerSec,
        bytesPerSec: r.bytesPerSec,
        history: { urbsPerSec: [...d.urbRates], bytesPerSec: [...d.byteRates] },
        log: [...d.log],
      };
    });
    let control: ControlStatus | undefined;
    if (this.control !== null) {
      control = {
        socket: this.control.path,
        counters: this.control.counters(),
        devices: (await this.control.list()).devices,
      };
    }
    return {
      ...(control !== undefined ? { control } : {}),
      version: this.version,
      time: new Date().toISOString(),
      up: backend !== null,
      clients: s.clients,
      backendLosses: conn.frontend?.stats().backendLosses ?? 0,
      grantFaults: backend?.grantFaults ?? null,
      rejected: backend?.rejected ?? null,
      announce: this.announcement(),
      devices,
    };
  }
}

/** Per-second rates between the oldest and newest sample of the window (0 with fewer than two). */
function rates(samples: readonly Counters[]): { urbsPerSec: number; bytesPerSec: number } {
  const a = samples[0];
  const b = samples.at(-1);
  if (a === undefined || b === undefined || b.t <= a.t) return { urbsPerSec: 0, bytesPerSec: 0 };
  const dt = (b.t - a.t) / 1000;
  return {
    urbsPerSec: Math.round((b.urbs - a.urbs) / dt),
    bytesPerSec: Math.round((b.bytes - a.bytes) / dt),
  };
}

// ---------------------------------------------------------------- the page

export function escapeHtml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );
}

/** 1234567 → "1.23 M" (SI, three significant digits). */
export function si(n: number): string {
  const a = Math.abs(n);
  for (const [d, p] of [
    [1e9, "G"],
    [1e6, "M"],
    [1e3, "k"],
  ] as const) {
    if (a >= d) return `${(n / d).toPrecision(3)} ${p}`;
  }
  return `${Math.round(n)} `;
}

/** An inline SVG polyline of `values` (0 at the bottom), WIDTH x HEIGHT. */
export function sparkline(values: readonly number[], cls: string): string {
  const w = 120;
  const h = 24;
  const max = Math.max(1, ...values);
  const n = Math.max(2, values.length);
  const pts = values
    .map((v, i) => `${((i / (n - 1)) * w).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`)
    .join(" ");
  return `<svg class="spark ${cls}" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img"><title>${cls} per second, last ${values.length} s</title><polyline points="${pts}"/></svg>`;
}

function row(d: DeviceStatus): string {
  const log = d.log.map((l) => `${l.time.slice(11, 19)} ${l.level}: ${l.message}`).join("\n");
  const cell = (text: string, cls = "") => `<td${cls ? ` class="${cls}"` : ""}>${escapeHtml(text)}</td>`;
  return (
    `<tr data-busid="${escapeHtml(d.busid)}">` +
    cell(d.busid, "busid") +
    `<td class="name">${escapeHtml(d.name)}${d.name.includes(d.identity) ? "" : `<br><small>${escapeHtml(d.identity)}</small>`}</td>` +
    cell(d.state, `state ${d.state}`) +
    `<td class="holder">${d.holder !== null ? `${escapeHtml(d.holder)}<br><small>since ${escapeHtml((d.since ?? "?").replace("T", " ").slice(0, 19))}</small>` : "-"}</td>` +
    `<td class="num urbs-rate">${escapeHtml(si(d.urbsPerSec))}/s<br>${sparkline(d.history.urbsPerSec, "urbs")}</td>` +
    `<td class="num bytes-rate">${escapeHtml(si(d.bytesPerSec))}B/s<br>${sparkline(d.history.bytesPerSec, "bytes")}</td>` +
    cell(d.urbs === null ? "-" : String(d.urbs), "num urbs") +
    cell(d.errors === null ? "-" : String(d.errors), "num errors") +
    cell(String(d.inFlight), "num inflight") +
    `<td class="log"><pre>${escapeHtml(d.failure !== null ? `${d.failure}\n${log}` : log)}</pre></td>` +
    "</tr>"
  );
}

function controlRow(d: DeviceRow): string {
  const what =
    d.state === "imported"
      ? `imported as ${d.busid} by ${d.client} since ${(d.since ?? "?").replace("T", " ").slice(0, 19)}`
      : d.state === "bound" || d.state === "waiting"
        ? `${d.state} as ${d.busid}`
        : d.state === "assigned"
          ? `assigned to ${d.vm}`
          : d.state === "failed" || d.state === "denied" || d.state === "in-use"
            ? `${d.state}: ${d.why}`
            : d.state;
  return (
    `<tr data-device="${escapeHtml(d.device)}"><td>${escapeHtml(d.kind)}</td><td>${escapeHtml(d.device)}</td>` +
    `<td>${escapeHtml(d.description)}</td><td class="state ${escapeHtml(d.state)}">${escapeHtml(what)}</td></tr>`
  );
}

function controlSummary(s: ServerStatus): string {
  if (s.control === undefined) return "";
  const c = s.control.counters;
  return (
    `control socket ${s.control.socket}: ${c.binds} bind(s), ${c.unbinds} unbind(s), ${c.detaches} detach(es), ` +
    `${c.assigns} assign(s), ${c.releases} release(s), ${c.refusals} refusal(s)`
  );
}

function summary(s: ServerStatus): string {
  const n = (v: number | null) => (v === null ? "-" : String(v));
  return (
    `usbvirt ${s.version}: engine ${s.up ? "up" : "DOWN"}, ${s.clients} client connection(s), ` +
    `${s.backendLosses} backend loss(es), ${n(s.grantFaults)} grant fault(s), ${n(s.rejected)} rejected request(s); ` +
    `${s.announce ?? "not announced on the network"}; as of ${s.time}`
  );
}

/** The client side: poll /status.json once a second and redraw with the same functions as the server. */
const SCRIPT = `
${[escapeHtml, si, sparkline, row, summary, controlRow, controlSummary].map((f) => f.toString()).join("\n")}
async function poll() {
  try {
    const res = await fetch("status.json", { cache: "no-store" });
    const s = await res.json();
    document.getElementById("summary").textContent = summary(s);
    document.getElementById("devices").innerHTML = s.devices.map(row).join("");
    if (s.control !== undefined) {
      document.getElementById("control-summary").textContent = controlSummary(s);
      document.getElementById("control").innerHTML = s.control.devices.map(controlRow).join("");
    }
    document.body.dataset.polled = String(Number(document.body.dataset.polled || 0) + 1);
  } catch (e) {
    document.getElementById("summary").textContent = "usbvirt: the server does not answer (" + e + ")";
  }
}
setInterval(poll, 1000);
poll();
`;

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
#summary { color: #555; margin-bottom: 1em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .35em .6em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
small { color: #777; }
.state.imported { color: #06652e; font-weight: 600; }
.state.free { color: #555; }
.state.failed, .state.gone, .state.denied { color: #b00020; font-weight: 600; }
.state.bound, .state.assigned { color: #1f6feb; }
h2 { font-size: 1.1em; margin: 1.2em 0 .3em; }
pre { margin: 0; font-size: 11px; max-width: 48em; white-space: pre-wrap; }
svg.spark polyline { fill: none; stroke-width: 1.5; }
svg.spark.urbs polyline { stroke: #1f6feb; }
svg.spark.bytes polyline { stroke: #d4621b; }
`;

export function renderStatusPage(s: ServerStatus): string {
  // The script goes in as text: "</" cannot occur in it (the functions are ours, no string holds "</").
  const script = SCRIPT.replace(/<\//g, "<\\/");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>usbvirt status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>${STYLE}</style></head>
<body>
<h1>usbvirt: exported devices</h1>
<div id="summary">${escapeHtml(summary(s))}</div>
<table><thead><tr><th>bus id</th><th>device</th><th>state</th><th>client</th><th>URBs/s</th><th>bytes/s</th><th>URBs</th><th>errors</th><th>in flight</th><th>last log lines</th></tr></thead>
<tbody id="devices">${s.devices.map(row).join("")}</tbody></table>
${
  s.control !== undefined
    ? `<h2>All devices (usbvirt ctl list)</h2>
<div id="control-summary">${escapeHtml(controlSummary(s))}</div>
<table><thead><tr><th>kind</th><th>device</th><th>description</th><th>state</th></tr></thead>
<tbody id="control">${s.control.devices.map(controlRow).join("")}</tbody></table>`
    : ""
}
<p><small>Also: <a href="status.json">status.json</a>, <a href="metrics">metrics</a> (Prometheus). Rates over ${RATE_WINDOW_S} s; this page polls once a second.</small></p>
<script>${script}</script>
</body></html>
`;
}
