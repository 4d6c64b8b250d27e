/**
 * The network benches' Python pieces (bench/python/, driven by bench/python-peer.ts): the Python client
 * moves a few URBs through usbvirt's USB/IP and usbredir servers and through the naive Python USB/IP
 * server, each stream drained with its byte counts and the IN data checked against the OUT data it
 * echoes; usbvirt's Node bench client (with a pair count) drives the Python server too; and a client
 * that cannot import its device ends with a clear error, not a hang. Skipped (with the reason) where
 * python3 is not installed, unless USBVIRT_REQUIRE_TOOLS=1 (CI installs it: .ci/run).
 */
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  PY_PEER_BUSID,
  PYTHON,
  type PyClient,
  PythonUsbipPeer,
  type PyWorkload,
  startPythonClient,
} from "../../bench/python-peer.js";
import { ClientProcess, processCpuNs } from "../../bench/stream-bench.js";
import type { ClientReply, ClientRequest } from "../../bench/usbip-client.js";
import { silentLogger } from "../../src/network-face/log.js";
import { UsbipServer } from "../../src/usbip-server/server.js";
import { UsbredirServer } from "../../src/usbredir/server.js";
import { command, need, skipWithout } from "../support/tools.js";

const KIB64 = 64 * 1024;
const python = command([PYTHON], "apt-get install python3");

/** One stream of `items` items on `client`, drained: what `stopped` said. */
async function stream(client: PyClient, workload: PyWorkload & { verify?: boolean }, items: number) {
  await client.request({ cmd: "start", workload } as never, "started");
  const waited = await client.request({ cmd: "wait", items }, "waited");
  expect(waited.items).toBe(items);
  expect(waited.ms).toBeGreaterThan(0);
  return await client.request({ cmd: "stop" }, "stopped");
}

/** Null streams and verified bulk streams at 1 and 4 pairs: every item counted, every byte back. */
async function exercise(client: PyClient): Promise<void> {
  for (const depth of [1, 8]) {
    const s = await stream(client, { kind: "null", depth }, 50);
    expect(s.items).toBeGreaterThanOrEqual(50);
    expect(s.inBytes).toBe(0);
    expect(s.outBytes).toBe(0);
  }
  for (const pairs of [1, 4]) {
    const s = await stream(client, { kind: "bulk64k", pairs, verify: true }, 40);
    // Drained: every pair sent was answered, its OUT data read back by its IN.
    expect(s.items).toBeGreaterThanOrEqual(40);
    expect(s.outBytes).toBe(s.items * KIB64);
    expect(s.inBytes).toBe(s.items * KIB64);
  }
}

describe.skipIf(skipWithout("the benches' Python client and server", python))(
  "the benches' Python client and server",
  () => {
    let usbip: UsbipServer;
    let peer: PythonUsbipPeer;
    const clients: { close(): Promise<void> }[] = [];

    beforeAll(async () => {
      need(python);
      usbip = await UsbipServer.start({
        devices: [{ kind: "emulated", name: "loopback" }],
        port: 0,
        logger: silentLogger,
        guestMemoryMiB: 16,
      });
      peer = await PythonUsbipPeer.start();
    });

    afterAll(async () => {
      for (const c of clients) await c.close();
      await peer?.close();
      await usbip?.close();
    });

    async function pyClient(label: string): Promise<PyClient> {
      const c = await startPythonClient(label);
      clients.push(c);
      return c;
    }

    it("moves null URBs and verified 64 KiB pairs through usbvirt's USB/IP server", async () => {
      const c = await pyClient("python client (usbip)");
      await c.request(
        { cmd: "connect", protocol: "usbip", port: usbip.address.port, busid: usbip.devices[0]!.busid },
        "connected",
      );
      await exercise(c);
      await c.close();
    });

    it("moves the same through the naive Python USB/IP server", async () => {
      const c = await pyClient("python client (python server)");
      await c.request(
        { cmd: "connect", protocol: "usbip", port: peer.port, busid: PY_PEER_BUSID },
        "connected",
      );
      await exercise(c);
    });

    it("moves the same through usbvirt's usbredir server", async () => {
      const server = await UsbredirServer.start({
        device: { kind: "emulated", name: "loopback" },
        listen: { port: 0 },
        logger: silentLogger,
      });
      try {
        const c = await pyClient("python client (usbredir)");
        await c.request({ cmd: "connect", protocol: "usbredir", port: server.address!.port }, "connected");
        await exercise(c);
        await c.close();
      } finally {
        await server.close();
      }
    });

    it("drives the Python server with usbvirt's Node bench client, one pair in flight", async () => {
      const node = await ClientProcess.start<ClientRequest, ClientReply>(
        fileURLToPath(new URL("../../bench/usbip-client.ts", import.meta.url)),
        "node bench client",
        ["--import", "tsx"],
      );
      clients.push(node);
      await node.request({ cmd: "connect", usbipPort: peer.port, busid: PY_PEER_BUSID }, "connected");
      await node.request({ cmd: "start", workload: { kind: "bulk64k", pairs: 1 } }, "started");
      expect((await node.request({ cmd: "wait", items: 20 }, "waited")).items).toBe(20);
      expect((await node.request({ cmd: "stop" }, "stopped")).items).toBeGreaterThanOrEqual(20);
    });

    it("reads a process's CPU time from the kernel's account, null for a process that is not there", () => {
      const before = processCpuNs(process.pid)!;
      let x = 0;
      for (let i = 0; i < 2e6; i++) x += i % 7;
      expect(x).toBeGreaterThan(0);
      expect(before).toBeGreaterThan(0);
      expect(processCpuNs(process.pid)!).toBeGreaterThan(before);
      expect(processCpuNs(-1)).toBeNull();
    });

    it("ends with a clear error when its device cannot be imported", async () => {
      const c = await pyClient("python client (no such device)");
      await expect(
        c.request({ cmd: "connect", protocol: "usbip", port: peer.port, busid: "9-9" }, "connected"),
      ).rejects.toThrow(/python client \(no such device\) exited \(code 1/);
    });
  },
);
