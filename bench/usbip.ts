/**
 * USB/IP over TCP on 127.0.0.1 (src/usbip): a UsbipServer in this process exports the emulated
 * loopback; the client is another process (bench/usbip-client.ts, forked, driven over IPC), so this
 * process runs the server alone, as it would in production. Each workload is a stream that keeps its
 * URBs in flight from the task's beforeAll to its afterAll (drained there); a measured iteration is
 * "N more items completed", timed by the client:
 * - null control URBs (loopback RESET_STATS), 64 and 1 in flight;
 * - 64 KiB bulk loopback, 8 OUT + 8 IN in flight: MB/s of payload (each byte crosses the socket twice);
 * - the same client against a naive Node TCP echo server here, 8 × 64 KiB outstanding: the socket's
 *   own ceiling, for the ratio usbip.bulk64k / tcp.echo64k.
 * The server runs its engine's backend on its own thread (its default); a second server with the
 * backend on a worker runs the URB streams after it (names `usbip.*.backendworker.*`), the measurement
 * behind that default.
 */
import net from "node:net";
import { fileURLToPath } from "node:url";
import type { ConnectionOptions } from "../src/engine/connection.js";
import { silentLogger } from "../src/network-face/log.js";
import { UsbipServer } from "../src/usbip-server/server.js";
import type { Result, SuiteOptions } from "./harness.js";
import { ClientProcess, runStreams, type StreamTask } from "./stream-bench.js";
import { clientTlsOf, makeBenchPki } from "./tls-certs.js";
import type { ClientReply, ClientRequest, Workload } from "./usbip-client.js";

const KIB64 = 64 * 1024;
type UsbipClient = ClientProcess<ClientRequest, ClientReply>;

const TASKS: readonly StreamTask<Workload>[] = [
  {
    name: "usbip null URB, 64 in flight",
    workload: { kind: "null", depth: 64 },
    items: 2048,
    units: 1,
    result: "usbip.null.inflight64.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "usbip null URB, 1 in flight",
    workload: { kind: "null", depth: 1 },
    items: 256,
    units: 1,
    result: "usbip.null.inflight1.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "usbip bulk 64 KiB, 8 OUT + 8 IN",
    workload: { kind: "bulk64k" },
    items: 64,
    units: KIB64,
    result: "usbip.bulk64k.mbps",
    unit: "MB/s",
  },
  {
    name: "tcp echo 64 KiB, 8 outstanding",
    workload: { kind: "tcp-echo64k" },
    items: 128,
    units: KIB64,
    result: "tcp.echo64k.mbps",
    unit: "MB/s",
  },
];

/** Start a server (engine options `connection`) and a client, run `tasks` as one Bench, close both. */
async function runTasks(
  opts: SuiteOptions,
  title: string,
  tasks: readonly StreamTask<Workload>[],
  connection: Omit<ConnectionOptions, "ports" | "memory">,
): Promise<Result[]> {
  const server = await UsbipServer.start({
    devices: [{ kind: "emulated", name: "loopback" }],
    port: 0,
    logger: silentLogger,
    guestMemoryMiB: 64,
    connection,
  });
  // That naive on purpose (no back-pressure handling): the socket's own limit. Errors only end it.
  const echo = net.createServer((s) => s.on("data", (d) => s.write(d)).on("error", () => s.destroy()));
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
  const echoPort = (echo.address() as net.AddressInfo).port;
  let client: UsbipClient | null = null;
  try {
    client = await ClientProcess.start<ClientRequest, ClientReply>(
      fileURLToPath(new URL("./usbip-client.js", import.meta.url)),
      "usbip bench client",
    );
    const c = client;
    await c.request(
      { cmd: "connect", usbipPort: server.address.port, echoPort, busid: server.devices[0]!.busid },
      "connected",
    );

    return await runStreams(opts, title, tasks, c);
  } finally {
    await client?.close();
    await new Promise((resolve) => echo.close(resolve));
    await server.close();
  }
}

/** The URB streams again, against a server whose backend runs on a worker. */
const WORKER_TASKS: readonly StreamTask<Workload>[] = TASKS.filter(
  (t) => t.workload.kind !== "tcp-echo64k",
).map((t) => ({
  ...t,
  name: `${t.name} (backend worker)`,
  result: t.result.replace(/\.(urbs_per_s|mbps)$/, ".backendworker.$1"),
}));

/** The null (1 in flight) and bulk streams over mutual TLS (names `usbip.tls.*`), beside the plain ones. */
const TLS_TASKS: readonly StreamTask<Workload>[] = TASKS.filter(
  (t) => t.result === "usbip.null.inflight1.urbs_per_s" || t.result === "usbip.bulk64k.mbps",
).map((t) => ({ ...t, name: `${t.name}, mutual TLS`, result: t.result.replace(/^usbip\./, "usbip.tls.") }));

/**
 * A server with mutual TLS (TLS 1.3, EC P-256 certificates made for the run, its default settings) and
 * a client that connects with its certificate: the TLS streams. The echo server stays plain (unused).
 */
async function runTlsTasks(opts: SuiteOptions): Promise<Result[]> {
  const pki = makeBenchPki();
  const server = await UsbipServer.start({
    devices: [{ kind: "emulated", name: "loopback" }],
    port: 0,
    logger: silentLogger,
    guestMemoryMiB: 64,
    tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca },
  });
  const echo = net.createServer((s) => s.on("error", () => s.destroy()));
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
  let client: UsbipClient | null = null;
  try {
    client = await ClientProcess.start<ClientRequest, ClientReply>(
      fileURLToPath(new URL("./usbip-client.js", import.meta.url)),
      "usbip bench client (TLS)",
    );
    await client.request(
      {
        cmd: "connect",
        usbipPort: server.address.port,
        echoPort: (echo.address() as net.AddressInfo).port,
        busid: server.devices[0]!.busid,
        tls: clientTlsOf(pki),
      },
      "connected",
    );
    return await runStreams(
      opts,
      "USB/IP over mutual TLS 1.3 on 127.0.0.1 (same client, TLS socket)",
      TLS_TASKS,
      client,
    );
  } finally {
    await client?.close();
    await new Promise((resolve) => echo.close(resolve));
    await server.close();
  }
}

export const usbipSuite = {
  name: "usbip",
  async run(opts: SuiteOptions): Promise<Result[]> {
    return [
      ...(await runTasks(
        opts,
        "USB/IP over TCP on 127.0.0.1 (server in this process, client in another)",
        TASKS,
        {},
      )),
      ...(await runTasks(
        opts,
        "USB/IP, the same server with its engine's backend on a worker",
        WORKER_TASKS,
        { backendThread: "worker" },
      )),
      ...(await runTlsTasks(opts)),
    ];
  },
};
