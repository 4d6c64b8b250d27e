/**
 * `serve --metrics`: a scrape is Prometheus text (HELP/TYPE, usbvirt_ prefix) whose per-device counters
 * move after real traffic through an imported loopback, whose backend-loss counter moves after a
 * restart; `usbvirt status` reads it back as a table and as JSON; bad addresses are usage errors.
 */
import { describe, expect, it } from "vitest";
import { type MetricSample, parseMetricsAddress, parseMetricsText } from "../../src/cli/metrics.js";
import { run } from "../../src/cli/run.js";
import { attachRemote, loopbackCheck } from "../../src/usbip-attach/attach.js";
import { capture, serveInProcess } from "./helpers.js";

async function scrape(url: string): Promise<{ text: string; samples: MetricSample[] }> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { text, samples: parseMetricsText(text) };
}

function value(samples: readonly MetricSample[], name: string, busid?: string): number {
  const s = samples.find((x) => x.name === name && (busid === undefined || x.labels.busid === busid));
  if (s === undefined) throw new Error(`no ${name}${busid ? ` for ${busid}` : ""} in the scrape`);
  return s.value;
}

describe("serve --metrics", () => {
  it("serves Prometheus text whose counters move after traffic; status reads it", async () => {
    const s = await serveInProcess([
      "--device",
      "loopback",
      "--device",
      "keyboard",
      "--metrics",
      "127.0.0.1:0",
    ]);
    const url = /metrics: (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(s.c.out)?.[1];
    expect(url).toBeDefined();
    try {
      const before = await scrape(url!);
      // Every family has HELP and TYPE lines, every sample the usbvirt_ prefix.
      for (const sample of before.samples) {
        expect(sample.name.startsWith("usbvirt_")).toBe(true);
        const family = sample.name;
        expect(before.text).toContain(`# HELP ${family} `);
        expect(before.text).toMatch(new RegExp(`# TYPE ${family} (counter|gauge)\\n`));
      }
      expect(value(before.samples, "usbvirt_up")).toBe(1);
      expect(value(before.samples, "usbvirt_device_clients", "1-1")).toBe(0);
      expect(value(before.samples, "usbvirt_backend_losses_total")).toBe(0);
      expect(value(before.samples, "usbvirt_grant_faults_total")).toBe(0);
      const urbs0 = value(before.samples, "usbvirt_device_urbs_total", "1-1");
      const bytes0 = value(before.samples, "usbvirt_device_bytes_total", "1-1");
      const kbd0 = value(before.samples, "usbvirt_device_urbs_total", "1-2");
      expect(before.samples.find((x) => x.labels.busid === "1-2")?.labels.device).toMatch(/keyboard/);

      const att = await attachRemote({ host: "127.0.0.1", port: s.server.address.port, busid: "1-1" });
      try {
        expect((await loopbackCheck(att)).ok).toBe(true);
        const during = await scrape(url!);
        expect(value(during.samples, "usbvirt_device_clients", "1-1")).toBe(1);
        expect(value(during.samples, "usbvirt_clients")).toBe(1);
        expect(value(during.samples, "usbvirt_device_urbs_total", "1-1")).toBeGreaterThan(urbs0);
        expect(value(during.samples, "usbvirt_device_bytes_total", "1-1")).toBeGreaterThan(bytes0);
        expect(value(during.samples, "usbvirt_device_urbs_total", "1-2")).toBe(kbd0);
        expect(value(during.samples, "usbvirt_device_in_flight", "1-1")).toBeGreaterThanOrEqual(0);

        const table = capture();
        const where = new URL(url!).host;
        expect(await run(["status", "--metrics", where], table.io)).toBe(0);
        expect(table.out).toMatch(
          /engine up, 1 client connection\(s\), 0 backend loss\(es\), 0 grant fault\(s\)/,
        );
        expect(table.out).toMatch(
          /BUSID\s+DEVICE\s+STATE\s+CLIENT\s+URBS\s+BYTES\s+ERRORS\s+IN-FLIGHT\s+URBS\/S\s+BYTES\/S/,
        );
        expect(table.out).toMatch(
          /1-1\s+\S.*\s+imported\s+127\.0\.0\.1:\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+/,
        );
        const json = capture();
        expect(await run(["status", "--metrics", where, "--json"], json.io)).toBe(0);
        const report = JSON.parse(json.out) as {
          up: boolean;
          devices: { busid: string; state: string; holder: string | null; urbs: number }[];
        };
        expect(report.up).toBe(true);
        expect(report.devices.find((d) => d.busid === "1-1")).toMatchObject({ state: "imported" });
        expect(report.devices.find((d) => d.busid === "1-1")!.holder).toMatch(/^127\.0\.0\.1:\d+$/);
        expect(report.devices.find((d) => d.busid === "1-1")!.urbs).toBeGreaterThan(urbs0);
      } finally {
        await att.close();
      }

      await s.server.connection.restartBackend();
      const after = await scrape(url!);
      expect(value(after.samples, "usbvirt_backend_losses_total")).toBe(1);
      expect(value(after.samples, "usbvirt_up")).toBe(1);

      expect((await fetch(url!.replace("/metrics", "/nope"))).status).toBe(404);
      expect((await fetch(url!, { method: "POST" })).status).toBe(405);
    } finally {
      expect(await s.stop()).toBe(0);
    }
    // The endpoint closed with the server.
    await expect(fetch(url!)).rejects.toThrow();
  });

  it("status without a server says so and exits 1; bad addresses are usage errors", async () => {
    const c = capture();
    // Port 1 on loopback: nothing listens there as an unprivileged test.
    expect(await run(["status", "--metrics", "127.0.0.1:1"], c.io)).toBe(1);
    expect(c.err).toMatch(
      /cannot read the status at http:\/\/127\.0\.0\.1:1\/status\.json: nothing listens there/,
    );
    for (const bad of ["", "x", "70000", "1.2.3.4:", "host:80", "9240/", "127.0.0.1:92 40"]) {
      expect(() => parseMetricsAddress(bad), bad).toThrow(/is not \[HOST:\]PORT/);
    }
    expect(parseMetricsAddress("9240")).toEqual({ host: "127.0.0.1", port: 9240 });
    expect(parseMetricsAddress("0.0.0.0:1")).toEqual({ host: "0.0.0.0", port: 1 });
    expect(parseMetricsAddress("[::1]:9240")).toEqual({ host: "::1", port: 9240 });
    const u = capture();
    expect(await run(["serve", "--port", "0", "--metrics", "9240/"], u.io)).toBe(2);
    expect(u.err).toContain("--metrics:");
  });

  it("the parser reads what the endpoint writes and refuses what it cannot read", () => {
    expect(parseMetricsText('# HELP a b\n# TYPE a gauge\na{x="1",y="q\\"r"} 3\nb 4\n')).toEqual([
      { name: "a", labels: { x: "1", y: 'q"r' }, value: 3 },
      { name: "b", labels: {}, value: 4 },
    ]);
    expect(() => parseMetricsText("a{x=1} 3")).toThrow(/bad labels/);
    expect(() => parseMetricsText("a b c")).toThrow(/not a metrics line/);
  });
});
