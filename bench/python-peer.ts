/**
 * The Python side of the network benches (bench/python/): the client a Python user would write
 * (stream-client.py: stdlib, one non-blocking socket, a bulk pair's requests and OUT data in one send(),
 * replies read with recv(1 MiB)) and a naive pure-Python USB/IP server (usbip-server.py: a thread per
 * connection, blocking exact recv()s, one sendall() per reply) — the peer `usbvirt serve` is measured
 * against, in the same run, with the same client. Both run under Debian's python3, without writing
 * bytecode next to the sources.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { ClientProcess, type StreamReply, type StreamRequest } from "./stream-bench.js";

export const PYTHON = "python3";

/** The Python client's workloads: null control requests at a depth, 64 KiB bulk OUT + IN pairs. */
export type PyWorkload =
  | { readonly kind: "null"; readonly depth: number }
  | { readonly kind: "bulk64k"; readonly pairs: number };

/** Parent → Python client: a `connect` of its own, then the stream requests. */
export type PyClientRequest =
  | { readonly cmd: "connect"; readonly protocol: "usbip"; readonly port: number; readonly busid: string }
  | { readonly cmd: "connect"; readonly protocol: "usbredir"; readonly port: number }
  | StreamRequest<PyWorkload>;

/** Python client → parent; `stopped` also says how many bytes of bulk data went each way. */
export type PyClientReply =
  | Exclude<StreamReply, { readonly ev: "stopped" }>
  | { readonly ev: "stopped"; readonly items: number; readonly inBytes: number; readonly outBytes: number }
  | { readonly ev: "connected" };

export type PyClient = ClientProcess<PyClientRequest, PyClientReply>;

/** The busid the Python server exports its one device as. */
export const PY_PEER_BUSID = "1-1";

const READY_TIMEOUT_MS = 10_000;

/** A script of bench/python/, found from bench/ (tests, tsx) and from dist/bench/ (npm run bench). */
export function pythonScript(name: string): string {
  for (const rel of [`./python/${name}`, `../../bench/python/${name}`]) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(path)) return path;
  }
  throw new Error(`bench/python/${name} not found beside ${fileURLToPath(import.meta.url)}`);
}

/** Throw a clear error when python3 cannot run (the network suites need it). */
export function requirePython(): void {
  const r = spawnSync(PYTHON, ["-c", "import selectors, socket, struct, json"], { encoding: "utf8" });
  if (r.error !== undefined || r.status !== 0) {
    throw new Error(
      `${PYTHON} is needed for the Python client and server of the network benches (apt-get install python3): ` +
        `${r.error?.message ?? r.stderr.trim()}`,
    );
  }
}

/** No bytecode files next to the sources. */
function pythonEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PYTHONDONTWRITEBYTECODE: "1" };
}

/** Start the Python client (not yet connected). */
export function startPythonClient(label: string): Promise<PyClient> {
  return ClientProcess.spawnLines<PyClientRequest, PyClientReply>(
    PYTHON,
    ["-B", pythonScript("stream-client.py")],
    label,
    pythonEnv(),
  );
}

/** The naive Python USB/IP server, listening on 127.0.0.1. */
export class PythonUsbipPeer {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    private readonly exited: Promise<void>,
  ) {}

  static async start(): Promise<PythonUsbipPeer> {
    const child = spawn(PYTHON, ["-B", pythonScript("usbip-server.py"), "0"], {
      stdio: ["pipe", "pipe", "inherit"],
      env: pythonEnv(),
    });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    const lines = createInterface({ input: child.stdout! });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`the Python USB/IP server did not listen within ${READY_TIMEOUT_MS} ms`)),
          READY_TIMEOUT_MS,
        );
        child.once("error", reject);
        child.once("exit", (code) => reject(new Error(`the Python USB/IP server exited (code ${code})`)));
        lines.once("line", (line) => {
          clearTimeout(timer);
          const m = JSON.parse(line) as { ev?: string; port?: unknown };
          if (m.ev !== "listening" || typeof m.port !== "number")
            reject(new Error(`the Python USB/IP server said ${line}`));
          else resolve(m.port);
        });
      });
      return new PythonUsbipPeer(child, port, exited);
    } catch (err) {
      child.kill("SIGKILL");
      throw err;
    }
  }

  /** Its process id (for its CPU time). */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Close its stdin (it exits on that) and wait for it; kill it if it lingers. */
  async close(): Promise<void> {
    this.child.stdin!.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}
