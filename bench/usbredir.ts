/**
 * usbredir over TCP on 127.0.0.1 (src/usbredir): a UsbredirServer in this process redirects the
 * emulated loopback, listening as `usbvirt redirect --listen` does (its default options, the backend on
 * its own thread); the usb-guest is another process (bench/usbredir-client.ts, forked, driven over IPC
 * as bench/usbip.ts drives its client), so this process runs the server alone. The workloads are the
 * USB/IP bench's, so the two faces compare in the same run (main.ts: ratio.usbredir.*.vs_usbip, and
 * the bulk against the plain TCP echo of the usbip suite):
 * - null control packets (loopback RESET_STATS), 64 and 1 in flight;
 * - 64 KiB bulk loopback, 8 OUT + 8 IN in flight: MB/s of payload (each byte crosses the socket twice).
 */
import { fileURLToPath } from "node:url";
import { silentLogger } from "../src/network-face/log.js";
import { UsbredirServer } from "../src/usbredir/server.js";
import type { Result, SuiteOptions } from "./harness.js";
import { ClientProcess, runStreams, type StreamTask } from "./stream-bench.js";
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
];

/** The null (1 in flight) and bulk streams over mutual TLS (names `usbredir.tls.*`), beside the plain ones. */
const TLS_TASKS: readonly StreamTask<Workload>[] = TASKS.filter(
  (t) => t.result === "usbredir.null.inflight1.urbs_per_s" || t.result === "usbredir.bulk64k.mbps",
).map((t) => ({
  ...t,
  name: `${t.name}, mutual TLS`,
  result: t.result.replace(/^usbredir\./, "usbredir.tls."),
}));

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
      TLS_TASKS,
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
    let plain: Result[];
    try {
      client = await ClientProcess.start<ClientRequest, ClientReply>(
        fileURLToPath(new URL("./usbredir-client.js", import.meta.url)),
        "usbredir bench client",
      );
      await client.request({ cmd: "connect", port: server.address!.port }, "connected");
      plain = await runStreams(
        opts,
        "usbredir over TCP on 127.0.0.1 (usb-host in this process, usb-guest in another)",
        TASKS,
        client,
      );
    } finally {
      await client?.close();
      await server.close();
    }
    return [...plain, ...(await runTlsTasks(opts))];
  },
};
