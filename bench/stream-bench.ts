/**
 * What the network benches (usbip.ts, usbredir.ts) share: a client in a process of its own, driven one
 * request at a time — a Node script forked and driven over IPC, or any program (the Python client,
 * bench/python/) driven with the same messages as JSON lines on its stdin and stdout — and the
 * tinybench run of "streams" on such clients. A stream keeps its items (URBs, echoed buffers) in flight
 * from the task's beforeAll to its afterAll (drained there); a measured iteration is "N more items
 * completed", timed on the client's clock so IPC latency stays out. The clients speak the protocol
 * below (`StreamRequest` / `StreamReply`) plus a `connect` of their own.
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Bench } from "tinybench";
import { benchTiming, latencyOf, printBench, type Result, type SuiteOptions } from "./harness.js";

const READY_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 60_000;

/** Parent → client, for any workload type `W`: start a stream, wait for N more items, stop (drain). */
export type StreamRequest<W> =
  | { readonly cmd: "start"; readonly workload: W }
  | { readonly cmd: "wait"; readonly items: number }
  | { readonly cmd: "stop" };

/**
 * Client → parent. `ready` once loaded; `waited` when `items` more items completed, `ms` after the
 * wait arrived (timed there); `stopped` once the stream drained, with every item it completed.
 */
export type StreamReply =
  | { readonly ev: "ready" }
  | { readonly ev: "started" }
  | { readonly ev: "waited"; readonly items: number; readonly ms: number }
  | { readonly ev: "stopped"; readonly items: number };

/** A client process: one request at a time, each answered by the reply `ev` it names. */
export class ClientProcess<Req, Reply extends { readonly ev: string }> {
  private pending: {
    readonly ev: Reply["ev"];
    readonly resolve: (r: Reply) => void;
    readonly reject: (e: Error) => void;
    readonly timer: NodeJS.Timeout;
  } | null = null;
  private exited: Promise<void>;
  private dead: Error | null = null;

  private constructor(
    private readonly child: ChildProcess,
    private readonly label: string,
    /** Over IPC (a forked Node script) or as JSON lines on stdin / stdout. */
    private readonly lines: boolean,
  ) {
    const onMessage = (m: unknown) => {
      const reply = m as Reply;
      const p = this.pending;
      if (p === null) return this.die(new Error(`${label} sent ${JSON.stringify(m)} unasked`));
      this.pending = null;
      clearTimeout(p.timer);
      if (reply.ev === p.ev) p.resolve(reply);
      else p.reject(new Error(`${label} answered ${JSON.stringify(m)}, want ${p.ev}`));
    };
    if (lines) {
      createInterface({ input: child.stdout! }).on("line", (line) => {
        let m: unknown;
        try {
          m = JSON.parse(line);
        } catch {
          return this.die(new Error(`${label} wrote ${JSON.stringify(line)}, not a JSON line`));
        }
        onMessage(m);
      });
      child.stdin!.on("error", (err) => this.die(err));
    } else child.on("message", onMessage);
    child.on("error", (err) => this.die(err));
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.die(new Error(`${label} exited (code ${code}, signal ${signal}); see its stderr above`));
        resolve();
      });
    });
  }

  /**
   * Fork `script` (a path; it inherits this Node's flags, --cpu-prof included, unless `execArgv` says
   * otherwise: tests run the TypeScript source with `--import tsx`) and wait for its `ready`.
   */
  static async start<Req, Reply extends { readonly ev: string }>(
    script: string,
    label: string,
    execArgv?: readonly string[],
  ): Promise<ClientProcess<Req, Reply>> {
    const child = fork(script, [], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      ...(execArgv === undefined ? {} : { execArgv: [...execArgv] }),
    });
    const c = new ClientProcess<Req, Reply>(child, label, false);
    await c.expect("ready" as Reply["ev"], READY_TIMEOUT_MS);
    return c;
  }

  /**
   * Run `command` with `args` (its stderr inherited), speaking the same messages as JSON lines: one
   * request per line on its stdin, one reply per line on its stdout. It exits when its stdin closes.
   */
  static async spawnLines<Req, Reply extends { readonly ev: string }>(
    command: string,
    args: readonly string[],
    label: string,
    env: NodeJS.ProcessEnv = process.env,
  ): Promise<ClientProcess<Req, Reply>> {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "inherit"], env });
    const c = new ClientProcess<Req, Reply>(child, label, true);
    await c.expect("ready" as Reply["ev"], READY_TIMEOUT_MS);
    return c;
  }

  /** The client's process id (for its CPU time). */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  async request<E extends Reply["ev"]>(m: Req, ev: E): Promise<Extract<Reply, { ev: E }>> {
    const reply = this.expect(ev, REQUEST_TIMEOUT_MS);
    if (this.lines) this.child.stdin!.write(`${JSON.stringify(m)}\n`);
    else this.child.send(m as object);
    return (await reply) as Extract<Reply, { ev: E }>;
  }

  /** Disconnect or close its stdin (the client exits on that) and wait for it to be gone; kill it if it lingers. */
  async close(): Promise<void> {
    if (this.lines) this.child.stdin!.end();
    else if (this.child.connected) this.child.disconnect();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  private expect(ev: Reply["ev"], timeoutMs: number): Promise<Reply> {
    if (this.dead !== null) return Promise.reject(this.dead);
    if (this.pending !== null) return Promise.reject(new Error(`${this.label}: ${ev} while busy`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.die(new Error(`${this.label}: no ${ev} in ${timeoutMs} ms`)),
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

export interface StreamTask<W> {
  readonly name: string;
  /** The client that runs it, when not the one runStreams was given. */
  readonly client?: StreamClient<W>;
  readonly workload: W;
  /** Items per measured iteration (some ms of streaming). */
  readonly items: number;
  /** What one item counts for in the table: 1 URB, or its payload bytes. */
  readonly units: number;
  readonly result: string;
  readonly unit: "URB/s" | "MB/s";
  /**
   * Also record the CPU time per item of these processes (label → pid; all their threads) over the
   * measured waits: `<result>.<label>_cpu_us`, e.g. `server_cpu_us` and `client_cpu_us`. At 1 in flight
   * the client and the server take turns, so the rate is bounded by the sum; on a busy host, CPU per item
   * is what the rate follows.
   */
  readonly cpu?: Readonly<Record<string, number>>;
}

/**
 * `tasks` with the CPU time per item recorded for those whose result is in `names` (server: this process,
 * client: `client`'s): the streams another table compares them with.
 */
export function withCpu<W>(
  tasks: readonly StreamTask<W>[],
  names: ReadonlySet<string>,
  client: { readonly pid: number },
): StreamTask<W>[] {
  return tasks.map((t) =>
    names.has(t.result) ? { ...t, cpu: { server: process.pid, client: client.pid } } : t,
  );
}

/** CPU time of every thread of `pid` so far, ns (the kernel's schedstat); null where it cannot be read. */
export function processCpuNs(pid: number): number | null {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
      } catch {
        // the thread ended meanwhile
      }
    }
    return ns;
  } catch {
    return null;
  }
}

/** The stream requests of a client process whose own protocol adds to them (a `connect`). */
export type StreamClient<W> = Pick<
  ClientProcess<StreamRequest<W> | { readonly cmd: "connect" }, StreamReply | { readonly ev: "connected" }>,
  "request"
>;

/**
 * Run `tasks` on connected clients (each task's own, else `client`) as one Bench, print the table,
 * check the work was done.
 */
export async function runStreams<W>(
  opts: SuiteOptions,
  title: string,
  tasks: readonly StreamTask<W>[],
  defaultClient?: StreamClient<W>,
): Promise<Result[]> {
  const bench = new Bench(benchTiming(opts));
  const done = new Map<string, { waited: number; completed: number }>();
  const cpuUsed = new Map<string, { ns: Record<string, number>; items: number; readable: boolean }>();
  for (const t of tasks) {
    const client = t.client ?? defaultClient;
    if (client === undefined) throw new Error(`${title}: task ${t.name} has no client`);
    const count = { waited: 0, completed: 0 };
    done.set(t.name, count);
    const cpu = Object.entries(t.cpu ?? {});
    const used = {
      ns: Object.fromEntries(cpu.map(([label]) => [label, 0])),
      items: 0,
      readable: cpu.length > 0,
    };
    cpuUsed.set(t.name, used);
    bench.add(
      t.name,
      async () => {
        const before = cpu.map(([, pid]) => processCpuNs(pid));
        const r = await client.request({ cmd: "wait", items: t.items }, "waited");
        if (cpu.length > 0) {
          const after = cpu.map(([, pid]) => processCpuNs(pid));
          if ([...before, ...after].includes(null)) used.readable = false;
          else {
            for (const [i, [label]] of cpu.entries()) used.ns[label]! += after[i]! - before[i]!;
            used.items += r.items;
          }
        }
        count.waited += r.items;
        // The client's own clock, from the wait's arrival to its Nth item: IPC latency stays out.
        return { overriddenDuration: r.ms };
      },
      {
        async: true,
        // Once per phase (warmup, then run): each phase gets a fresh stream, drained at its end.
        beforeAll: async () => {
          await client.request({ cmd: "start", workload: t.workload }, "started");
        },
        afterAll: async () => {
          count.completed += (await client.request({ cmd: "stop" }, "stopped")).items;
        },
      },
    );
  }
  await bench.run();
  const units = Object.fromEntries(tasks.map((t) => [t.name, t.items * t.units]));
  printBench(title, bench, units);
  for (const [name, n] of done) {
    if (n.waited === 0 || n.completed < n.waited)
      throw new Error(`${title}: ${name} completed ${n.completed} items, waited for ${n.waited}`);
  }
  return tasks.flatMap((t) => {
    const perSecond = latencyOf(bench, t.name).opsPerSec * t.items * t.units;
    const rate = { name: t.result, value: t.unit === "MB/s" ? perSecond / 1e6 : perSecond, unit: t.unit };
    const used = cpuUsed.get(t.name)!;
    if (!used.readable || used.items === 0) return [rate];
    const base = t.result.replace(/\.(urbs_per_s|mbps)$/, "");
    return [
      rate,
      ...Object.entries(used.ns).map(([label, ns]) => ({
        name: `${base}.${label}_cpu_us`,
        value: ns / 1000 / used.items,
        unit: "µs/item",
      })),
    ];
  });
}
