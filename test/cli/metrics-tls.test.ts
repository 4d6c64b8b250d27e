/**
 * The metrics and status endpoint over HTTPS with mutual TLS (`--metrics-tls-…`, config keys `metricsTls…`):
 * a scraper and `usbvirt status` with a certificate the client CA signed read it; a client without a
 * certificate, with one another CA signed, or speaking plain HTTP is refused with one log line saying which
 * check failed and gets no HTTP answer; a client pinned by fingerprint is served; the Host check still
 * applies behind TLS; partial or misplaced flags are usage errors. Certificates by `openssl` for the run.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { RawConnection } from "../network-face/raw-connection.js";
import { eventually } from "../support/eventually.js";
import { type CertFiles, makeTestPki, opensslTool, type TestPki } from "../support/tls-certs.js";
import { skipWithout } from "../support/tools.js";
import { capture, redirectInProcess, serveInProcess } from "./helpers.js";

interface Answer {
  readonly status: number;
  readonly body: string;
}

describe.skipIf(skipWithout("the metrics endpoint over mutual TLS", opensslTool()))(
  "the metrics endpoint with mutual TLS",
  () => {
    let pki: TestPki;
    let s: Awaited<ReturnType<typeof serveInProcess>>;
    let port: number;

    beforeAll(async () => {
      pki = makeTestPki();
      s = await serveInProcess([
        "--device",
        "loopback",
        "--metrics",
        "127.0.0.1:0",
        "--metrics-tls-cert",
        pki.server.cert,
        "--metrics-tls-key",
        pki.server.key,
        "--metrics-tls-client-ca",
        pki.ca.cert,
      ]);
      port = Number(/metrics: https:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(s.c.out)![1]);
    });

    afterAll(async () => {
      expect(await s?.stop()).toBe(0);
      pki?.remove();
    });

    /** GET `path` over HTTPS, verifying the server by the CA, presenting `who`'s certificate (or none). */
    function get(path: string, who: CertFiles | null, host = `127.0.0.1:${port}`): Promise<Answer> {
      return new Promise((resolve, reject) => {
        const req = request(
          {
            host: "127.0.0.1",
            port,
            path,
            headers: { host },
            // The server's certificate names localhost (node:https would check the Host header's name).
            servername: "localhost",
            agent: false,
            ca: readFileSync(pki.ca.cert),
            ...(who !== null ? { cert: readFileSync(who.cert), key: readFileSync(who.key) } : {}),
          },
          (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => {
              body += c;
            });
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end();
      });
    }

    /** The refusals logged so far for the metrics endpoint. */
    const refusals = () => s.c.logger.matching("metrics endpoint: ");

    it("a scraper with a certificate the client CA signed reads /metrics and /status.json", async () => {
      const m = await get("/metrics", pki.client);
      expect(m.status).toBe(200);
      expect(m.body).toMatch(/^usbvirt_up 1$/m);
      const st = await get("/status.json", pki.client);
      expect(st.status).toBe(200);
      expect((JSON.parse(st.body) as { devices: { busid: string }[] }).devices[0]?.busid).toBe("1-1");
    });

    it("usbvirt status reads it with --tls-ca and its client certificate, and says why without one", async () => {
      const ok = capture();
      const tls = ["--tls-ca", pki.ca.cert, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key];
      expect(await run(["status", "--metrics", `127.0.0.1:${port}`, ...tls], ok.io), ok.err).toBe(0);
      expect(ok.out).toContain(`at https://127.0.0.1:${port}: engine up`);
      expect(ok.out).toMatch(/1-1 +usbvirt loopback/);

      const before = refusals().length;
      const bare = capture();
      expect(await run(["status", "--metrics", `127.0.0.1:${port}`, "--tls-ca", pki.ca.cert], bare.io)).toBe(
        1,
      );
      expect(bare.err).toContain(`cannot read the status at https://127.0.0.1:${port}/status.json:`);
      expect(bare.err).toContain("its log says which check failed");
      await eventually(() => refusals().length > before, 5000, "the refusal's log line");
      expect(refusals().slice(before)).toEqual([
        expect.stringMatching(
          /^warn: metrics endpoint: 127\.0\.0\.1:\d+: TLS refused: no client certificate$/,
        ),
      ]);
    });

    it("no client certificate, or one another CA signed: refused with a log line, no HTTP answer", async () => {
      const before = refusals().length;
      await expect(get("/metrics", null)).rejects.toThrow();
      await expect(get("/metrics", pki.otherCa)).rejects.toThrow();
      await eventually(() => refusals().length >= before + 2, 5000, "two refusals' log lines");
      expect(refusals().slice(before)).toEqual([
        expect.stringMatching(
          /^warn: metrics endpoint: 127\.0\.0\.1:\d+: TLS refused: no client certificate$/,
        ),
        expect.stringMatching(
          /^warn: metrics endpoint: 127\.0\.0\.1:\d+: TLS refused: client certificate CN=mallory, SHA256:[0-9A-F:]+ refused: it is not signed by the client CA \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)$/,
        ),
      ]);
    });

    it("a plain-HTTP client is refused before HTTP reads its request: no answer, one log line", async () => {
      const before = refusals().length;
      const raw = await RawConnection.open(port);
      raw.write(Buffer.from(`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`));
      await raw.closedBy(5000, "the endpoint closing a plain-HTTP connection");
      expect(raw.received.toString("latin1")).not.toMatch(/HTTP\/1\.1|usbvirt_/);
      await eventually(() => refusals().length > before, 5000, "the refusal's log line");
      expect(refusals().slice(before)).toEqual([
        expect.stringMatching(
          new RegExp(
            `^warn: metrics endpoint: ${raw.name.replace(/\./g, "\\.")}: TLS refused: not a TLS client \\(plain TCP\\?\\) \\(ERR_SSL_`,
          ),
        ),
      ]);
    });

    it("the Host check still applies behind TLS: a rebinding name gets 421 and nothing else", async () => {
      for (const path of ["/metrics", "/status.json", "/"]) {
        const a = await get(path, pki.client, "evil.example");
        expect(a.status, path).toBe(421);
        expect(a.body, path).not.toMatch(/usbvirt_|"devices"|<html|loopback/);
      }
      expect((await get("/metrics", pki.client, "localhost")).status).toBe(200);
    });
  },
);

describe.skipIf(skipWithout("the metrics endpoint's TLS settings", opensslTool()))(
  "the metrics endpoint's TLS settings",
  () => {
    let pki: TestPki;
    beforeAll(() => {
      pki = makeTestPki();
    });
    afterAll(() => pki?.remove());

    it("redirect takes them from its config file (metricsTls… keys); a pinned client is served", async () => {
      const config = join(pki.dir, "redirect.json");
      writeFileSync(
        config,
        JSON.stringify({
          device: "loopback",
          listen: "127.0.0.1:0",
          metrics: "127.0.0.1:0",
          metricsTlsCert: pki.server.cert,
          metricsTlsKey: pki.server.key,
          metricsTlsClientFingerprints: [pki.selfSigned.fingerprint],
        }),
      );
      const r = redirectInProcess(["--config", config]);
      await r.ready;
      try {
        const port = Number(/metrics: https:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(r.c.out)![1]);
        const pinned = capture();
        const flags = [
          "--tls-ca",
          pki.ca.cert,
          "--tls-cert",
          pki.selfSigned.cert,
          "--tls-key",
          pki.selfSigned.key,
        ];
        expect(await run(["status", "--metrics", `127.0.0.1:${port}`, ...flags], pinned.io), pinned.err).toBe(
          0,
        );
        expect(pinned.out).toContain("engine up");
        const other = capture();
        const alice = ["--tls-ca", pki.ca.cert, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key];
        expect(await run(["status", "--metrics", `127.0.0.1:${port}`, ...alice], other.io)).toBe(1);
        await eventually(() => r.c.logger.matching("is not pinned").length > 0, 5000, "the refusal");
        expect(r.c.logger.matching("is not pinned")).toEqual([
          expect.stringMatching(
            /^warn: metrics endpoint: 127\.0\.0\.1:\d+: TLS refused: client certificate CN=alice, SHA256:[0-9A-F:]+ is not pinned/,
          ),
        ]);
      } finally {
        expect(await r.stop()).toBe(0);
      }
    });

    it("partial or misplaced flags are usage errors naming the --metrics-tls- flags", async () => {
      const cases: [string[], string][] = [
        [
          ["--metrics", "0", "--metrics-tls-cert", pki.server.cert],
          "TLS needs both --metrics-tls-cert and --metrics-tls-key",
        ],
        [
          ["--metrics", "0", "--metrics-tls-cert", pki.server.cert, "--metrics-tls-key", pki.server.key],
          "TLS here is mutual: give --metrics-tls-client-ca and/or --metrics-tls-client-fingerprint",
        ],
        [
          [
            "--metrics-tls-cert",
            pki.server.cert,
            "--metrics-tls-key",
            pki.server.key,
            "--metrics-tls-client-ca",
            pki.ca.cert,
          ],
          "it needs --metrics [HOST:]PORT",
        ],
        [
          [
            "--metrics",
            `unix:${join(pki.dir, "m.sock")}`,
            "--metrics-tls-cert",
            pki.server.cert,
            "--metrics-tls-key",
            pki.server.key,
            "--metrics-tls-client-ca",
            pki.ca.cert,
          ],
          "a unix: socket's file mode and group decide who may connect",
        ],
        [
          ["--metrics", "0", "--metrics-tls-min-version", "1.1"],
          '--metrics-tls-min-version: must be "1.2" or "1.3"',
        ],
      ];
      for (const [flags, message] of cases) {
        const c = capture();
        expect(await run(["serve", "--port", "0", "--device", "loopback", ...flags], c.io), c.err).toBe(2);
        expect(c.err).toContain(message);
      }
      const st = capture();
      expect(
        await run(["status", "--metrics", "unix:/nonexistent.sock", "--tls-ca", pki.ca.cert], st.io),
      ).toBe(2);
      expect(st.err).toContain("TLS is for a TCP endpoint");
    });
  },
);
