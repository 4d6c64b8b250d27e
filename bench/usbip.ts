/**
 * USB/IP over TCP on 127.0.0.1 (src/usbip): a UsbipServer in this process exports the emulated
 * loopback; every client is another process, so this process runs the server alone, as it would in
 * production. Each workload is a stream that keeps its URBs in flight from the task's beforeAll to its
 * afterAll (drained there); a measured iteration is "N more items completed", timed by the client.
 * With usbvirt's own Node client (bench/usbip-client.ts, forked, driven over IPC):
 * - null control URBs (loopback RESET_STATS), 64 and 1 in flight;
 * - 64 KiB bulk loopback, 8 OUT + 8 IN in flight: MB/s of payload (each byte crosses the socket twice);
 * - the same client against a naive Node TCP echo server here, 8 × 64 KiB outstanding: the socket's
 *   own ceiling, for the ratio usbip.bulk64k / tcp.echo64k.
 * With a client written as a Python user would (bench/python/stream-client.py: one non-blocking socket,
 * a pair's requests and OUT data in one send(), recv(1 MiB)), against this server and against a naive
 * pure-Python USB/IP server (bench/python/usbip-server.py, the peer to beat), side by side in one table:
 * null URBs at 64 and 1 in flight, 64 KiB bulk pairs at 8 and 1 in flight (`usbip.pyclient.*`,
 * `usbip.pypeer.*`), each with the CPU time per item of its server and of its client
 * (`*.server_cpu_us`, `*.client_cpu_us`: at 1 in flight they take turns, and on a busy host the rates
 * follow CPU per item); then the Node client at 1 pair in flight against both servers
 * (`usbip.bulk64k.pairs1`, `usbip.pypeer.nodeclient.bulk64k.pairs1`), and at 8 against the Python one.
 * The server runs its engine's backend on its own thread (its default); a second server with the
 * backend on a worker runs the Node client's URB streams after it (names `usbip.*.backendworker.*`),
 * the measurement behind that default. Last, a server with mutual TLS runs the null (1 in flight) and
 * bulk streams again (`usbip.tls.*`); those and their plain counterparts record CPU per item too.
 */
import net from "node:net";
import { fileURLToPath } from "node:url";
import type { ConnectionOptions } from "../src/engine/connection.js";
import { silentLogger } from "../src/network-face/log.js";
import { UsbipServer } from "../src/usbip-server/server.js";
import type { Result, SuiteOptions } from "./harness.js";
import {
  PY_PEER_BUSID,
  type PyClient,
  PythonUsbipPeer,
  type PyWorkload,
  requirePython,
  startPythonClient,
} from "./python-peer.js";
import { ClientProcess, runStreams, type StreamTask, withCpu } from "./stream-bench.js";
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

/** The Python client's workloads, each run against usbvirt then against the Python server. */
const PY_WORKLOADS: readonly {
  readonly name: string;
  readonly workload: PyWorkload;
  readonly items: number;
  readonly units: number;
  /** The record name after `usbip.pyclient.` / `usbip.pypeer.`. */
  readonly result: string;
  readonly unit: "URB/s" | "MB/s";
}[] = [
  {
    name: "null URB, 64 in flight",
    workload: { kind: "null", depth: 64 },
    items: 2048,
    units: 1,
    result: "null.inflight64.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "null URB, 1 in flight",
    workload: { kind: "null", depth: 1 },
    items: 256,
    units: 1,
    result: "null.inflight1.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "bulk 64 KiB, 8 pairs",
    workload: { kind: "bulk64k", pairs: 8 },
    items: 64,
    units: KIB64,
    result: "bulk64k.mbps",
    unit: "MB/s",
  },
  {
    name: "bulk 64 KiB, 1 pair",
    workload: { kind: "bulk64k", pairs: 1 },
    items: 64,
    units: KIB64,
    result: "bulk64k.pairs1.mbps",
    unit: "MB/s",
  },
];

/**
 * Start a server (engine options `connection`) and the Node client, run `tasks` as one Bench; then,
 * the client gone and its device free again, `more`; close all.
 */
async function runTasks(
  opts: SuiteOptions,
  title: string,
  tasks: readonly StreamTask<Workload>[],
  connection: Omit<ConnectionOptions, "ports" | "memory">,
  more?: (server: UsbipServer) => Promise<Result[]>,
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
    client = await startNodeClient();
    await client.request(
      { cmd: "connect", usbipPort: server.address.port, echoPort, busid: server.devices[0]!.busid },
      "connected",
    );
    const results = await runStreams(opts, title, withCpu(tasks, TLS_COMPARED, client), client);
    if (more === undefined) return results;
    await client.close();
    client = null;
    await deviceFreed(server);
    return [...results, ...(await more(server))];
  } finally {
    await client?.close();
    await new Promise((resolve) => echo.close(resolve));
    await server.close();
  }
}

function startNodeClient(): Promise<UsbipClient> {
  return ClientProcess.start<ClientRequest, ClientReply>(
    fileURLToPath(new URL("./usbip-client.js", import.meta.url)),
    "usbip bench client",
  );
}

const FREED_TIMEOUT_MS = 10_000;

/** Wait until no client holds the server's device (one importer at a time; a closed one lets go soon). */
async function deviceFreed(server: UsbipServer): Promise<void> {
  const deadline = Date.now() + FREED_TIMEOUT_MS;
  while (server.stats().imported.length > 0) {
    if (Date.now() > deadline)
      throw new Error(`the device was not free ${FREED_TIMEOUT_MS} ms after its client left`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * The Python client against `server` and against the naive Python server, each workload on both in
 * turn (one table); then usbvirt's Node client at 1 pair in flight against both, and at 8 against the
 * Python server (the usbvirt figure at 8 is the first table's).
 */
async function againstPythonPeer(opts: SuiteOptions, server: UsbipServer): Promise<Result[]> {
  requirePython();
  const peer = await PythonUsbipPeer.start();
  const clients: PyClient[] = [];
  const nodeClients: UsbipClient[] = [];
  try {
    const busid = server.devices[0]!.busid;
    const ours = await startPythonClient("python client (usbvirt)");
    clients.push(ours);
    await ours.request({ cmd: "connect", protocol: "usbip", port: server.address.port, busid }, "connected");
    const theirs = await startPythonClient("python client (python server)");
    clients.push(theirs);
    await theirs.request(
      { cmd: "connect", protocol: "usbip", port: peer.port, busid: PY_PEER_BUSID },
      "connected",
    );
    // usbvirt's server is this process; each server's CPU per item is recorded beside its rate.
    const pyTasks: StreamTask<PyWorkload>[] = PY_WORKLOADS.flatMap((w) => [
      {
        ...w,
        name: `usbvirt: ${w.name}`,
        client: ours,
        result: `usbip.pyclient.${w.result}`,
        cpu: { server: process.pid, client: ours.pid },
      },
      {
        ...w,
        name: `python server: ${w.name}`,
        client: theirs,
        result: `usbip.pypeer.${w.result}`,
        cpu: { server: peer.pid, client: theirs.pid },
      },
    ]);
    const py = await runStreams(
      opts,
      "USB/IP, a Python client: usbvirt against a naive pure-Python server (same client, same run)",
      pyTasks,
    );
    await ours.close();
    clients.splice(clients.indexOf(ours), 1);
    await deviceFreed(server);

    const toOurs = await startNodeClient();
    nodeClients.push(toOurs);
    await toOurs.request({ cmd: "connect", usbipPort: server.address.port, busid }, "connected");
    const toPeer = await startNodeClient();
    nodeClients.push(toPeer);
    await toPeer.request({ cmd: "connect", usbipPort: peer.port, busid: PY_PEER_BUSID }, "connected");
    const bulk = (pairs: number, client: UsbipClient, on: string, result: string): StreamTask<Workload> => ({
      name: `${on}: bulk 64 KiB, ${pairs} pair${pairs > 1 ? "s" : ""}`,
      client,
      cpu: { server: client === toOurs ? process.pid : peer.pid, client: client.pid },
      workload: { kind: "bulk64k", pairs },
      items: 64,
      units: KIB64,
      result,
      unit: "MB/s",
    });
    const node = await runStreams(opts, "USB/IP, usbvirt's Node client: usbvirt against the Python server", [
      bulk(1, toOurs, "usbvirt", "usbip.bulk64k.pairs1.mbps"),
      bulk(1, toPeer, "python server", "usbip.pypeer.nodeclient.bulk64k.pairs1.mbps"),
      bulk(8, toPeer, "python server", "usbip.pypeer.nodeclient.bulk64k.mbps"),
    ]);
    return [...py, ...node];
  } finally {
    for (const c of nodeClients) await c.close();
    for (const c of clients) await c.close();
    await peer.close();
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

/** The streams run over mutual TLS too: null at 1 in flight and bulk (their CPU per item recorded in both). */
const TLS_COMPARED: ReadonlySet<string> = new Set(["usbip.null.inflight1.urbs_per_s", "usbip.bulk64k.mbps"]);

/** The null (1 in flight) and bulk streams over mutual TLS (names `usbip.tls.*`), beside the plain ones. */
const TLS_TASKS: readonly StreamTask<Workload>[] = TASKS.filter((t) => TLS_COMPARED.has(t.result)).map(
  (t) => ({
    ...t,
    name: `${t.name}, mutual TLS`,
    result: t.result.replace(/^usbip\./, "usbip.tls."),
  }),
);
const TLS_NAMES: ReadonlySet<string> = new Set(TLS_TASKS.map((t) => t.result));

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
      withCpu(TLS_TASKS, TLS_NAMES, client),
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
        (server) => againstPythonPeer(opts, server),
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
