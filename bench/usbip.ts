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
import { type ChildProcess, fork } from "node:child_process";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { Bench } from "tinybench";
import type { ConnectionOptions } from "../src/engine/connection.js";
import { silentLogger } from "../src/usbip/log.js";
import { UsbipServer } from "../src/usbip/server.js";
import { benchTiming, latencyOf, printBench, type Result, type SuiteOptions } from "./harness.js";
import type { ClientReply, ClientRequest, Workload } from "./usbip-client.js";

const KIB64 = 64 * 1024;
const READY_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 60_000;

/** The forked client: one request at a time, each answered by the reply `ev` it names. */
class ClientProcess {
  private pending: {
    readonly ev: ClientReply["ev"];
    readonly resolve: (r: ClientReply) => void;
    readonly reject: (e: Error) => void;
    readonly timer: NodeJS.Timeout;
  } | null = null;
  private exited: Promise<void>;
  private dead: Error | null = null;

  private constructor(private readonly child: ChildProcess) {
    child.on("message", (m: unknown) => {
      const reply = m as ClientReply;
      const p = this.pending;
      if (p === null) return this.die(new Error(`usbip bench client sent ${JSON.stringify(m)} unasked`));
      this.pending = null;
      clearTimeout(p.timer);
      if (reply.ev === p.ev) p.resolve(reply);
      else p.reject(new Error(`usbip bench client answered ${JSON.stringify(m)}, want ${p.ev}`));
    });
    child.on("error", (err) => this.die(err));
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.die(
          new Error(`usbip bench client exited (code ${code}, signal ${signal}); see its stderr above`),
        );
        resolve();
      });
    });
  }

  static async start(): Promise<ClientProcess> {
    const path = fileURLToPath(new URL("./usbip-client.js", import.meta.url));
    const c = new ClientProcess(fork(path, [], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    await c.expect("ready", READY_TIMEOUT_MS);
    return c;
  }

  async request<E extends ClientReply["ev"]>(
    m: ClientRequest,
    ev: E,
  ): Promise<Extract<ClientReply, { ev: E }>> {
    const reply = this.expect(ev, REQUEST_TIMEOUT_MS);
    this.child.send(m);
    return (await reply) as Extract<ClientReply, { ev: E }>;
  }

  /** Disconnect (the client exits on that) and wait for it to be gone; kill it if it lingers. */
  async close(): Promise<void> {
    if (this.child.connected) this.child.disconnect();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  private expect(ev: ClientReply["ev"], timeoutMs: number): Promise<ClientReply> {
    if (this.dead !== null) return Promise.reject(this.dead);
    if (this.pending !== null) return Promise.reject(new Error(`usbip bench client: ${ev} while busy`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.die(new Error(`usbip bench client: no ${ev} in ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.pending = { ev, resolve, reject, timer };
    });
  }

  private die(err: Error): void {
    this.dead ??= err;
    const p = this.pending;
    this.pending = null;
    if (p !== null) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }
}

interface StreamTask {
  readonly name: string;
  readonly workload: Workload;
  /** Items per measured iteration (some ms of streaming). */
  readonly items: number;
  /** What one item counts for in the table: 1 URB, or its payload bytes. */
  readonly units: number;
  readonly result: string;
  readonly unit: "URB/s" | "MB/s";
}

const TASKS: readonly StreamTask[] = [
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
  tasks: readonly StreamTask[],
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
  let client: ClientProcess | null = null;
  try {
    client = await ClientProcess.start();
    const c = client;
    await c.request(
      { cmd: "connect", usbipPort: server.address.port, echoPort, busid: server.devices[0]!.busid },
      "connected",
    );

    const bench = new Bench(benchTiming(opts));
    const done = new Map<string, { waited: number; completed: number }>();
    for (const t of tasks) {
      const count = { waited: 0, completed: 0 };
      done.set(t.name, count);
      bench.add(
        t.name,
        async () => {
          const r = await c.request({ cmd: "wait", items: t.items }, "waited");
          count.waited += r.items;
          // The client's own clock, from the wait's arrival to its Nth item: IPC latency stays out.
          return { overriddenDuration: r.ms };
        },
        {
          async: true,
          // Once per phase (warmup, then run): each phase gets a fresh stream, drained at its end.
          beforeAll: async () => {
            await c.request({ cmd: "start", workload: t.workload }, "started");
          },
          afterAll: async () => {
            count.completed += (await c.request({ cmd: "stop" }, "stopped")).items;
          },
        },
      );
    }
    await bench.run();
    const units = Object.fromEntries(tasks.map((t) => [t.name, t.items * t.units]));
    printBench(title, bench, units);
    for (const [name, n] of done) {
      if (n.waited === 0 || n.completed < n.waited)
        throw new Error(`usbip bench: ${name} completed ${n.completed} items, waited for ${n.waited}`);
    }

    return tasks.map((t) => {
      const perSecond = latencyOf(bench, t.name).opsPerSec * t.items * t.units;
      return { name: t.result, value: t.unit === "MB/s" ? perSecond / 1e6 : perSecond, unit: t.unit };
    });
  } finally {
    await client?.close();
    await new Promise((resolve) => echo.close(resolve));
    await server.close();
  }
}

/** The URB streams again, against a server whose backend runs on a worker. */
const WORKER_TASKS: readonly StreamTask[] = TASKS.filter((t) => t.workload.kind !== "tcp-echo64k").map(
  (t) => ({
    ...t,
    name: `${t.name} (backend worker)`,
    result: t.result.replace(/\.(urbs_per_s|mbps)$/, ".backendworker.$1"),
  }),
);

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
    ];
  },
};
