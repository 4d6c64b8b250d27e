/**
 * The USB/IP client never waits forever and says what happened in plain words: a server that accepts and
 * never answers fails `list --remote` and an import within their timeout; a server that goes silent after
 * the import is noticed by the keepalive; and the real `usbvirt attach` process exits 1 with a plain
 * message when its server stops. Bounds come from the options under test; the test timeouts only catch a hang.
 */
import { spawn } from "node:child_process";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type CliIo, run } from "../../src/cli/run.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { listRemote, UsbipTimeoutError } from "../../src/usbip/client.js";
import { AttachError, attachRemote } from "../../src/usbip-attach/attach.js";
import { eventually } from "../support/eventually.js";
import { startServer, type TestServer } from "./helpers.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A TCP server that accepts connections and never sends a byte. */
async function silentServer(): Promise<number> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on("error", () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => closeServer(server, sockets));
  return (server.address() as { port: number }).port;
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((r) => server.close(() => r()));
}

/** A TCP relay to `target` that can go mute: after mute() it swallows every byte both ways and closes nothing. */
async function muteableRelay(target: number): Promise<{ port: number; mute(): void }> {
  let muted = false;
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = tcpConnect({ host: "127.0.0.1", port: target });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on("error", () => undefined);
    }
    inbound.on("data", (d) => {
      if (!muted) outbound.write(d);
    });
    outbound.on("data", (d) => {
      if (!muted) inbound.write(d);
    });
    inbound.on("close", () => outbound.destroy());
    outbound.on("close", () => {
      if (!muted) inbound.destroy();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => closeServer(server, sockets));
  return {
    port: (server.address() as { port: number }).port,
    mute: () => {
      muted = true;
    },
  };
}

function capture(): { io: CliIo; readonly out: string; readonly err: string } {
  let out = "";
  let err = "";
  return {
    io: {
      out: (t) => {
        out += t;
      },
      err: (t) => {
        err += t;
      },
      logger: new CollectingLogger(),
    },
    get out() {
      return out;
    },
    get err() {
      return err;
    },
  };
}

describe("a server that accepts and never answers", () => {
  it("list --remote fails within --timeout with a clear message (exit 1)", async () => {
    const port = await silentServer();
    const c = capture();
    expect(await run(["list", "--remote", `127.0.0.1:${port}`, "--timeout", "0.3"], c.io)).toBe(1);
    expect(c.err).toBe(
      `usbvirt list: the USB/IP server 127.0.0.1:${port} accepted the connection but did not answer the device list request within 300 ms\n`,
    );
  }, 10_000);

  it("listRemote rejects with a UsbipTimeoutError (its own code)", async () => {
    const port = await silentServer();
    const err = await listRemote({ host: "127.0.0.1", port, timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsbipTimeoutError);
    expect(err).toMatchObject({ code: "ERR_USBVIRT_USBIP_TIMEOUT" });
  }, 10_000);

  it("an import (attach) fails within its timeout, in plain words: no port numbers, no worker handshake", async () => {
    const port = await silentServer();
    const err = await attachRemote({ host: "127.0.0.1", port, busid: "1-1", timeoutMs: 300 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AttachError);
    expect((err as Error).message).toBe(
      `could not attach 1-1 from 127.0.0.1:${port}: the USB/IP server 127.0.0.1:${port} accepted the connection but did not answer the import request within 300 ms`,
    );
  }, 15_000);

  it("attach --timeout rejects a value that is not a number of seconds (exit 2)", async () => {
    for (const bad of ["0", "-1", "soon", "1e3", ""]) {
      const c = capture();
      expect(await run(["attach", "127.0.0.1:1", "1-1", "--timeout", bad], c.io), bad).toBe(2);
      expect(c.err).toContain("--timeout must be a number of seconds above 0");
    }
  });
});

describe("a server that goes away after the import", () => {
  let t: TestServer | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it("a silent server is noticed by the keepalive: lost says so and the port goes empty", async () => {
    t = await startServer();
    const relay = await muteableRelay(t.port);
    const att = await attachRemote({
      host: "127.0.0.1",
      port: relay.port,
      busid: "1-1",
      timeoutMs: 300,
      keepaliveMs: 200,
      reconnect: false,
    });
    cleanups.push(() => att.close());
    relay.mute();
    const reason = await att.lost;
    expect(reason).toMatch(
      new RegExp(
        `^the USB/IP server 127\\.0\\.0\\.1:${relay.port} stopped answering \\(nothing heard for \\d+ ms\\)$`,
      ),
    );
    // The disconnect reaches the frontend on the conn ring, `lost` on the control plane: either may come first.
    await eventually(() => !att.conn.frontend!.portStatus(att.port).connected, 5000, "the port to go empty");
  }, 15_000);

  it("usbvirt attach --no-reconnect (the process) exits 1 with a plain message when its server stops", async () => {
    t = await startServer();
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", "attach", "--no-reconnect", `127.0.0.1:${t.port}`, "1-1"],
      { cwd: join(import.meta.dirname, "../.."), stdio: ["ignore", "pipe", "pipe"] },
    );
    cleanups.push(() => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    let out = "";
    let err = "";
    const attached = new Promise<void>((resolve) => {
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("stays attached")) resolve();
      });
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    await Promise.race([
      attached,
      exited.then((code) => {
        throw new Error(`attach exited ${code} before attaching: ${out} ${err}`);
      }),
    ]);
    await t.close();
    t = undefined;
    expect(await exited).toBe(1);
    expect(err).toContain("usbvirt attach: lost 1-1 from 127.0.0.1:");
    expect(err).toMatch(
      /: the USB\/IP server 127\.0\.0\.1:\d+ closed the connection; it is no longer attached\n$/,
    );
    expect(err).not.toMatch(/port 1:|READY/);
  }, 30_000);

  it("usbvirt attach (the process) keeps the device attached across a server restart on the same port", async () => {
    t = await startServer();
    const port = t.port;
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", "attach", "--keepalive", "1", `127.0.0.1:${port}`, "1-1"],
      { cwd: join(import.meta.dirname, "../.."), stdio: ["ignore", "pipe", "pipe"] },
    );
    cleanups.push(() => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    let out = "";
    let err = "";
    const waiters: { text: () => string; want: string; resolve: () => void }[] = [];
    const check = () => {
      for (const w of waiters.splice(0)) {
        if (w.text().includes(w.want)) w.resolve();
        else waiters.push(w);
      }
    };
    const seen = (text: () => string, want: string) =>
      new Promise<void>((resolve) => {
        waiters.push({ text, want, resolve });
        check();
      });
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      check();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
      check();
    });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    const early = exited.then((code) => {
      throw new Error(`attach exited ${code}: ${out} ${err}`);
    });
    await Promise.race([seen(() => out, "stays attached"), early]);
    await t.close();
    t = undefined;
    await Promise.race([seen(() => err, "reconnecting"), early]);
    t = await startServer({ port });
    await Promise.race([seen(() => err, "is attached again"), early]);
    expect(err).toMatch(/usbvirt attach: USB\/IP device 1-1 on 127\.0\.0\.1:\d+ lost \(.*\); reconnecting\n/);
    expect(err).not.toContain("no longer attached");
    child.kill("SIGINT");
    expect(await exited).toBe(0);
  }, 30_000);
});
