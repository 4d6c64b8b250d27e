/**
 * `npm run bench -- --report`: from a small generated record with every figure the charts read, the
 * report is one HTML file with no external reference and four charts each with a bar per figure; the
 * standalone SVGs are written beside it; headless Chromium opens the report and renders every chart
 * with non-empty bars. A record with only some suites gets only the charts it has data for.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { BenchRecord } from "../../bench/report.js";
import { renderCharts, writeReport } from "../../bench/report.js";
import { chromium, dumpDom, outputDir, screenshot } from "../support/chromium.js";
import { need, skipWithout } from "../support/tools.js";

const TAGS = ["", ".portworker", ".postmessage", ".comlink", ".piscina"];

function record(): BenchRecord {
  const results = [
    ...TAGS.flatMap((t, i) => [
      { name: `e2e.null.inflight1${t}.urbs_per_s`, value: 20_000 + i * 1000, unit: "URB/s" },
      { name: `e2e.null.inflight64${t}.urbs_per_s`, value: 900_000 - i * 100_000, unit: "URB/s" },
      { name: `e2e.rtt${t}.p50_us`, value: 30 + i, unit: "µs" },
      { name: `e2e.rtt${t}.p99_us`, value: 120 + i * 10, unit: "µs" },
      { name: `e2e.bulk64k${t}.gbps`, value: 2 - i * 0.2, unit: "GB/s" },
      { name: `e2e.bulk1m${t}.gbps`, value: 4 - i * 0.3, unit: "GB/s" },
    ]),
    { name: "usbip.null.inflight1.urbs_per_s", value: 13_000, unit: "URB/s" },
    { name: "usbip.null.inflight64.urbs_per_s", value: 350_000, unit: "URB/s" },
    { name: "usbip.bulk64k.mbps", value: 1600, unit: "MB/s" },
    { name: "tcp.echo64k.mbps", value: 900, unit: "MB/s" },
    { name: "usbredir.null.inflight1.urbs_per_s", value: 12_000, unit: "URB/s" },
    { name: "usbredir.null.inflight64.urbs_per_s", value: 120_000, unit: "URB/s" },
    { name: "usbredir.bulk64k.mbps", value: 500, unit: "MB/s" },
    { name: "usbip.bulk64k.pairs1.mbps", value: 400, unit: "MB/s" },
    ...["pyclient", "pypeer"].flatMap((who, i) => [
      { name: `usbip.${who}.null.inflight1.urbs_per_s`, value: 11_000 + i, unit: "URB/s" },
      { name: `usbip.${who}.null.inflight64.urbs_per_s`, value: 120_000 + i, unit: "URB/s" },
      { name: `usbip.${who}.bulk64k.mbps`, value: 900 + i, unit: "MB/s" },
      { name: `usbip.${who}.bulk64k.pairs1.mbps`, value: 300 + i, unit: "MB/s" },
    ]),
  ];
  return {
    node: "v20.0.0",
    cpu: "test CPU",
    cores: 2,
    quick: true,
    loadavg: [0.5, 0.5, 0.5],
    results,
    ratios: [
      { name: "ratio.e2e.vs_postmessage", value: 3.2 },
      { name: "ratio.usbip.bulk64k.vs_tcp_echo", value: 1.78 },
    ],
  };
}

/** The <svg> elements of `html` and, per chart, its bar widths. */
function charts(html: string): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const m of html.matchAll(/<svg[^>]*id="chart-([a-z]+)"[^>]*>(.*?)<\/svg>/gs)) {
    out.set(
      m[1]!,
      [...m[2]!.matchAll(/<rect class="bar"[^>]*width="([\d.]+)"/g)].map((b) => Number(b[1])),
    );
  }
  return out;
}

describe("bench --report", () => {
  it("writes one self-contained HTML file and a standalone SVG per chart, each chart with its bars", () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-report-"));
    const file = join(dir, "report.html");
    const written = writeReport(file, record());
    expect(written).toEqual([
      file,
      ...["depth", "latency", "bulk", "ratios"].map((c) => join(dir, `report-${c}.svg`)),
    ]);
    const html = readFileSync(file, "utf8");
    expect(html).not.toMatch(/(src|href)=|<script|@import|url\(/);
    const found = charts(html);
    // 9 designs x 2 depths (usbip has no backend-worker figures here; the Python client against usbvirt
    // and against the Python server), 5 x 2 percentiles, 5 x 2 + usbip (8 pairs and 1) + usbredir + tcp +
    // the Python client's 2 x 2 bulk bars, 2 ratios.
    expect(Object.fromEntries([...found].map(([k, v]) => [k, v.length]))).toEqual({
      depth: 18,
      latency: 10,
      bulk: 18,
      ratios: 2,
    });
    for (const [id, bars] of found)
      expect(
        bars.every((w) => w > 0),
        id,
      ).toBe(true);
    // The largest bar of a chart spans most of the plot: the axis fits the data.
    expect(Math.max(...found.get("depth")!)).toBeGreaterThan(300);
    expect(html).toContain('class="reference"');
    for (const svg of written.slice(1)) {
      const text = readFileSync(svg, "utf8");
      expect(text).toMatch(/^<\?xml[^\n]*\n<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
      expect(charts(text).size).toBe(1);
    }
  });

  it("draws the usbvirt / postMessage ratios quiet and contended side by side when the run has the contended suite", () => {
    const levels = ["", ".contended1", ".contended"];
    const figures = ["e2e", "e2e.inflight1", "rtt", "rtt.p99", "bulk64k", "burner_work"];
    const withContended: BenchRecord = {
      ...record(),
      results: [...record().results, { name: "e2e.contended.rtt.p50_us", value: 9, unit: "µs" }],
      ratios: figures.flatMap((f, i) =>
        levels
          // The quiet run has no busy threads, so no burner_work ratio.
          .filter((c) => !(f === "burner_work" && c === ""))
          .map((c, j) => ({ name: `ratio.${f}${c}.vs_postmessage`, value: 1 + i + j / 2 })),
      ),
    };
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-report-"));
    const file = join(dir, "report.html");
    expect(writeReport(file, withContended)).toContain(join(dir, "report-contended.svg"));
    const bars = charts(readFileSync(file, "utf8")).get("contended");
    // 6 figures × 3 conditions, less the quiet burner_work.
    expect(bars?.length).toBe(17);
    expect(bars!.every((w) => w > 0)).toBe(true);
    // Without the contended suite the chart is left out.
    expect(renderCharts(record()).map((c) => c.id)).not.toContain("contended");
  });

  it("leaves out the charts a partial run has no figures for", () => {
    const usbipOnly = { ...record(), results: record().results.filter((r) => !r.name.startsWith("e2e.")) };
    expect(renderCharts(usbipOnly).map((c) => c.id)).toEqual(["depth", "bulk", "ratios"]);
  });

  const browser = chromium();
  it.skipIf(skipWithout("the headless Chromium test of the bench report", browser))(
    "headless Chromium renders every chart with its bars",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "usbvirt-report-"));
      const file = join(dir, "report.html");
      writeReport(file, record());
      const dom = await dumpDom(need(browser), `file://${file}`, 500);
      const found = charts(dom);
      expect([...found.keys()]).toEqual(["depth", "latency", "bulk", "ratios"]);
      for (const [id, bars] of found) expect(bars.length > 0 && bars.every((w) => w > 0), id).toBe(true);
      await screenshot(
        need(browser),
        `file://${file}`,
        join(outputDir(), "bench-report.png"),
        500,
        "800,2400",
      );
    },
  );
});
