/**
 * Announcing and discovering for real, in a network namespace each test makes (test/support/netns.ts):
 * never on the machine's own interfaces. Two `usbvirt serve --announce` processes and `usbvirt list
 * --discover` finding both with their devices; `attach --device` with a selector both match is an error
 * naming both; a hostile link (compression loops, an oversized TXT record, a flood of announcements) is
 * ignored with bounded memory while the real server is still found; and, under two umockdev testbeds, an
 * attachment by serial that follows its device from the first server to the second, with data verified
 * through it before and after.
 */
import { type ChildProcessWithoutNullStreams, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fakeDevice, PID, SERIAL, VID } from "../host/fixture.js";
import { ROOT } from "../host/run-child.js";
import { testbedPython, umockdevDescription } from "../host/umockdev.js";
import { eventually } from "../support/eventually.js";
import { netnsTool, TestNamespace } from "../support/netns.js";
import { makeTestPki } from "../support/tls-certs.js";
import { allOf, command, need, skipWithout } from "../support/tools.js";

const netns = netnsTool();
const openssl = command(["openssl"], "apt-get install openssl");
const CLI = join(ROOT, "dist/src/cli/main.js");

/** A child whose stdout lines are kept; `line(re)` waits for one that matches. */
function follow(child: ChildProcessWithoutNullStreams) {
  const lines: string[] = [];
  let stderr = "";
  let buffered = "";
  child.stdout.on("data", (b: Buffer) => {
    buffered += b.toString();
    const parts = buffered.split("\n");
    buffered = parts.pop()!;
    lines.push(...parts);
  });
  child.stderr.on("data", (b: Buffer) => {
    stderr += b.toString();
  });
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  return {
    lines,
    get stderr() {
      return stderr;
    },
    exited,
    send: (line: string) => child.stdin.write(`${line}\n`),
    /** SIGTERM to this child alone (`ip netns exec` execs the command: the pid is its own). */
    stop: () => child.kill("SIGTERM"),
    line: async (re: RegExp, ms = 30_000): Promise<string> => {
      await eventually(
        () => lines.some((l) => re.test(l)),
        ms,
        `a line matching ${re} (stderr: ${stderr.slice(-800)})`,
      );
      return lines.find((l) => re.test(l))!;
    },
    count: (re: RegExp) => lines.filter((l) => re.test(l)).length,
  };
}

describe.skipIf(skipWithout("the discovery tests in network namespaces", netns))(
  "discovery in a network namespace of the test's own",
  () => {
    let ns: TestNamespace;
    beforeAll(() => {
      need(netns);
      ns = TestNamespace.create();
    });
    afterAll(() => ns?.close());
    /** `usbvirt serve --port 0 --announce --name NAME EXTRA…` in the namespace. */
    const announcing = (name: string, ...extra: string[]) =>
      follow(
        ns.spawn(process.execPath, [CLI, "serve", "--port", "0", "--announce", "--name", name, ...extra]),
      );

    it("a child started outside the namespace refuses to run (exit 3) before it opens a socket", () => {
      const r = spawnSync(process.execPath, ["--import", "tsx", "test/discovery/children/hostile.ts", "1"], {
        cwd: ROOT,
        env: { ...process.env, USBVIRT_TEST_NETNS: ns.name },
        encoding: "utf8",
      });
      expect(r.status).toBe(3);
      expect(r.stderr).toMatch(
        /refusing to announce or discover: this process is (in the machine's own network namespace|not in namespace usbvirt-test-)/,
      );
    });

    it("two serve --announce and a redirect --announce are listed with their devices; status --discover reads the status of the one with metrics; a selector both USB/IP hosts match is ambiguous", async () => {
      const a = announcing("alpha", "--metrics", "0");
      const b = announcing("beta");
      const g = follow(
        ns.spawn(process.execPath, [
          CLI,
          "redirect",
          "--device",
          "keyboard",
          "--listen",
          "0",
          "--announce",
          "--name",
          "gamma",
        ]),
      );
      try {
        await a.line(/^status page:/);
        await b.line(/^on a Linux client:/);
        await g.line(/^listening on 127\.0\.0\.1:\d+/);
        const listed = ns.run(process.execPath, [CLI, "list", "--discover", "--json", "--timeout", "2"]);
        expect(listed.code).toBe(0);
        const found = JSON.parse(listed.stdout) as {
          servers: {
            name: string;
            service: string;
            port: number;
            txt: {
              status?: string;
              devices: {
                busid: string;
                vendorId: number;
                productId: number;
                serial?: string;
                held: boolean;
              }[];
            };
          }[];
        };
        const names = found.servers.map((s) => `${s.service} ${s.name.replace(/^.* /, "")}`);
        expect(names.sort()).toEqual(["_usbip._tcp alpha", "_usbip._tcp beta", "_usbredir._tcp gamma"]);
        for (const s of found.servers.filter((s) => s.service === "_usbip._tcp")) {
          expect(s.txt.devices.map((d) => [d.busid, d.vendorId, d.productId, d.serial, d.held])).toEqual([
            ["1-1", 0x1209, 1, "USBVIRT-LOOP-0001", false],
            ["1-2", 0x1209, 2, "USBVIRT-KBD-0001", false],
            ["1-3", 0x1209, 3, "5553425649520001", false],
          ]);
        }
        const gamma = found.servers.find((s) => s.service === "_usbredir._tcp")!;
        expect(gamma.port).toBe(Number(/127\.0\.0\.1:(\d+)/.exec(g.lines.join("\n"))![1]));
        expect(gamma.txt.devices).toEqual([
          {
            busid: "1-1",
            vendorId: 0x1209,
            productId: 2,
            deviceClass: 0,
            serial: "USBVIRT-KBD-0001",
            held: false,
          },
        ]);
        expect(found.servers.find((s) => s.name.endsWith("alpha"))!.txt.status).toMatch(/^127\.0\.0\.1:\d+$/);
        const table = ns.run(process.execPath, [CLI, "list", "--discover", "--timeout", "2"]);
        expect(table.stdout).toMatch(/alpha {2}USB\/IP 127\.0\.0\.1:\d+ {2}usbvirt \d/);
        expect(table.stdout).toMatch(
          /gamma {2}usbredir 127\.0\.0\.1:\d+ {2}usbvirt [^\n]*\n {2}1-1 +1209:0002 +class 00 +free {2}serial=USBVIRT-KBD-0001\n/,
        );

        const status = ns.run(process.execPath, [CLI, "status", "--discover", "--json", "--timeout", "2"]);
        expect(status.code).toBe(0);
        const reports = (
          JSON.parse(status.stdout) as {
            servers: {
              name: string;
              status: string | null;
              report?: { up: boolean; announce: string; devices: { busid: string; urbsPerSec: number }[] };
            }[];
          }
        ).servers;
        const alpha = reports.find((r) => r.name.endsWith("alpha"))!;
        expect(alpha.status).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
        expect(alpha.report?.up).toBe(true);
        expect(alpha.report?.announce).toMatch(
          /announced on multicast DNS as ".*alpha\._usbip\._tcp\.local"/,
        );
        expect(alpha.report?.devices.map((d) => [d.busid, typeof d.urbsPerSec])).toEqual([
          ["1-1", "number"],
          ["1-2", "number"],
          ["1-3", "number"],
        ]);
        expect(
          reports.filter((r) => r.report === undefined).map((r) => [r.name.replace(/^.* /, ""), r.status]),
        ).toEqual([
          ["beta", null],
          ["gamma", null],
        ]);
        const statusTable = ns.run(process.execPath, [CLI, "status", "--discover", "--timeout", "2"]);
        expect(statusTable.stdout).toMatch(
          /alpha {2}USB\/IP 127\.0\.0\.1:\d+\n {2}usbvirt \S+ at http:\/\/127\.0\.0\.1:\d+\/: engine up, 0 client connection\(s\)/,
        );
        expect(statusTable.stdout).toMatch(
          /\n {4}BUSID +DEVICE +STATE +CLIENT +URBS +BYTES +ERRORS +IN-FLIGHT +URBS\/S +BYTES\/S\n/,
        );
        expect(statusTable.stdout).toMatch(
          /beta {2}USB\/IP 127\.0\.0\.1:\d+\n {2}no status address announced/,
        );
        const ambiguous = ns.run(process.execPath, [
          CLI,
          "attach",
          "--device",
          "1209:0001",
          "--discover-timeout",
          "2",
        ]);
        expect(ambiguous.code).toBe(1);
        expect(ambiguous.stderr).toMatch(/"1209:0001" matches 2 free devices/);
        expect(ambiguous.stderr).toMatch(/1-1 1209:0001 serial=USBVIRT-LOOP-0001 on .*alpha/);
        expect(ambiguous.stderr).toMatch(/1-1 1209:0001 serial=USBVIRT-LOOP-0001 on .*beta/);
      } finally {
        a.stop();
        b.stop();
        g.stop();
        expect(await a.exited).toBe(0);
        expect(await b.exited).toBe(0);
        expect(await g.exited).toBe(0);
      }
    }, 60_000);

    it.skipIf(skipWithout("the discovery test with TLS (openssl makes its certificates)", openssl))(
      "a host that requires TLS announces its certificate's SHA-256 (and a status page with TLS, which status --discover reads only with the TLS flags); attach --device with a client certificate and no CA pins it and imports over TLS; attach --config takes each device's own TLS settings; without a certificate, or asking TLS of a host without it, is refused saying why",
      async () => {
        need(openssl);
        const pki = makeTestPki();
        const secure = announcing(
          "secure",
          "--device",
          "loopback",
          "--tls-cert",
          pki.server.cert,
          "--tls-key",
          pki.server.key,
          "--tls-client-ca",
          pki.ca.cert,
          "--metrics",
          "0",
          "--metrics-tls-cert",
          pki.server.cert,
          "--metrics-tls-key",
          pki.server.key,
          "--metrics-tls-client-ca",
          pki.ca.cert,
        );
        const plain = announcing("plain", "--device", "keyboard");
        try {
          await secure.line(/^on a Linux client:/);
          await plain.line(/^on a Linux client:/);
          const fp = pki.server.fingerprint.slice("SHA256:".length).replace(/:/g, "").toLowerCase();
          const table = ns.run(process.execPath, [CLI, "list", "--discover", "--timeout", "2"]);
          expect(table.stdout).toMatch(
            new RegExp(
              `secure {2}USB/IP 127\\.0\\.0\\.1:\\d+ {2}usbvirt \\S+, TLS required \\(sha256 ${fp}\\)`,
            ),
          );
          expect(table.stdout).toMatch(/plain {2}USB\/IP 127\.0\.0\.1:\d+ {2}usbvirt \S+, no TLS/);
          expect(table.stdout).toMatch(/, status https:\/\/127\.0\.0\.1:\d+\/ \(mutual TLS\)\n/);
          // Its status page needs TLS: read only with the TLS flags, never without.
          type Statuses = {
            servers: { name: string; status: string | null; error?: string; report?: { up: boolean } }[];
          };
          const statusOf = (args: string[]) =>
            (
              JSON.parse(
                ns.run(process.execPath, [CLI, "status", "--discover", "--json", "--timeout", "2", ...args])
                  .stdout,
              ) as Statuses
            ).servers.find((r) => r.name.endsWith(" secure"))!;
          const withoutTls = statusOf([]);
          expect(withoutTls.status).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/$/);
          expect(withoutTls.error).toMatch(/its status page needs mutual TLS/);
          const withTls = statusOf([
            "--tls-cert",
            pki.client.cert,
            "--tls-key",
            pki.client.key,
            "--tls-ca",
            pki.ca.cert,
          ]);
          expect(withTls.report?.up, withTls.error).toBe(true);
          const client = [
            "--tls-cert",
            pki.client.cert,
            "--tls-key",
            pki.client.key,
            "--discover-timeout",
            "1",
          ];
          const att = follow(ns.spawn(process.execPath, [CLI, "attach", "--device", "1209:0001", ...client]));
          expect(await att.line(/^attached 1209:0001 from /)).toMatch(/ secure \(127\.0\.0\.1:\d+ 1-1\)/);
          await eventually(
            () => /CN=alice/.test(secure.stderr),
            10_000,
            "the secure server logs the client's CN",
          );
          att.stop();
          expect(await att.exited).toBe(0);

          // One attach --config for both: each device with its own TLS settings (the plain one none).
          const listFile = join(pki.dir, "attach.json");
          writeFileSync(
            listFile,
            JSON.stringify({
              devices: [
                { device: "1209:0001", tlsCert: pki.client.cert, tlsKey: pki.client.key, tlsCa: pki.ca.cert },
                "1209:0002",
              ],
              discoverTimeout: 1,
            }),
          );
          const both = follow(ns.spawn(process.execPath, [CLI, "attach", "--config", listFile]));
          await both.line(/^attached 1209:0001 from .* secure /);
          await both.line(/^attached 1209:0002 from .* plain /);
          both.stop();
          expect(await both.exited).toBe(0);

          const bare = ns.run(process.execPath, [
            CLI,
            "attach",
            "--device",
            "1209:0001",
            "--no-reconnect",
            "--discover-timeout",
            "1",
          ]);
          expect(bare.code).toBe(1);
          expect(bare.stderr).toMatch(
            /1-1 1209:0001 serial=USBVIRT-LOOP-0001 on .*secure .*requires mutual TLS/,
          );
          const downgrade = ns.run(process.execPath, [
            CLI,
            "attach",
            "--device",
            "1209:0002",
            "--no-reconnect",
            ...client,
          ]);
          expect(downgrade.code).toBe(1);
          expect(downgrade.stderr).toMatch(
            /on .*plain .*announces no TLS and TLS settings were given: not used/,
          );
        } finally {
          secure.stop();
          plain.stop();
          await Promise.all([secure.exited, plain.exited]);
          pki.remove();
        }
      },
      60_000,
    );

    it("hostile answers (compression loops, an oversized TXT, a flood of instances) are ignored with bounded memory; the real server is still found", async () => {
      const a = announcing("real");
      try {
        await a.line(/^on a Linux client:/);
        const h = follow(
          ns.spawn(process.execPath, [
            "--expose-gc",
            "--import",
            "tsx",
            "test/discovery/children/hostile.ts",
            "3000",
          ]),
        );
        expect(await h.exited).toBe(0);
        const v = JSON.parse(h.lines.find((l) => l.startsWith("VERDICT "))!.slice(8)) as {
          servers: string[];
          ignored: { malformed: number; badTxt: number; overLimit: number };
          heapGrowth: number;
        };
        expect(v.servers.some((n) => n.endsWith(" real"))).toBe(true);
        expect(v.servers).not.toContain("huge");
        expect(v.servers.length).toBeLessThanOrEqual(256);
        expect(v.ignored.malformed).toBeGreaterThanOrEqual(40); // every looping packet
        expect(v.ignored.badTxt).toBeGreaterThanOrEqual(1);
        expect(v.ignored.overLimit).toBeGreaterThan(0); // the flood beyond 256 instances
        expect(v.heapGrowth).toBeLessThan(32 * 1024 * 1024);
      } finally {
        a.stop();
        await a.exited;
      }
    }, 60_000);
  },
);

const testbed = testbedPython();
/** serve exports the testbed's device by VID:PID and announces the serial the device gives (UV-0001). */
const EXPORTED = `${VID.toString(16)}:${PID.toString(16)}`;
const SELECTOR = `serial=${SERIAL}`;
/** The clients that follow a device by what it is: the CLI's `attach --device`, and a VMM's usbip port spec. */
const FOLLOWERS = [
  ["attach --device SEL", "test/discovery/children/follower.ts"],
  ['a port holding {kind: "usbip", select: SEL}', "test/discovery/children/port-follower.ts"],
] as const;
describe.skipIf(
  skipWithout("the follow test (network namespaces and the umockdev testbed)", allOf(netns, testbed)),
)("a device followed by its serial from one server to another", () => {
  it.each(FOLLOWERS)(
    "%s: attached from the first server with data through it, unplugged there, plugged into the second: followed, data again",
    async (_what, child) => {
      need(netns);
      const ns = TestNamespace.create();
      const dir = mkdtempSync(join(tmpdir(), "usbvirt-follow-"));
      const children: ReturnType<typeof follow>[] = [];
      try {
        const description = join(dir, "device.umockdev");
        writeFileSync(description, umockdevDescription(fakeDevice));
        const serve = (name: string, unplugged: boolean) =>
          follow(
            ns.spawn(
              need(testbed),
              [
                "test/host/children/testbed.py",
                ...(unplugged ? ["--start-unplugged"] : []),
                description,
                `/sys${fakeDevice.sysfsPath}`,
                "--",
                process.execPath,
                "--import",
                "tsx",
                "test/discovery/children/announcing-serve.ts",
                "--announce",
                "--name",
                name,
                "--device",
                EXPORTED,
              ],
              { USBVIRT_HOST_LOCK_DIR: mkdtempSync(join(dir, "locks-")), USBVIRT_TESTBED_SECONDS: "100" },
            ),
          );
        const first = serve("first", false);
        const second = serve("second", true);
        children.push(first, second);
        await first.line(/^READY \d+/);
        await second.line(/^READY \d+/);
        const listed = ns.run(process.execPath, [CLI, "list", "--discover", "--timeout", "2"]);
        expect(listed.stdout).toMatch(
          /first {2}USB\/IP[^\n]*\n {2}1-1 +1209:7301 +class ff +free {2}serial=UV-0001\n/,
        );
        expect(listed.stdout).toMatch(/second {2}USB\/IP[^\n]*\n {2}\(no devices\)/);

        const client = follow(ns.spawn(process.execPath, ["--import", "tsx", child, SELECTOR]));
        children.push(client);
        expect(await client.line(/^ATTACHED /)).toMatch(/^ATTACHED \S+ first true$/);
        first.send("unplug");
        await client.line(/^LOST /);
        second.send("plug");
        await eventually(() => client.count(/^ATTACHED /) === 2, 40_000, "attached again");
        expect(client.lines.filter((l) => l.startsWith("ATTACHED "))[1]).toMatch(
          /^ATTACHED \S+ second true$/,
        );
        // The second server announces it held now.
        const after = ns.run(process.execPath, [CLI, "list", "--discover", "--timeout", "2"]);
        expect(after.stdout).toMatch(
          /second {2}USB\/IP[^\n]*\n {2}1-1 +1209:7301 +class ff +held {2}serial=UV-0001\n/,
        );
        client.send("stop");
        expect(await client.exited).toBe(0);
      } finally {
        for (const c of children) c.send("stop");
        await Promise.all(children.map((c) => c.exited));
        ns.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
    120_000,
  );
});
