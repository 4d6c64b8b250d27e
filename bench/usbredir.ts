/**
 * usbredir over TCP on 127.0.0.1 (src/usbredir): a UsbredirServer in this process redirects the
 * emulated loopback, listening as `usbvirt redirect --listen` does (its default options, the backend on
 * its own thread); each usb-guest is another process, so this process runs the server alone. The
 * workloads are the USB/IP bench's, so the two faces compare in the same run (main.ts:
 * ratio.usbredir.*.vs_usbip, and the bulk against the plain TCP echo of the usbip suite):
 * - usbvirt's Node client (bench/usbredir-client.ts, forked, driven over IPC as bench/usbip.ts drives
 *   its client): null control packets (loopback RESET_STATS), 64 and 1 in flight; 64 KiB bulk loopback,
 *   8 OUT + 8 IN in flight and 1 + 1: MB/s of payload (each byte crosses the socket twice);
 * - then, once it has gone (one peer holds the device at a time), the Python client of the usbip suite
 *   (bench/python/stream-client.py) on the same workloads (`usbredir.pyclient.*`);
 * - last, the Node client against a usb-host with mutual TLS: null (1 in flight) and bulk
 *   (`usbredir.tls.*`); those and their plain counterparts record CPU per item too.
 */
import { fileURLToPath } from "node:url";
import { silentLogger } from "../src/network-face/log.js";
import { UsbredirServer } from "../src/usbredir/server.js";
import type { Result, SuiteOptions } from "./harness.js";
import { type PyClient, type PyWorkload, requirePython, startPythonClient } from "./python-peer.js";
import { ClientProcess, runStreams, type StreamTask, withCpu } from "./stream-bench.js";
import { clientTlsOf, makeBenchPki } from "./tls-certs.js";
import type { ClientReply, ClientRequest, Workload } from "./usbredir-client.js";

const KIB64 = 64 * 1024;

const TASKS: readonly StreamTask<Workload>[] = [
  {
    name: "usbredir null URB, 64 in flight",
    workload: { kind: "null", depth: 64 },
    items: 2048,
    units: 1,
    result: "usbredir.null.inflight64.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "usbredir null URB, 1 in flight",
    workload: { kind: "null", depth: 1 },
    items: 256,
    units: 1,
    result: "usbredir.null.inflight1.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "usbredir bulk 64 KiB, 8 OUT + 8 IN",
    workload: { kind: "bulk64k" },
    items: 64,
    units: KIB64,
    result: "usbredir.bulk64k.mbps",
    unit: "MB/s",
  },
  {
    name: "usbredir bulk 64 KiB, 1 OUT + 1 IN",
    workload: { kind: "bulk64k", pairs: 1 },
    items: 64,
    units: KIB64,
    result: "usbredir.bulk64k.pairs1.mbps",
    unit: "MB/s",
  },
];

/** The Python client on the same workloads (as the usbip suite runs it). */
const PY_TASKS: readonly StreamTask<PyWorkload>[] = [
  {
    name: "python client: null, 64 in flight",
    workload: { kind: "null", depth: 64 },
    items: 2048,
    units: 1,
    result: "usbredir.pyclient.null.inflight64.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "python client: null, 1 in flight",
    workload: { kind: "null", depth: 1 },
    items: 256,
    units: 1,
    result: "usbredir.pyclient.null.inflight1.urbs_per_s",
    unit: "URB/s",
  },
  {
    name: "python client: bulk 64 KiB, 8 pairs",
    workload: { kind: "bulk64k", pairs: 8 },
    items: 64,
    units: KIB64,
    result: "usbredir.pyclient.bulk64k.mbps",
    unit: "MB/s",
  },
  {
    name: "python client: bulk 64 KiB, 1 pair",
    workload: { kind: "bulk64k", pairs: 1 },
    items: 64,
    units: KIB64,
    result: "usbredir.pyclient.bulk64k.pairs1.mbps",
    unit: "MB/s",
  },
];

/** The streams run over mutual TLS too: null at 1 in flight and bulk (their CPU per item recorded in both). */
const TLS_COMPARED: ReadonlySet<string> = new Set([
  "usbredir.null.inflight1.urbs_per_s",
  "usbredir.bulk64k.mbps",
]);

/** The null (1 in flight) and bulk streams over mutual TLS (names `usbredir.tls.*`), beside the plain ones. */
const TLS_TASKS: readonly StreamTask<Workload>[] = TASKS.filter((t) => TLS_COMPARED.has(t.result)).map(
  (t) => ({
    ...t,
    name: `${t.name}, mutual TLS`,
    result: t.result.replace(/^usbredir\./, "usbredir.tls."),
  }),
);
const TLS_NAMES: ReadonlySet<string> = new Set(TLS_TASKS.map((t) => t.result));

/** A usb-host with mutual TLS (TLS 1.3, certificates made for the run) and a usb-guest with its certificate. */
async function runTlsTasks(opts: SuiteOptions): Promise<Result[]> {
  const pki = makeBenchPki();
  const server = await UsbredirServer.start({
    device: { kind: "emulated", name: "loopback" },
    listen: { port: 0 },
    logger: silentLogger,
    tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca },
  });
  let client: ClientProcess<ClientRequest, ClientReply> | null = null;
  try {
    client = await ClientProcess.start<ClientRequest, ClientReply>(
      fileURLToPath(new URL("./usbredir-client.js", import.meta.url)),
      "usbredir bench client (TLS)",
    );
    await client.request({ cmd: "connect", port: server.address!.port, tls: clientTlsOf(pki) }, "connected");
    return await runStreams(
      opts,
      "usbredir over mutual TLS 1.3 on 127.0.0.1 (same guest, TLS socket)",
      withCpu(TLS_TASKS, TLS_NAMES, client),
      client,
    );
  } finally {
    await client?.close();
    await server.close();
  }
}

export const usbredirSuite = {
  name: "usbredir",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const server = await UsbredirServer.start({
      device: { kind: "emulated", name: "loopback" },
      listen: { port: 0 },
      logger: silentLogger,
    });
    let client: ClientProcess<ClientRequest, ClientReply> | null = null;
    let py: PyClient | null = null;
    let plain: Result[];
    try {
      requirePython();
      client = await ClientProcess.start<ClientRequest, ClientReply>(
        fileURLToPath(new URL("./usbredir-client.js", import.meta.url)),
        "usbredir bench client",
      );
      await client.request({ cmd: "connect", port: server.address!.port }, "connected");
      const node = await runStreams(
        opts,
        "usbredir over TCP on 127.0.0.1 (usb-host in this process, usb-guest in another)",
        withCpu(TASKS, TLS_COMPARED, client),
        client,
      );
      // One peer holds the device at a time: the next gets it once this one has gone.
      await client.close();
      client = null;
      py = await startPythonClient("python usbredir client");
      await py.request({ cmd: "connect", protocol: "usbredir", port: server.address!.port }, "connected");
      const pyClient = py;
      const pyResults = await runStreams(
        opts,
        "usbredir, the Python client",
        PY_TASKS.map((t) => ({ ...t, cpu: { server: process.pid, client: pyClient.pid } })),
        py,
      );
      plain = [...node, ...pyResults];
    } finally {
      await client?.close();
      await py?.close();
      await server.close();
    }
    return [...plain, ...(await runTlsTasks(opts))];
  },
};
