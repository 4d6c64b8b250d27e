/**
 * The status page of `serve --metrics`: /status.json says per device its state, holder, rates, errors
 * and log lines; the page at / is a plain table without JavaScript; in a real browser (headless
 * Chromium) its script polls /status.json and draws the table and the rate sparklines.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { ServerStatus } from "../../src/cli/status-page.js";
import { UsbipClient } from "../../src/usbip/client.js";
import { chromium, dumpDom, outputDir, screenshot } from "../support/chromium.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { need, skipWithout } from "../support/tools.js";
import { bulkIn, bulkOut, enumerate } from "../usbip/helpers.js";
import { serveInProcess } from "./helpers.js";

/** serve loopback + keyboard with --metrics on an ephemeral port; 1-1 imported by a client moving data. */
async function busyServer() {
  const s = await serveInProcess([
    "--device",
    "loopback",
    "--device",
    "keyboard",
    "--metrics",
    "127.0.0.1:0",
  ]);
  const base = /status page: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(s.c.out)?.[1];
  if (base === undefined) throw new Error(`no status page address in: ${s.c.out}`);
  const client = await UsbipClient.connect({ host: "127.0.0.1", port: s.server.address.port });
  await client.import("1-1");
  await enumerate(client);
  const holder = `127.0.0.1:${client.socket.localPort}`;
  let moving = true;
  let rounds = 0;
  const traffic = (async () => {
    const data = pattern(16 * 1024, 7);
    while (moving) {
      expect((await bulkOut(client, 1, data)).status).toBe(0);
      expect(Buffer.compare((await bulkIn(client, 1, data.length)).data, data)).toBe(0);
      rounds++;
    }
  })();
  const status = async (): Promise<ServerStatus> => {
    const res = await fetch(`${base}status.json`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    return (await res.json()) as ServerStatus;
  };
  return {
    s,
    base,
    holder,
    status,
    rounds: () => rounds,
    async stop() {
      moving = false;
      await traffic;
      client.close();
      expect(await s.stop()).toBe(0);
    },
  };
}

describe("serve --metrics: the status page", () => {
  it("/status.json: state, holder and since, non-zero rates while data moves, the device's log lines", async () => {
    const b = await busyServer();
    try {
      await eventually(() => b.rounds() > 20, 10_000, "traffic");
      let st = await b.status();
      await eventually(
        async () => {
          st = await b.status();
          return st.devices[0]!.bytesPerSec > 0;
        },
        10_000,
        "a non-zero rate",
      );
      expect(st.up).toBe(true);
      const [loop, kbd] = st.devices;
      expect(loop).toMatchObject({
        busid: "1-1",
        state: "imported",
        holder: b.holder,
        failure: null,
        errors: 0,
      });
      expect(loop!.identity).toMatch(/^[0-9a-f]{4}:[0-9a-f]{4}$/);
      expect(Date.parse(loop!.since!)).toBeLessThanOrEqual(Date.now());
      expect(loop!.urbsPerSec).toBeGreaterThan(0);
      expect(loop!.bytesPerSec).toBeGreaterThan(0);
      expect(loop!.history.bytesPerSec.some((v) => v > 0)).toBe(true);
      expect(loop!.log.some((l) => l.level === "info" && l.message.includes("imported 1-1"))).toBe(true);
      expect(kbd).toMatchObject({ busid: "1-2", state: "free", holder: null, since: null, urbsPerSec: 0 });
      expect(kbd!.log).toEqual([]);

      // Without JavaScript the page is the same table, rendered by the server.
      const res = await fetch(b.base);
      expect(res.headers.get("content-type")).toMatch(/^text\/html/);
      const html = await res.text();
      expect(html).toMatch(/<tr data-busid="1-1">.*imported.*127\.0\.0\.1:\d+/s);
      expect(html).not.toMatch(/(src|href)="https?:/); // nothing from elsewhere
      expect((await fetch(`${b.base}status`)).status).toBe(200);
    } finally {
      await b.stop();
    }
  });

  const browser = chromium();
  it.skipIf(skipWithout("the headless Chromium test of the status page", browser))(
    "in headless Chromium the page polls /status.json and shows the device row, holder and a non-zero rate",
    async () => {
      const b = await busyServer();
      try {
        await eventually(() => b.rounds() > 20, 10_000, "traffic");
        // The server has a rate sample with traffic in it (the page shows what /status.json says).
        await eventually(
          async () => (await b.status()).devices[0]!.bytesPerSec > 0,
          10_000,
          "a non-zero rate",
        );
        const dom = await dumpDom(need(browser), b.base, 3000);
        // The script ran: it counts its polls on <body>.
        expect(dom).toMatch(/<body data-polled="[1-9]\d*"/);
        const row = /<tr data-busid="1-1">(.*?)<\/tr>/s.exec(dom)?.[1];
        expect(row).toBeDefined();
        expect(row).toContain(">imported<");
        expect(row).toContain(b.holder);
        const rate = /class="num bytes-rate">([\d.]+) ([kMG]?)B\/s/.exec(row!);
        expect(rate).not.toBeNull();
        expect(Number(rate![1])).toBeGreaterThan(0);
        expect(row).toMatch(/<svg class="spark bytes"[^>]*><title>[^<]*<\/title><polyline points="[\d., ]+"/);
        const file = join(outputDir(), "status-page.png");
        await screenshot(need(browser), b.base, file, 3000);
        expect(existsSync(file) && statSync(file).size > 1000).toBe(true);
      } finally {
        await b.stop();
      }
    },
  );
});
