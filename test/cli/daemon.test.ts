/**
 * usbvirt as a daemon, serve and redirect alike: --version, JSON log lines with the client and busid, the
 * engine dying for good (logged, exit 1), a port already in use, and systemd socket activation through the
 * real `systemd-socket-activate` (redirect with contrib's example config file): a passed socket bound beyond
 * loopback gets the exposure warning, a passed socket file is served and named (no warning).
 */
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { socketActivationFd } from "../../src/cli/daemon.js";
import { run } from "../../src/cli/run.js";
import { jsonLine, streamLogger } from "../../src/network-face/log.js";
import { listRemote } from "../../src/usbip/client.js";
import { encodeDevlistRequest } from "../../src/usbip/management-pdus.js";
import { attachRemote } from "../../src/usbip-attach/attach.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { need, skipWithout } from "../support/tools.js";
import {
  capture,
  connectedTo,
  freePort,
  ROOT,
  redirectInProcess,
  serveInProcess,
  socketActivateTool,
  spawnChild,
} from "./helpers.js";

const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

describe("usbvirt --version", () => {
  it("--version and -V print the package.json version and exit 0", async () => {
    for (const flag of ["--version", "-V"]) {
      const c = capture();
      expect(await run([flag], c.io)).toBe(0);
      expect(c.out).toBe(`usbvirt ${VERSION}\n`);
    }
  });
});

describe("--log-format json", () => {
  it("one JSON object per line: time, level, message, then the fields; fixed keys cannot be overridden", () => {
    const line = jsonLine(
      "warn",
      'say "hi"',
      { client: "10.0.0.1:5", busid: "1-1", level: "x" },
      new Date(0),
    );
    expect(line.endsWith("\n")).toBe(true);
    expect(line.indexOf("\n")).toBe(line.length - 1);
    expect(JSON.parse(line)).toEqual({
      time: "1970-01-01T00:00:00.000Z",
      level: "warn",
      message: 'say "hi"',
      client: "10.0.0.1:5",
      busid: "1-1",
    });
    const lines: string[] = [];
    streamLogger("json", (l) => lines.push(l)).info("m", { client: "c" });
    streamLogger("text", (l) => lines.push(l)).info("m", { client: "c" });
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: "info", message: "m", client: "c" });
    expect(lines[1]).toMatch(/^\S+ usbvirt info: m\n$/);
  });

  it("the server's lines carry the client's address and the device's busid", async () => {
    const s = await serveInProcess(["--device", "loopback"]);
    const { port } = s.server.address;
    const att = await attachRemote({ host: "127.0.0.1", port, busid: "1-1" });
    await att.close();
    expect(await s.stop()).toBe(0);
    const imported = s.c.logger.records.find((r) => r.message.includes("imported 1-1"));
    expect(imported?.fields).toEqual({ client: expect.stringMatching(/^127\.0\.0\.1:\d+$/), busid: "1-1" });
    const detached = s.c.logger.records.find((r) => r.message.includes("detached 1-1"));
    expect(detached?.fields?.busid).toBe("1-1");
  });

  it("rejects another format with a usage error (exit 2)", async () => {
    const c = capture();
    expect(await run(["serve", "--port", "0", "--log-format", "xml"], c.io)).toBe(2);
    expect(c.err).toContain('--log-format: must be "text" or "json", not "xml"');
  });
});

describe("the engine dying for good", () => {
  it("serve logs it and exits 1 once the backend was lost more often than maxRestarts (5)", async () => {
    const s = await serveInProcess(["--device", "loopback"]);
    const conn = s.server.connection;
    // Each restart is a backend loss; the sixth is one too many and leaves the connection Closed.
    for (let i = 0; i < 6; i++) await conn.restartBackend();
    expect(await s.exit).toBe(1);
    const died = s.c.logger.matching("stopped for good");
    expect(died).toHaveLength(1);
    expect(died[0]).toMatch(
      /^error: the engine stopped for good after 6 backend loss\(es\); last loss: .+exiting with status 1/,
    );
    expect(s.c.logger.matching("server stopped")).toHaveLength(1);
  });

  it("redirect logs it and exits 1 the same way", async () => {
    const r = redirectInProcess(["--device", "loopback", "--listen", "0"]);
    const conn = (await r.ready).connection;
    for (let i = 0; i < 6; i++) await conn.restartBackend();
    expect(await r.exit).toBe(1);
    expect(r.c.logger.matching("stopped for good")).toEqual([
      expect.stringMatching(
        /^error: the engine stopped for good after 6 backend loss\(es\).+exiting with status 1/,
      ),
    ]);
  });

  it("a closed server (SIGINT) is not reported as a death", async () => {
    const s = await serveInProcess(["--device", "loopback"]);
    expect(await s.stop()).toBe(0);
    expect(s.c.logger.matching("stopped for good")).toEqual([]);
  });
});

describe("a port already in use", () => {
  it("serve and redirect say which address and what to do, and exit 1", async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
    const port = (taken.address() as { port: number }).port;
    try {
      for (const args of [
        ["serve", "--device", "loopback", "--port", String(port)],
        ["redirect", "--device", "loopback", "--listen", String(port)],
      ]) {
        const c = capture();
        expect(await run(args, c.io)).toBe(1);
        expect(c.err).toBe(
          `usbvirt ${args[0]}: cannot listen on 127.0.0.1:${port}: the port is in use (by another program, or another usbvirt): choose another port\n`,
        );
      }
    } finally {
      taken.close();
    }
  });
});

describe("systemd socket activation", () => {
  it("LISTEN_PID/LISTEN_FDS: fd 3 for this process only, exactly one socket, variables removed", () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: "42", LISTEN_FDS: "1", LISTEN_FDNAMES: "usbip" };
    expect(socketActivationFd(env, 42)).toBe(3);
    expect(env).toEqual({});
    expect(socketActivationFd({ LISTEN_PID: "41", LISTEN_FDS: "1" }, 42)).toBeNull();
    expect(socketActivationFd({}, 42)).toBeNull();
    expect(() => socketActivationFd({ LISTEN_PID: "42", LISTEN_FDS: "2" }, 42)).toThrow(/exactly one/);
    expect(() => socketActivationFd({ LISTEN_PID: "42", LISTEN_FDS: "x" }, 42)).toThrow(/LISTEN_FDS/);
  });

  it("redirect --connect refuses a socket systemd passed (it would never be used), with exit 2", async () => {
    process.env.LISTEN_PID = String(process.pid);
    process.env.LISTEN_FDS = "1";
    const c = capture();
    expect(await run(["redirect", "--device", "keyboard", "--connect", "127.0.0.1:1"], c.io)).toBe(2);
    expect(c.err).toContain(
      "usbvirt redirect: systemd passed a listening socket (LISTEN_FDS), which --connect does not use",
    );
    // Read once, like sd_listen_fds(3): the variables are gone.
    expect([process.env.LISTEN_PID, process.env.LISTEN_FDS]).toEqual([undefined, undefined]);
  });

  const socketActivate = socketActivateTool();

  /**
   * `usbvirt ARGS` (from src, through tsx) started by systemd-socket-activate on its first connection to
   * `at`: a port on 127.0.0.1, or what `-l` takes (ADDRESS:PORT, a socket file's path).
   */
  const activated = (at: number | string, args: readonly string[]) =>
    spawnChild(
      [
        "-l",
        typeof at === "number" ? `127.0.0.1:${at}` : at,
        process.execPath,
        "--import",
        "tsx",
        "src/cli/main.ts",
        ...args,
      ],
      need(socketActivate),
    );
  const jsonLines = (text: string) =>
    text
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it.skipIf(skipWithout("serve under systemd-socket-activate", socketActivate))(
    "serve under systemd-socket-activate listens on the passed socket, logs JSON, exits 0 on SIGTERM",
    async () => {
      // A free port: systemd-socket-activate binds it itself.
      const port = await freePort();
      const p = activated(port, ["serve", "--port", "1", "--device", "loopback", "--log-format", "json"]);
      try {
        await p.waitFor(/Listening on 127\.0\.0\.1:\d+ as 3/, "err");
        // The first connection starts usbvirt (exec'd with LISTEN_FDS=1): it must answer on that socket.
        // Generous: usbvirt starts (tsx, the engine) only now, on a machine that may be busy.
        const devices = await listRemote({ host: "127.0.0.1", port, timeoutMs: 20_000 });
        expect(devices.map((d) => d.busid)).toEqual(["1-1"]);
        await p.waitFor(/device list/, "err");
        expect(p.out()).toContain(`on 127.0.0.1:${port}`);
        const json = jsonLines(p.err());
        expect(json.find((l) => String(l.message).includes("socket systemd passed"))).toBeDefined();
        expect(json.find((l) => String(l.message).includes("device list"))).toMatchObject({
          level: "info",
          client: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
        });
      } finally {
        p.child.kill("SIGTERM");
      }
      expect(await p.exited).toBe(0);
    },
    30_000,
  );

  it.skipIf(skipWithout("redirect under systemd-socket-activate", socketActivate))(
    "redirect under systemd-socket-activate, configured by contrib's example file, listens on the passed socket",
    async () => {
      const port = await freePort();
      // contrib's example as an instance would have it, its disk in a scratch directory (metrics left out:
      // its socket folder is systemd's to make); the socket it listens on is the one passed.
      const example = JSON.parse(
        await readFile(join(ROOT, "contrib", "usbvirt-redirect.example.json"), "utf8"),
      ) as Record<string, unknown>;
      const dir = await mkdtemp(join(tmpdir(), "usbvirt-redirect-"));
      const config = join(dir, `${port}.json`);
      const { metrics: _none, ...settings } = example;
      await writeFile(config, JSON.stringify({ ...settings, storageFile: join(dir, "disk.img") }));
      const p = activated(port, ["redirect", "--config", config, "--log-format", "json"]);
      try {
        await p.waitFor(/Listening on 127\.0\.0\.1:\d+ as 3/, "err");
        // The first connection starts usbvirt (exec'd with LISTEN_FDS=1): it must get the device on that socket.
        const g = await UsbredirClient.connect(port, { timeoutMs: 20_000 });
        expect(g.device?.vendorId).toBe(0x1209);
        expect(p.out()).toContain(`listening on 127.0.0.1:${port}`);
        const json = jsonLines(p.err());
        expect(json.find((l) => String(l.message).includes("socket systemd passed"))).toMatchObject({
          level: "info",
          message: "listening on the socket systemd passed (fd 3), not --listen",
        });
        g.close();
      } finally {
        p.child.kill("SIGTERM");
      }
      expect(await p.exited).toBe(0);
      expect(p.err()).toMatch(/SIGTERM: shutting down/);
    },
    30_000,
  );

  it.skipIf(skipWithout("the exposure warning under systemd-socket-activate", socketActivate))(
    "a passed socket bound beyond loopback (0.0.0.0) gets the exposure warning, serve and redirect alike",
    async () => {
      // The allowlist keeps every other host out while the port is open on all interfaces.
      const cases = [
        {
          args: ["serve", "--port", "1", "--device", "loopback"],
          reach: (port: number) => listRemote({ host: "127.0.0.1", port, timeoutMs: 20_000 }),
          warning:
            "listening on 0.0.0.0: USB/IP has no authentication or encryption; only the --allow-client list (127.0.0.1) decides who can import devices",
        },
        {
          args: ["redirect", "--device", "loopback"],
          reach: async (port: number) => (await UsbredirClient.connect(port, { timeoutMs: 20_000 })).close(),
          warning:
            "listening on 0.0.0.0: usbredir has no authentication or encryption; only the --allow-client list (127.0.0.1) decides who can take the device",
        },
      ];
      for (const c of cases) {
        const port = await freePort();
        const p = activated(`0.0.0.0:${port}`, [
          ...c.args,
          "--allow-client",
          "127.0.0.1",
          "--log-format",
          "json",
        ]);
        try {
          await p.waitFor(/Listening on 0\.0\.0\.0:\d+ as 3/, "err");
          await c.reach(port);
          await p.waitFor(/socket systemd passed/, "err");
          const json = jsonLines(p.err());
          expect(
            json.filter((l) => String(l.message).startsWith("listening on 0.0.0.0")),
            c.args[0],
          ).toEqual([
            expect.objectContaining({ level: "warn", message: expect.stringContaining(c.warning) }),
          ]);
        } finally {
          p.child.kill("SIGTERM");
        }
        expect(await p.exited, c.args[0]).toBe(0);
      }
    },
    60_000,
  );

  it.skipIf(skipWithout("a socket file under systemd-socket-activate", socketActivate))(
    "a passed Unix-domain socket: redirect gives the device there and names the path for QEMU; serve answers there; neither warns",
    async () => {
      const dir = await mkdtemp(join(tmpdir(), "usbvirt-activate-"));
      const vm = join(dir, "vm1.sock");
      const r = activated(vm, ["redirect", "--device", "loopback", "--log-format", "json"]);
      try {
        await r.waitFor(/Listening on .*vm1\.sock as 3/, "err");
        const g = await UsbredirClient.over(await connectedTo(vm), { timeoutMs: 20_000 });
        expect(g.device?.vendorId).toBe(0x1209);
        expect(r.out()).toContain(
          `listening on ${vm} (the socket systemd passed); in QEMU:  -device qemu-xhci,id=xhci -chardev socket,id=usbredir0,path=${vm},reconnect=2`,
        );
        g.close();
      } finally {
        r.child.kill("SIGTERM");
      }
      expect(await r.exited).toBe(0);
      const exposure = (text: string) =>
        jsonLines(text).filter((l) => l.level === "warn" && String(l.message).startsWith("listening on"));
      expect(exposure(r.err())).toEqual([]);
      expect(r.err()).toContain("listening on the socket systemd passed (fd 3), not --listen");

      const usbip = join(dir, "usbip.sock");
      const s = activated(usbip, ["serve", "--port", "1", "--device", "loopback", "--log-format", "json"]);
      try {
        await s.waitFor(/Listening on .*usbip\.sock as 3/, "err");
        // OP_REQ_DEVLIST; the reply begins with version 0x0111 and OP_REP_DEVLIST (0x0005).
        const socket = await connectedTo(usbip);
        socket.write(encodeDevlistRequest());
        const reply = await new Promise<Buffer>((resolve) => socket.once("data", resolve));
        expect([...reply.subarray(0, 4)]).toEqual([0x01, 0x11, 0x00, 0x05]);
        socket.destroy();
        await s.waitFor(/device list/, "err");
        expect(s.out()).toContain(`over USB/IP on the Unix-domain socket ${usbip}`);
      } finally {
        s.child.kill("SIGTERM");
      }
      expect(await s.exited).toBe(0);
      expect(exposure(s.err())).toEqual([]);
    },
    60_000,
  );
});
