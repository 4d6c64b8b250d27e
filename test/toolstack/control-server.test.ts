/**
 * The control socket against hostile local clients: every malformed request gets an error reply naming
 * what is wrong and the connection goes on; an oversized line is refused after its first maxLineBytes
 * (the rest is never buffered) and the connection closed; a flood of requests on one connection is held
 * to maxInFlight (the rest answered `busy`), a flood of connections to maxConnections; the socket is
 * 0660 and a user outside its group cannot connect (a child with another uid and gid), one in its group can.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CollectingLogger } from "../../src/network-face/log.js";
import { ControlServer } from "../../src/toolstack/control-server.js";
import { CONTROL_LIMITS, type ControlReply, type ControlRequest } from "../../src/toolstack/protocol.js";
import { eventually } from "../support/eventually.js";
import { found, missing, skipWithout } from "../support/tools.js";

let dir: string;
let server: ControlServer | null = null;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "usbvirt-control-"));
});
afterEach(async () => {
  await server?.close();
  server = null;
  rmSync(dir, { recursive: true, force: true });
});

/** A client that collects reply lines. */
class LineClient {
  readonly replies: ControlReply[] = [];
  closed = false;
  private rest = "";
  private constructor(readonly socket: Socket) {
    socket.on("data", (c: Buffer) => {
      const text = this.rest + c.toString("utf8");
      const lines = text.split("\n");
      this.rest = lines.pop()!;
      for (const l of lines) this.replies.push(JSON.parse(l) as ControlReply);
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      this.closed = true;
    });
  }
  static async open(path: string): Promise<LineClient> {
    const socket = connect({ path });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new LineClient(socket);
  }
  send(text: string): void {
    this.socket.write(text);
  }
}

async function start(handler: (r: ControlRequest) => Promise<unknown>): Promise<string> {
  const path = join(dir, "sub", "control.sock");
  server = await ControlServer.start({ path, handler, log: new CollectingLogger() });
  return path;
}

describe("control socket: requests checked at one gate", () => {
  it("answers each malformed request with an error naming the problem, and goes on serving the connection", async () => {
    const path = await start(async (r) => ({ verb: r.verb }));
    const c = await LineClient.open(path);
    const bad = [
      "not json",
      "[1,2]",
      '{"v":2,"id":1,"verb":"list"}',
      '{"v":1,"id":2,"verb":"format-disk"}',
      '{"v":1,"id":3,"verb":"bind"}',
      '{"v":1,"id":4,"verb":"bind","device":""}',
      '{"v":1,"id":5,"verb":"detach","busid":"../etc"}',
      '{"v":1,"id":6,"verb":"assign","device":"keyboard","to":"http://x"}',
      '{"v":1,"id":7,"verb":"list","extra":true}',
    ];
    c.send(`${bad.join("\n")}\n{"v":1,"id":8,"verb":"list"}\n`);
    await eventually(() => c.replies.length === bad.length + 1, 5000, "every reply");
    const byId = (id: number) => c.replies.find((r) => r.id === id)!;
    const errors = c.replies
      .filter((r) => !r.ok)
      .map((r) => (r.ok ? "" : `${r.error.code}: ${r.error.message}`));
    expect(errors).toHaveLength(bad.length);
    expect(errors[0]).toMatch(/^bad-request: not JSON/);
    expect(errors[1]).toBe("bad-request: a request must be a JSON object");
    expect(byId(1)).toMatchObject({ ok: false, error: { code: "bad-version" } });
    expect(byId(2)).toMatchObject({ ok: false, error: { code: "bad-request" } });
    expect(JSON.stringify(byId(2))).toContain("format-disk");
    expect(JSON.stringify(byId(3))).toMatch(/device/);
    expect(JSON.stringify(byId(4))).toContain("must not be empty");
    expect(JSON.stringify(byId(5))).toContain('must be a bus id like \\"1-2\\"');
    expect(JSON.stringify(byId(6))).toContain("qemu:HOST:PORT or unix:PATH");
    expect(byId(7)).toMatchObject({ ok: false, error: { code: "bad-request" } });
    expect(byId(8)).toEqual({ v: 1, id: 8, ok: true, result: { verb: "list" } });
    expect(c.closed).toBe(false);
    c.socket.destroy();
  });

  it("refuses an oversized line after maxLineBytes and closes the connection: the rest is never buffered", async () => {
    let handled = 0;
    const path = await start(async () => {
      handled++;
      return {};
    });
    const c = await LineClient.open(path);
    // 8 MiB with no newline: the server must answer long before it has read it all.
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    const pump = (): void => {
      while (!c.closed && sent < 8 * 1024 * 1024) {
        sent += chunk.length;
        if (!c.socket.write(chunk)) {
          c.socket.once("drain", pump);
          return;
        }
      }
    };
    pump();
    await eventually(() => c.closed, 10_000, "the connection closed");
    expect(c.replies).toEqual([
      {
        v: 1,
        id: null,
        ok: false,
        error: {
          code: "too-long",
          message: `a request line is at most ${CONTROL_LIMITS.maxLineBytes} bytes`,
        },
      },
    ]);
    expect(handled).toBe(0);
    expect(server!.refusals).toBe(1);
  });

  it("holds a flood of requests on one connection to maxInFlight: the rest are answered busy, none is lost", async () => {
    let active = 0;
    let most = 0;
    const waiting: (() => void)[] = [];
    const path = await start(async () => {
      active++;
      most = Math.max(most, active);
      await new Promise<void>((r) => waiting.push(r));
      active--;
      return { done: true };
    });
    const c = await LineClient.open(path);
    const n = 2000;
    const lines: string[] = [];
    for (let i = 0; i < n; i++) lines.push(JSON.stringify({ v: 1, id: i, verb: "list" }));
    c.send(`${lines.join("\n")}\n`);
    await eventually(() => c.replies.length === n - CONTROL_LIMITS.maxInFlight, 10_000, "the busy replies");
    expect(most).toBe(CONTROL_LIMITS.maxInFlight);
    expect(c.replies.every((r) => !r.ok && r.error.code === "busy")).toBe(true);
    for (const w of waiting.splice(0)) w();
    await eventually(() => c.replies.length === n, 5000, "the held requests answered");
    expect(c.replies.filter((r) => r.ok)).toHaveLength(CONTROL_LIMITS.maxInFlight);
    expect(new Set(c.replies.map((r) => r.id)).size).toBe(n);
    c.socket.destroy();
  });

  it("holds a flood of connections to maxConnections: the next ones get one busy reply and are closed", async () => {
    const path = await start(async () => ({}));
    const held: LineClient[] = [];
    for (let i = 0; i < CONTROL_LIMITS.maxConnections; i++) held.push(await LineClient.open(path));
    await eventually(() => server!.open === CONTROL_LIMITS.maxConnections, 5000, "all connections accepted");
    const extra: LineClient[] = [];
    for (let i = 0; i < 20; i++) extra.push(await LineClient.open(path));
    await eventually(() => extra.every((c) => c.closed), 10_000, "the extra connections closed");
    expect(
      extra.every((c) => c.replies.length === 1 && !c.replies[0]!.ok && c.replies[0]!.error.code === "busy"),
    ).toBe(true);
    expect(server!.open).toBe(CONTROL_LIMITS.maxConnections);
    // The held ones still work.
    held[0]!.send('{"v":1,"id":1,"verb":"list"}\n');
    await eventually(() => held[0]!.replies.length === 1, 5000, "a held connection's reply");
    expect(held[0]!.replies[0]!.ok).toBe(true);
    for (const c of held) c.socket.destroy();
  });

  it("refuses to start beside a live control socket", async () => {
    const path = await start(async () => ({}));
    await expect(
      ControlServer.start({ path, handler: async () => ({}), log: new CollectingLogger() }),
    ).rejects.toThrow(/another process is listening/);
  });
});

/** Connect from a child process running as uid/gid: "connected" or the error code. */
function connectAs(path: string, uid: number, gid: number): Promise<string> {
  const code = `const s=require("node:net").connect(${JSON.stringify(path)});s.on("connect",()=>{process.stdout.write("connected");s.destroy()});s.on("error",e=>process.stdout.write(e.code))`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["-e", code], { uid, gid, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on("data", (c: Buffer) => {
      err += c.toString();
    });
    child.on("error", reject);
    child.on("close", () => (out !== "" ? resolve(out) : reject(new Error(`child said nothing: ${err}`))));
  });
}

const root =
  typeof process.getuid === "function" && process.getuid() === 0
    ? found(true)
    : missing("switching a child to another uid and gid needs root (CI runs as root)");
const NOBODY = 65534;

describe.skipIf(skipWithout("the control socket's permission test", root))(
  "control socket: file permissions are the authentication",
  () => {
    it("is mode 0660 in the process's group; a user outside the group cannot connect, one in it can", async () => {
      const path = await start(async () => ({}));
      const st = statSync(path);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(process.getgid!());
      // The folder lets everyone through, so only the socket's own mode decides.
      const { chmodSync } = await import("node:fs");
      chmodSync(dir, 0o755);
      chmodSync(join(dir, "sub"), 0o755);
      expect(await connectAs(path, NOBODY, NOBODY)).toBe("EACCES");
      expect(await connectAs(path, NOBODY, process.getgid!())).toBe("connected");
    });
  },
);
