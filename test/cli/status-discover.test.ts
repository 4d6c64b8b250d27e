/**
 * `usbvirt status` reads another program's /status.json: a page that is not a usbvirt status (a field
 * missing, of the wrong type, a list too long) is refused with what is wrong, before anything is printed.
 * With --discover, where each server's announced status address is reached from: an unspecified host is
 * the server's own address; a loopback one only when the server itself was found on loopback.
 */
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { statusAddressOf } from "../../src/cli/discover.js";
import { run } from "../../src/cli/run.js";
import { checkReport } from "../../src/cli/status.js";
import type { DiscoveredServer } from "../../src/discovery/browser.js";
import { capture } from "./helpers.js";

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

async function page(body: string): Promise<number> {
  const fake: HttpServer = createHttpServer((_req, res) => res.end(body));
  await new Promise<void>((r) => fake.listen(0, "127.0.0.1", r));
  closers.push(() => new Promise((r) => fake.close(() => r())));
  return (fake.address() as { port: number }).port;
}

const report = {
  version: "0.1.0",
  up: true,
  clients: 0,
  backendLosses: 0,
  grantFaults: 0,
  devices: [
    {
      busid: "1-1",
      name: "loopback",
      identity: "1209:0001",
      state: "free",
      holder: null,
      failure: null,
      urbs: 0,
      bytes: 0,
      errors: 0,
      inFlight: 0,
      urbsPerSec: 0,
      bytesPerSec: 0,
    },
  ],
};

describe("a status page's answer is checked", () => {
  it("a page without devices, with a string where a count goes, or with too many devices is refused, saying what", async () => {
    for (const [body, why] of [
      [JSON.stringify({ ...report, devices: undefined }), /devices/],
      [JSON.stringify({ ...report, clients: "many" }), /clients/],
      [JSON.stringify({ ...report, devices: Array(65).fill(report.devices[0]) }), /devices/],
      ["<html>", /not JSON/],
    ] as const) {
      const port = await page(body);
      const c = capture();
      expect(await run(["status", "--metrics", `127.0.0.1:${port}`], c.io)).toBe(1);
      expect(c.err).toMatch(/usbvirt status: .*(not a usbvirt status|not JSON)/);
      expect(c.err).toMatch(why);
      expect(c.out).toBe("");
    }
    expect(checkReport(JSON.stringify(report)).devices).toHaveLength(1);
  });

  it("--discover and --metrics exclude each other; --timeout belongs to --discover", async () => {
    const c = capture();
    expect(await run(["status", "--discover", "--metrics", "9240"], c.io)).toBe(2);
    expect(await run(["status", "--timeout", "1"], c.io)).toBe(2);
    expect(c.err).toMatch(/--timeout applies to --discover only/);
  });
});

describe("where an announced status address is reached from", () => {
  const server = (host: string, status?: string): DiscoveredServer => ({
    service: "_usbip._tcp",
    instance: "a._usbip._tcp.local",
    name: "a",
    host,
    port: 3240,
    txt: { version: "1", tls: false, devices: [], more: 0, dropped: 0, ...(status ? { status } : {}) },
  });
  it("as announced; an unspecified host is the server's address; another host's loopback is out of reach", () => {
    expect(statusAddressOf(server("10.0.0.5"))).toBeNull();
    expect(statusAddressOf(server("10.0.0.5", "10.0.0.5:9240"))).toEqual({
      host: "10.0.0.5",
      port: 9240,
      tls: false,
    });
    expect(statusAddressOf(server("10.0.0.5", "0.0.0.0:9240"))).toEqual({
      host: "10.0.0.5",
      port: 9240,
      tls: false,
    });
    expect(statusAddressOf(server("127.0.0.1", "127.0.0.1:9240"))).toEqual({
      host: "127.0.0.1",
      port: 9240,
      tls: false,
    });
    const secure = server("10.0.0.5", "0.0.0.0:9240");
    expect(statusAddressOf({ ...secure, txt: { ...secure.txt, statusTls: true } })).toEqual({
      host: "10.0.0.5",
      port: 9240,
      tls: true,
    });
    expect(statusAddressOf(server("10.0.0.5", "127.0.0.1:9240"))).toMatchObject({
      unreachable: expect.stringMatching(/its own loopback/),
    });
  });
});
