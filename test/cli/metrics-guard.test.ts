/**
 * The metrics and status endpoint (`serve --metrics`, `redirect --metrics`) against what a hostile web
 * page or client can send it: a DNS-rebinding page (Host: a name of its own that resolves to 127.0.0.1)
 * gets 421 and nothing of the metrics or the status; the names and addresses the endpoint listens on
 * (the bound address, localhost for loopback, with or without a port) are served. Oversized headers,
 * a request with a body, headers that never finish and more connections than it takes are each refused
 * or closed, and the endpoint keeps answering.
 */
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hostAllowed, METRICS_LIMITS } from "../../src/cli/http-guard.js";
import { eventually } from "../support/eventually.js";
import { serveInProcess } from "./helpers.js";

interface Answer {
  readonly status: number;
  readonly body: string;
}

/** GET `path` from 127.0.0.1:`port` (or `address`) with the Host header `host` (node:http: fetch cannot set Host). */
function get(port: number, path: string, host: string, address = "127.0.0.1"): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: address, port, path, headers: { host }, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** A raw connection to the endpoint: what it sends, and whether the endpoint closed it. */
async function raw(port: number): Promise<{ socket: Socket; received: () => string; closed: () => boolean }> {
  const socket = connect({ host: "127.0.0.1", port });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  let received = "";
  let closed = false;
  socket.on("data", (d: Buffer) => {
    received += d.toString("latin1");
  });
  socket.on("error", () => undefined);
  socket.once("close", () => {
    closed = true;
  });
  return { socket, received: () => received, closed: () => closed };
}

let s: Awaited<ReturnType<typeof serveInProcess>>;
let port: number;

beforeAll(async () => {
  s = await serveInProcess(["--device", "loopback", "--metrics", "127.0.0.1:0"]);
  port = Number(/metrics: http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(s.c.out)![1]);
});

afterAll(async () => {
  expect(await s?.stop()).toBe(0);
});

describe("metrics endpoint: the Host header", () => {
  it("a DNS-rebinding Host gets 421 and nothing else, on every path", async () => {
    for (const host of [
      "evil.example",
      `evil.example:${port}`,
      "127.0.0.1.evil.example",
      "localhost.evil.example",
    ]) {
      for (const path of ["/metrics", "/status.json", "/", "/status", "/nope"]) {
        const a = await get(port, path, host);
        expect(a.status, `${host} ${path}`).toBe(421);
        expect(a.body, `${host} ${path}`).not.toMatch(/usbvirt_|"devices"|<html|1-1|loopback/);
      }
    }
  });

  it("the names it listens on are served: the bound address and localhost, with or without the port", async () => {
    for (const host of [`127.0.0.1:${port}`, "127.0.0.1", `localhost:${port}`, "localhost", "LOCALHOST"]) {
      const m = await get(port, "/metrics", host);
      expect(m.status, host).toBe(200);
      expect(m.body).toContain("usbvirt_up");
      expect((await get(port, "/status.json", host)).status, host).toBe(200);
    }
  });

  it("an endpoint on ::1 answers to [::1] and localhost, not to 127.0.0.1's name or another", async () => {
    const v6 = await serveInProcess(["--device", "loopback", "--metrics", "[::1]:0"]);
    try {
      const p = Number(/metrics: http:\/\/\[::1\]:(\d+)\/metrics/.exec(v6.c.out)![1]);
      expect((await get(p, "/metrics", `[::1]:${p}`, "::1")).status).toBe(200);
      expect((await get(p, "/metrics", "[::1]", "::1")).status).toBe(200);
      expect((await get(p, "/metrics", `localhost:${p}`, "::1")).status).toBe(200);
      expect((await get(p, "/metrics", "evil.example", "::1")).status).toBe(421);
      expect((await get(p, "/metrics", "[::2]", "::1")).status).toBe(421);
    } finally {
      expect(await v6.stop()).toBe(0);
    }
  });

  it("which Host values pass, for each kind of bound address", () => {
    const loop4 = { address: "127.0.0.1", family: "IPv4" };
    expect(hostAllowed("127.0.0.1:9240", loop4)).toBe(true);
    expect(hostAllowed("localhost", loop4)).toBe(true);
    expect(hostAllowed("localhost.", loop4)).toBe(true);
    expect(hostAllowed("127.0.0.2", loop4)).toBe(false);
    expect(hostAllowed("evil.example", loop4)).toBe(false);
    expect(hostAllowed(undefined, loop4)).toBe(false);
    expect(hostAllowed("", loop4)).toBe(false);
    expect(hostAllowed("127.0.0.1:99999", loop4)).toBe(false);
    expect(hostAllowed("127.0.0.1:", loop4)).toBe(false);
    expect(hostAllowed("user@127.0.0.1", loop4)).toBe(false);
    // A non-loopback address: only itself.
    const lan = { address: "192.0.2.7", family: "IPv4" };
    expect(hostAllowed("192.0.2.7:9240", lan)).toBe(true);
    expect(hostAllowed("localhost", lan)).toBe(false);
    // Every address: the machine's interface addresses, its host name and localhost.
    const any = { address: "0.0.0.0", family: "IPv4" };
    const machine = {
      interfaces: {
        lo: [{ address: "127.0.0.1", family: "IPv4" }],
        eth0: [
          { address: "192.0.2.7", family: "IPv4" },
          { address: "fe80::1", family: "IPv6" },
        ],
      },
      hostname: "build-box",
    };
    expect(hostAllowed("192.0.2.7:9240", any, machine)).toBe(true);
    expect(hostAllowed("Build-Box:9240", any, machine)).toBe(true);
    expect(hostAllowed("localhost", any, machine)).toBe(true);
    expect(hostAllowed("[fe80::1]", any, machine)).toBe(false);
    expect(hostAllowed("evil.example", any, machine)).toBe(false);
    expect(hostAllowed("[fe80::1]", { address: "::", family: "IPv6" }, machine)).toBe(true);
  });
});

describe("metrics endpoint: request size, time and connections", () => {
  it("headers over the limit get 431, and the endpoint keeps answering", async () => {
    const c = await raw(port);
    c.socket.write(`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ${"a".repeat(12 * 1024)}\r\n\r\n`);
    await eventually(() => c.closed(), 5000, "the oversized request to be answered and closed");
    expect(c.received()).toMatch(/^HTTP\/1\.1 431 /);
    expect(METRICS_LIMITS.maxHeaderBytes).toBeLessThanOrEqual(8 * 1024);
    expect((await get(port, "/metrics", "127.0.0.1")).status).toBe(200);
  });

  it("a request with a body gets 413 and the connection closes", async () => {
    const c = await raw(port);
    c.socket.write("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n");
    c.socket.write(Buffer.alloc(64 * 1024));
    await eventually(() => c.closed(), 5000, "the request with a body to be refused and closed");
    expect(c.received()).toMatch(/^HTTP\/1\.1 413 /);
    expect(c.received()).not.toContain("usbvirt_up");
  });

  it("headers that never finish: the connection is closed after the header timeout", async () => {
    const c = await raw(port);
    c.socket.write("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    await eventually(
      () => c.closed(),
      METRICS_LIMITS.headersTimeoutMs + 5000,
      "the endpoint to close a request whose headers never end",
    );
    expect(c.received()).not.toContain("usbvirt_up");
  });

  it("connections over the limit are closed at once; the endpoint answers once they go", async () => {
    const held = await Promise.all(Array.from({ length: METRICS_LIMITS.maxConnections }, () => raw(port)));
    try {
      const extra = await Promise.all(Array.from({ length: 4 }, () => raw(port)));
      for (const e of extra) e.socket.write("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
      for (const e of extra)
        await eventually(() => e.closed(), 5000, "a connection over the limit to be closed");
      for (const e of extra) expect(e.received()).toBe("");
      for (const h of held) expect(h.closed()).toBe(false);
    } finally {
      for (const h of held) h.socket.destroy();
    }
    await eventually(
      async () => (await get(port, "/metrics", "127.0.0.1").catch(() => ({ status: 0 }))).status === 200,
      5000,
      "the endpoint to answer again",
    );
  });
});
