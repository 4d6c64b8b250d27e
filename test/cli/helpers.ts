/**
 * Helpers for the daemon tests: run `serve` or `redirect` in-process through run() with a collecting
 * logger, and spawn the real `usbvirt` process (through tsx, from src) with its output collected.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { type CliIo, run } from "../../src/cli/run.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";
import type { UsbredirServer } from "../../src/usbredir/server.js";
import { command, type Tool } from "../support/tools.js";

export const ROOT = join(import.meta.dirname, "../..");

export function capture(extra: Partial<CliIo> = {}) {
  let out = "";
  let err = "";
  const logger = new CollectingLogger();
  const io: CliIo = {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
    logger,
    ...extra,
  };
  return {
    io,
    logger,
    get out() {
      return out;
    },
    get err() {
      return err;
    },
  };
}

/**
 * `usbvirt ARGV` in-process with a collecting logger: `ready` resolves with the server once it is up (the
 * io hook `hook` is called; rejects if the command exits first); `stop()` is the SIGINT stand-in; `exit` its status.
 */
function daemonInProcess<S>(argv: readonly string[], hook: (up: (server: S) => void) => Partial<CliIo>) {
  let stop!: (s: string) => void;
  const stopped = new Promise<string>((r) => {
    stop = r;
  });
  let up!: (s: S) => void;
  const ready = new Promise<S>((r) => {
    up = r;
  });
  const c = capture({ stopSignal: () => stopped, ...hook(up) });
  const exit = run(argv, c.io);
  return {
    c,
    exit,
    ready: Promise.race([ready, exit.then((code) => Promise.reject(new Error(`exited ${code}: ${c.err}`)))]),
    stop: async () => {
      stop("SIGINT");
      return await exit;
    },
  };
}

/** `serve --port 0 ARGS` in-process: resolves once it listens; `stop()` is the SIGINT stand-in; `exit` its status. */
export async function serveInProcess(args: readonly string[]) {
  const d = daemonInProcess<UsbipServer>(["serve", "--port", "0", ...args], (up) => ({ onListening: up }));
  return { ...d, server: await d.ready };
}

/** `redirect ARGS` in-process: `ready` resolves once it listens or dials (rejects if it exits first). */
export function redirectInProcess(args: readonly string[]) {
  return daemonInProcess<UsbredirServer>(["redirect", ...args], (up) => ({ onRedirecting: up }));
}

/** A free loopback TCP port (bound and released: for a tool that binds it itself). */
export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

/** A connection to the Unix-domain socket at `path`, once it is open. */
export async function connectedTo(path: string): Promise<Socket> {
  const socket = connect(path);
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return socket;
}

/** systemd-socket-activate, or why it is missing (test/support/tools.ts). */
export function socketActivateTool(): Tool<string> {
  return command(["systemd-socket-activate"], "apt-get install systemd");
}

export interface Child {
  readonly child: ChildProcessWithoutNullStreams;
  readonly out: () => string;
  readonly err: () => string;
  readonly exited: Promise<number | null>;
  /** Resolves once stdout or stderr matches `re` (or rejects when the process exits first). */
  waitFor(re: RegExp, stream?: "out" | "err"): Promise<RegExpExecArray>;
}

/** Spawn `command args` (default: the usbvirt CLI from src through tsx) and collect its output. */
export function spawnChild(args: readonly string[], command?: string, env?: NodeJS.ProcessEnv): Child {
  const child = command
    ? spawn(command, args, { cwd: ROOT, env: env ?? process.env })
    : spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
        cwd: ROOT,
        env: env ?? process.env,
      });
  let out = "";
  let err = "";
  const waiters = new Set<() => void>();
  const poke = () => {
    for (const w of [...waiters]) w();
  };
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
    poke();
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
    poke();
  });
  let done = false;
  const exited = new Promise<number | null>((r) =>
    child.on("exit", (code) => {
      done = true;
      r(code);
      poke();
    }),
  );
  return {
    child,
    out: () => out,
    err: () => err,
    exited,
    waitFor(re, stream) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const text = stream === "err" ? err : stream === "out" ? out : `${out}\n${err}`;
          const m = re.exec(text);
          if (m !== null) {
            waiters.delete(check);
            resolve(m);
          } else if (done) {
            waiters.delete(check);
            reject(new Error(`process exited before ${re}: ${out} ${err}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
  };
}
