/**
 * Unix-domain sockets for local VMs and tools: `redirect --listen unix:PATH` (a usb-guest on the socket
 * moves data; the socket file has mode 0660 and the process's group; a stale file left by a process that
 * is gone is replaced, a live one refused), `serve --metrics unix:PATH` read by `status --metrics
 * unix:PATH`, and an address allowlist refused with a unix: listener (the file's permissions decide).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { UNIX_SOCKET_MODE } from "../../src/network-face/listener.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { UsbredirServer } from "../../src/usbredir/server.js";
import { capture, connectedTo, serveInProcess } from "../cli/helpers.js";
import { command, need, skipWithout } from "../support/tools.js";
import { echoRound, LOOPBACK } from "../usbredir/helpers.js";

// Binds a socket file without listening (what a process that died leaves): Node cannot.
const python = command(["python3"], "apt-get install python3");

const dir = mkdtempSync(join(tmpdir(), "usbvirt-unix-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A usb-guest on the Unix-domain socket at `path`. */
async function guestAt(path: string): Promise<UsbredirClient> {
  return UsbredirClient.over(await connectedTo(path), { timeoutMs: 5000 });
}

describe("Unix-domain sockets", () => {
  it("redirect listens on unix:PATH with mode 0660 and the process's group; a guest there moves data", async () => {
    const path = join(dir, "redir.sock");
    const log = new CollectingLogger();
    const server = await UsbredirServer.start({ device: LOOPBACK, listen: { path }, logger: log });
    try {
      expect(server.socketPath).toBe(path);
      const st = statSync(path);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(UNIX_SOCKET_MODE);
      expect(st.gid).toBe(process.getgid!());
      const g = await guestAt(path);
      for (let i = 0; i < 3; i++) await echoRound(g)(i);
      expect(log.matching("local#").length).toBeGreaterThan(0);
      g.socket.destroy();
    } finally {
      await server.close();
    }
  });

  it.skipIf(skipWithout("the stale socket file test", python))(
    "a stale socket file is replaced; a live one or a non-socket file is refused",
    async () => {
      const path = join(dir, "stale.sock");
      const old = createServer();
      await new Promise<void>((r) => old.listen(path, r));
      const log = new CollectingLogger();
      await expect(UsbredirServer.start({ device: LOOPBACK, listen: { path }, logger: log })).rejects.toThrow(
        /another process listens on it/,
      );
      await new Promise<void>((r) => old.close(() => r()));
      // What a process that died leaves: a socket file nothing listens on (bound, never listened).
      execFileSync(need(python), [
        "-c",
        "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
        path,
      ]);
      expect(statSync(path).isSocket()).toBe(true);
      const server = await UsbredirServer.start({ device: LOOPBACK, listen: { path }, logger: log });
      try {
        expect(statSync(path).mode & 0o777).toBe(UNIX_SOCKET_MODE);
      } finally {
        await server.close();
      }
      const file = join(dir, "plain-file");
      writeFileSync(file, "x");
      await expect(
        UsbredirServer.start({ device: LOOPBACK, listen: { path: file }, logger: log }),
      ).rejects.toThrow(/exists and is not a socket/);
    },
  );

  it("refuses an address allowlist with a unix: listener", async () => {
    await expect(
      UsbredirServer.start({ device: LOOPBACK, listen: { path: join(dir, "x.sock") }, allow: ["10.0.0.1"] }),
    ).rejects.toThrow(/a Unix-domain socket has none/);
    const c = capture();
    expect(
      await run(
        [
          "redirect",
          "--device",
          "loopback",
          "--listen",
          `unix:${join(dir, "y.sock")}`,
          "--allow-client",
          "10.0.0.1",
        ],
        c.io,
      ),
    ).toBe(2);
    expect(c.err).toContain("--allow-client lists addresses");
  });

  it("serve --metrics unix:PATH (mode 0660), read by status --metrics unix:PATH", async () => {
    const path = join(dir, "metrics.sock");
    const s = await serveInProcess(["--device", "loopback", "--metrics", `unix:${path}`]);
    try {
      expect(s.c.out).toContain(`metrics: unix:${path}`);
      expect(statSync(path).mode & 0o777).toBe(UNIX_SOCKET_MODE);
      const table = capture();
      expect(await run(["status", "--metrics", `unix:${path}`], table.io)).toBe(0);
      expect(table.out).toContain("1-1");
      const json = capture();
      expect(await run(["status", "--metrics", `unix:${path}`, "--json"], json.io)).toBe(0);
      expect(JSON.parse(json.out).up).toBe(true);
    } finally {
      expect(await s.stop()).toBe(0);
    }
    const gone = capture();
    expect(await run(["status", "--metrics", `unix:${path}`], gone.io)).toBe(1);
    expect(gone.err).toContain(`unix:${path}`);
  });
});
