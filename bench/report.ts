/**
 * `npm run bench -- --report FILE.html`: the run's record (the same object as --json) as one
 * self-contained HTML page — inline SVG charts, no script, no network — and each chart also as
 * FILE-<chart>.svg beside it, for the README to embed.
 *
 * Charts (each left out when the run has none of its figures, e.g. under --only):
 *   depth    URBs/s with 1 and 64 in flight, per design (e2e engine variants and peers, the network
 *            servers with the Node and the Python client, the naive Python USB/IP server)
 *   latency  round-trip p50 and p99, per design (e2e.rtt.*)
 *   bulk     bulk throughput: e2e 64 KiB and 1 MiB per design, the network servers' 64 KiB pairs (8 and 1
 *            in flight, both clients, the Python server), the plain TCP echo
 *   ratios   usbvirt / peer (> 1 favours usbvirt), with the 1.0 line
 *   contended usbvirt / postMessage quiet and on a busy host (1 and 2 busy threads per core, bench/contended.ts),
 *            per figure, with the 1.0 line
 * One chart primitive: horizontal bars in labelled groups, a colour per series, an x axis with gridlines.
 */
import { writeFileSync } from "node:fs";
import type { Ratio, Result } from "./harness.js";

export interface BenchRecord {
  readonly node: string;
  readonly cpu: string;
  readonly cores: number;
  readonly quick: boolean;
  readonly loadavg: readonly number[];
  readonly results: readonly Result[];
  readonly ratios: readonly Ratio[];
}

interface Bar {
  readonly series: string;
  readonly value: number;
}

interface Group {
  readonly label: string;
  readonly bars: readonly Bar[];
}

interface BarChart {
  readonly id: string;
  readonly title: string;
  readonly unit: string;
  readonly series: readonly string[];
  readonly groups: readonly Group[];
  /** A vertical reference line at this value (the ratios' 1.0). */
  readonly reference?: number;
}

export interface RenderedChart {
  readonly id: string;
  readonly title: string;
  readonly svg: string;
}

const COLOURS = ["#1f6feb", "#d4621b", "#2da44e", "#8250df", "#bf3989"];
const LABEL_W = 190;
const PLOT_W = 440;
const VALUE_W = 80;
const BAR_H = 14;
const GROUP_GAP = 10;
const TOP = 44;
const AXIS_H = 34;

function esc(text: string): string {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

/** 1234567 → "1.23 M", 0.8 → "0.80". */
export function shortNumber(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e9) return `${(v / 1e9).toPrecision(3)} G`;
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)} M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)} k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** A "nice" axis step: 1, 2 or 5 × 10^n, giving about four intervals up to max. */
function niceStep(max: number): number {
  const raw = max / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

export function renderBarChart(c: BarChart): string {
  const max = Math.max(c.reference ?? 0, ...c.groups.flatMap((g) => g.bars.map((b) => b.value)));
  const step = niceStep(max > 0 ? max : 1);
  const top = Math.ceil((max > 0 ? max : 1) / step) * step;
  const x = (v: number) => LABEL_W + (v / top) * PLOT_W;
  const width = LABEL_W + PLOT_W + VALUE_W;
  let y = TOP;
  let body = "";
  for (const g of c.groups) {
    const h = g.bars.length * BAR_H;
    body += `<text x="${LABEL_W - 8}" y="${y + h / 2 + 4}" text-anchor="end">${esc(g.label)}</text>`;
    for (const b of g.bars) {
      const colour = COLOURS[c.series.indexOf(b.series) % COLOURS.length];
      const w = Math.max(1, x(b.value) - LABEL_W);
      body +=
        `<rect class="bar" x="${LABEL_W}" y="${y + 1}" width="${w.toFixed(1)}" height="${BAR_H - 2}" fill="${colour}">` +
        `<title>${esc(`${g.label} ${b.series}: ${shortNumber(b.value)} ${c.unit}`)}</title></rect>` +
        `<text x="${(LABEL_W + w + 4).toFixed(1)}" y="${y + BAR_H - 3}" font-size="10">${esc(shortNumber(b.value))}</text>`;
      y += BAR_H;
    }
    y += GROUP_GAP;
  }
  const plotBottom = y - GROUP_GAP + 4;
  let axis = `<line x1="${LABEL_W}" y1="${TOP - 4}" x2="${LABEL_W}" y2="${plotBottom}" stroke="#444"/>`;
  axis += `<line x1="${LABEL_W}" y1="${plotBottom}" x2="${LABEL_W + PLOT_W}" y2="${plotBottom}" stroke="#444"/>`;
  for (let v = 0; v <= top + step / 2; v += step) {
    const px = x(v).toFixed(1);
    axis +=
      `<line x1="${px}" y1="${TOP - 4}" x2="${px}" y2="${plotBottom}" stroke="#e4e4e4"/>` +
      `<text x="${px}" y="${plotBottom + 14}" text-anchor="middle" font-size="10">${esc(shortNumber(v))}</text>`;
  }
  axis += `<text x="${LABEL_W + PLOT_W / 2}" y="${plotBottom + 28}" text-anchor="middle" font-size="11">${esc(c.unit)}</text>`;
  if (c.reference !== undefined) {
    const px = x(c.reference).toFixed(1);
    axis += `<line class="reference" x1="${px}" y1="${TOP - 8}" x2="${px}" y2="${plotBottom}" stroke="#b00020" stroke-dasharray="4 3"/>`;
  }
  const legend = c.series
    .map((s, i) => {
      const lx = LABEL_W + i * 130;
      return `<rect x="${lx}" y="22" width="10" height="10" fill="${COLOURS[i % COLOURS.length]}"/><text x="${lx + 14}" y="31" font-size="11">${esc(s)}</text>`;
    })
    .join("");
  const height = plotBottom + AXIS_H;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" id="chart-${esc(c.id)}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12" fill="#222" role="img">` +
    `<title>${esc(c.title)}</title>` +
    `<rect width="${width}" height="${height}" fill="#fff"/>` +
    `<text x="8" y="15" font-size="13" font-weight="600">${esc(c.title)}</text>${legend}${axis}${body}</svg>`
  );
}

// ---------------------------------------------------------------- the charts of a run

/** e2e designs: the record's tag for each ("" is usbvirt itself). */
const E2E_DESIGNS: readonly { label: string; tag: string }[] = [
  { label: "usbvirt", tag: "" },
  { label: "usbvirt, port worker", tag: ".portworker" },
  { label: "postMessage", tag: ".postmessage" },
  { label: "comlink", tag: ".comlink" },
  { label: "piscina", tag: ".piscina" },
];

/** The network servers driven by the Python client (bench/python/): the record's prefix for each. */
const PY_DESIGNS: readonly { label: string; prefix: string }[] = [
  { label: "USB/IP server, Python client", prefix: "usbip.pyclient" },
  { label: "Python USB/IP server, Python client", prefix: "usbip.pypeer" },
  { label: "usbredir server, Python client", prefix: "usbredir.pyclient" },
];

/** The bulk series of 64 KiB pairs with one OUT + IN in flight. */
const ONE_PAIR = "64 KiB, 1 pair";

function chartsOf(record: BenchRecord): BarChart[] {
  const value = (name: string) => record.results.find((r) => r.name === name)?.value;
  const group = (label: string, bars: readonly (readonly [string, number | undefined])[]): Group | null => {
    const present = bars.filter((b): b is [string, number] => b[1] !== undefined);
    return present.length > 0 ? { label, bars: present.map(([series, v]) => ({ series, value: v })) } : null;
  };
  const groups = (list: (Group | null)[]) => list.filter((g): g is Group => g !== null);
  const depth = groups([
    ...E2E_DESIGNS.map((d) =>
      group(`e2e ${d.label}`, [
        ["1 in flight", value(`e2e.null.inflight1${d.tag}.urbs_per_s`)],
        ["64 in flight", value(`e2e.null.inflight64${d.tag}.urbs_per_s`)],
      ]),
    ),
    group("USB/IP server", [
      ["1 in flight", value("usbip.null.inflight1.urbs_per_s")],
      ["64 in flight", value("usbip.null.inflight64.urbs_per_s")],
    ]),
    group("USB/IP, backend worker", [
      ["1 in flight", value("usbip.null.inflight1.backendworker.urbs_per_s")],
      ["64 in flight", value("usbip.null.inflight64.backendworker.urbs_per_s")],
    ]),
    group("usbredir server", [
      ["1 in flight", value("usbredir.null.inflight1.urbs_per_s")],
      ["64 in flight", value("usbredir.null.inflight64.urbs_per_s")],
    ]),
    ...PY_DESIGNS.map((d) =>
      group(d.label, [
        ["1 in flight", value(`${d.prefix}.null.inflight1.urbs_per_s`)],
        ["64 in flight", value(`${d.prefix}.null.inflight64.urbs_per_s`)],
      ]),
    ),
  ]);
  const latency = groups(
    E2E_DESIGNS.map((d) =>
      group(d.label, [
        ["p50", value(`e2e.rtt${d.tag}.p50_us`)],
        ["p99", value(`e2e.rtt${d.tag}.p99_us`)],
      ]),
    ),
  );
  const mb = (v: number | undefined) => (v === undefined ? undefined : v / 1000);
  const bulk = groups([
    ...E2E_DESIGNS.map((d) =>
      group(`e2e ${d.label}`, [
        ["64 KiB", value(`e2e.bulk64k${d.tag}.gbps`)],
        ["1 MiB", value(`e2e.bulk1m${d.tag}.gbps`)],
      ]),
    ),
    group("USB/IP server", [
      ["64 KiB", mb(value("usbip.bulk64k.mbps"))],
      [ONE_PAIR, mb(value("usbip.bulk64k.pairs1.mbps"))],
    ]),
    group("USB/IP, backend worker", [["64 KiB", mb(value("usbip.bulk64k.backendworker.mbps"))]]),
    group("usbredir server", [
      ["64 KiB", mb(value("usbredir.bulk64k.mbps"))],
      [ONE_PAIR, mb(value("usbredir.bulk64k.pairs1.mbps"))],
    ]),
    group("Python USB/IP server", [
      ["64 KiB", mb(value("usbip.pypeer.nodeclient.bulk64k.mbps"))],
      [ONE_PAIR, mb(value("usbip.pypeer.nodeclient.bulk64k.pairs1.mbps"))],
    ]),
    ...PY_DESIGNS.map((d) =>
      group(d.label, [
        ["64 KiB", mb(value(`${d.prefix}.bulk64k.mbps`))],
        [ONE_PAIR, mb(value(`${d.prefix}.bulk64k.pairs1.mbps`))],
      ]),
    ),
    group("plain TCP echo", [["64 KiB", mb(value("tcp.echo64k.mbps"))]]),
  ]);
  const ratios = record.ratios.map((r) => ({
    label: r.name.replace(/^ratio\./, ""),
    bars: [{ series: "usbvirt / peer", value: r.value }],
  }));
  // Quiet and contended side by side: the same usbvirt / postMessage ratio in each condition.
  const ratio = (name: string) => record.ratios.find((r) => r.name === name)?.value;
  const conditions = [
    ["quiet", ""],
    ["1 busy thread per core", ".contended1"],
    ["2 busy threads per core", ".contended"],
  ] as const;
  const contendedFigures = [
    ["null URBs, 64 in flight", (c: string) => `ratio.e2e${c}.vs_postmessage`],
    ["null URBs, 1 in flight", (c: string) => `ratio.e2e.inflight1${c}.vs_postmessage`],
    ["round trip p50", (c: string) => `ratio.rtt${c}.vs_postmessage`],
    ["round trip p99", (c: string) => `ratio.rtt.p99${c}.vs_postmessage`],
    ["64 KiB bulk", (c: string) => `ratio.bulk64k${c}.vs_postmessage`],
    ["busy threads' work", (c: string) => `ratio.burner_work${c}.vs_postmessage`],
  ] as const;
  const contended = record.results.some((r) => r.name.startsWith("e2e.contended"))
    ? groups(
        contendedFigures.map(([label, name]) =>
          group(
            label,
            conditions.map(([series, c]) => [series, ratio(name(c))] as const),
          ),
        ),
      )
    : [];
  const all: BarChart[] = [
    {
      id: "depth",
      title: "Null URBs per second against depth (URBs in flight)",
      unit: "URBs/s",
      series: ["1 in flight", "64 in flight"],
      groups: depth,
    },
    {
      id: "latency",
      title: "Round trip of one URB: median and 99th percentile",
      unit: "µs (lower is better)",
      series: ["p50", "p99"],
      groups: latency,
    },
    {
      id: "bulk",
      title: "Bulk throughput (OUT + IN echoed)",
      unit: "GB/s",
      series: ["64 KiB", "1 MiB", ONE_PAIR],
      groups: bulk,
    },
    {
      id: "ratios",
      title: "usbvirt / peer (> 1 favours usbvirt)",
      unit: "ratio",
      series: ["usbvirt / peer"],
      groups: ratios,
      reference: 1,
    },
    {
      id: "contended",
      title: "usbvirt / postMessage, quiet and on a busy host (> 1 favours usbvirt)",
      unit: "ratio",
      series: conditions.map(([series]) => series),
      groups: contended,
      reference: 1,
    },
  ];
  return all.filter((c) => c.groups.length > 0);
}

export function renderCharts(record: BenchRecord): RenderedChart[] {
  return chartsOf(record).map((c) => ({ id: c.id, title: c.title, svg: renderBarChart(c) }));
}

export function renderReport(
  record: BenchRecord,
  charts: readonly RenderedChart[] = renderCharts(record),
): string {
  const rows = record.results
    .map(
      (r) =>
        `<tr><td><code>${esc(r.name)}</code></td><td class="n">${esc(shortNumber(r.value))}</td><td>${esc(r.unit)}</td></tr>`,
    )
    .join("\n");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>usbvirt benchmarks</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
figure { margin: 1.5em 0; } svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .2em .6em; } td.n { text-align: right; }
</style></head><body>
<h1>usbvirt benchmarks</h1>
<p>Node ${esc(record.node)}, ${esc(record.cpu)} (${record.cores} cores), load average ${esc(record.loadavg.map((l) => l.toFixed(2)).join(" "))}${record.quick ? ". <strong>--quick run: a moment per task, figures not meaningful.</strong>" : "."}</p>
${charts.map((c) => `<figure>${c.svg}</figure>`).join("\n")}
<h2>Every figure</h2>
<table><thead><tr><th>name</th><th>value</th><th>unit</th></tr></thead><tbody>
${rows}
</tbody></table>
</body></html>
`;
}

/** FILE.html and FILE-<chart>.svg beside it; returns the files written. */
export function writeReport(file: string, record: BenchRecord): string[] {
  const charts = renderCharts(record);
  writeFileSync(file, renderReport(record, charts));
  const base = file.replace(/\.html?$/i, "");
  const written = [file];
  for (const c of charts) {
    const svgFile = `${base}-${c.id}.svg`;
    writeFileSync(svgFile, `<?xml version="1.0" encoding="UTF-8"?>\n${c.svg}\n`);
    written.push(svgFile);
  }
  return written;
}
