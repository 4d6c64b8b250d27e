/**
 * usbvirt's TLS against third parties, through the real commands: `serve` with mutual TLS and `attach
 * --check` with its client certificate; `attach` against a plain `serve` behind stunnel in server mode
 * (our client and a third-party TLS endpoint that checks our certificate); Linux's `usbip list -r` through
 * stunnel in client mode against a TLS `serve` (how a vhci-hcd user deploys it); and a stunnel client
 * without a certificate refused by `serve` with its log line. Certificates by `openssl` for the run.
 */
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { makeTestPki, opensslTool, type TestPki } from "../support/tls-certs.js";
import { allOf, command, need, skipWithout } from "../support/tools.js";
import { capture, freePort, serveInProcess, spawnChild } from "./helpers.js";

// Each test needs openssl's certificates (the hooks run only when a test does); stunnel and usbip where named.
const openssl = opensslTool();
const stunnelTool = allOf(openssl, command(["stunnel4", "stunnel"], "apt-get install stunnel4"));
const usbipTool = command(["usbip", "/usr/sbin/usbip"], "apt-get install usbip");

let pki: TestPki;
beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => pki.remove());

const stops: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s();
});

function serverFlags(): string[] {
  return ["--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-client-ca", pki.ca.cert];
}
function clientFlags(): string[] {
  return ["--tls-ca", pki.ca.cert, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key];
}

/** stunnel in the foreground with `service` lines; resolves once it accepts connections. */
async function stunnel(name: string, service: string[]): Promise<number> {
  // A free port: stunnel's accept cannot report a port it picked.
  const port = await freePort();
  const conf = join(pki.dir, `${name}.conf`);
  writeFileSync(
    conf,
    [
      "foreground = yes",
      "pid =",
      "debug = 5",
      `[${name}]`,
      `accept = 127.0.0.1:${port}`,
      ...service,
      "",
    ].join("\n"),
  );
  const child = spawnChild([conf], need(stunnelTool)[1]);
  stops.push(async () => {
    child.child.kill("SIGTERM");
    await child.exited;
  });
  await child.waitFor(/Configuration successful|bound to|Service .* accepted/);
  return port;
}

/** `attach HOST:PORT 1-1 --check` in-process, with `flags`; its exit status and output. */
async function attachCheck(port: number, flags: string[]) {
  const c = capture();
  const code = await run(["attach", `127.0.0.1:${port}`, "1-1", "--check", "--no-reconnect", ...flags], c.io);
  return { code, out: c.out, err: c.err };
}

describe("usbvirt with mutual TLS, and third-party TLS endpoints", () => {
  it.skipIf(skipWithout("serve with mutual TLS and attach", openssl))(
    "serve with mutual TLS: attach --check with a client certificate passes; the import line names it",
    async () => {
      const s = await serveInProcess(["--device", "loopback", ...serverFlags()]);
      stops.push(s.stop);
      const r = await attachCheck(s.server.address.port, clientFlags());
      expect(r.out).toContain("check passed");
      expect(r.code).toBe(0);
      expect(s.c.logger.lines.some((l) => /imported 1-1 .*/.test(l) && l.includes("(CN=alice)"))).toBe(true);
    },
  );

  it.skipIf(skipWithout("attach against stunnel in server mode", stunnelTool))(
    "attach with mutual TLS against a plain serve behind stunnel (server mode, client certificate required)",
    async () => {
      const s = await serveInProcess(["--device", "loopback"]);
      stops.push(s.stop);
      const port = await stunnel("usbip-server", [
        `connect = 127.0.0.1:${s.server.address.port}`,
        `cert = ${pki.server.cert}`,
        `key = ${pki.server.key}`,
        `CAfile = ${pki.ca.cert}`,
        "verifyChain = yes",
        "requireCert = yes",
        "sslVersionMin = TLSv1.3",
      ]);
      const r = await attachCheck(port, clientFlags());
      expect(r.out).toContain("check passed");
      expect(r.code).toBe(0);
    },
  );

  it.skipIf(skipWithout("usbip list -r through stunnel", allOf(stunnelTool, usbipTool)))(
    "Linux's usbip list -r through stunnel (client mode) against a TLS serve; a stunnel without a certificate is refused",
    async () => {
      const s = await serveInProcess(["--device", "loopback", "--device", "keyboard", ...serverFlags()]);
      stops.push(s.stop);
      const target = `connect = 127.0.0.1:${s.server.address.port}`;
      const port = await stunnel("usbip-client", [
        "client = yes",
        target,
        `cert = ${pki.client.cert}`,
        `key = ${pki.client.key}`,
        `CAfile = ${pki.ca.cert}`,
        "verifyChain = yes",
        "checkHost = localhost",
      ]);
      const list = await usbipList(port);
      expect(list.code).toBe(0);
      expect(list.out).toMatch(/1-1: .*\n[\s\S]*1-2: /);
      expect(s.c.logger.lines.some((l) => l.includes("device list") && l.includes("(CN=alice)"))).toBe(true);

      const bare = await stunnel("usbip-nocert", [
        "client = yes",
        target,
        `CAfile = ${pki.ca.cert}`,
        "verifyChain = yes",
      ]);
      const refused = await usbipList(bare);
      expect(refused.out).not.toMatch(/1-1: /);
      expect(s.c.logger.matching("TLS refused: no client certificate")).toHaveLength(1);
    },
  );
});

/** Linux's `usbip --tcp-port PORT list -r 127.0.0.1`. */
function usbipList(port: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(need(usbipTool), ["--tcp-port", String(port), "list", "-r", "127.0.0.1"]);
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.on("exit", (code) => resolve({ code, out }));
  });
}
