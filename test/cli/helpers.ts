/**
 * Helpers for the daemon tests: run `serve` in-process through run() with a collecting logger, and
 * spawn the real `usbvirt` process (through tsx, from src) with its output collected.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { join } from "node:path";
import { type CliIo, run } from "../../src/cli/run.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";

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

/** `serve --port 0 ARGS` in-process: resolves once it listens; `stop()` is the SIGINT stand-in; `exit` its status. */
export async function serveInProcess(args: readonly string[]) {
  let stop!: (s: string) => void;
  const stopped = new Promise<string>((r) => {
    stop = r;
  });
  let listening!: (s: UsbipServer) => void;
  const up = new Promise<UsbipServer>((r) => {
    listening = r;
  });
  const c = capture({ stopSignal: () => stopped, onListening: (s) => listening(s) });
  const exit = run(["serve", "--port", "0", ...args], c.io);
  const server = await Promise.race([
    up,
    exit.then((code) => {
      throw new Error(`serve exited ${code}: ${c.err}`);
    }),
  ]);
  return {
    server,
    c,
    exit,
    stop: async () => {
      stop("SIGINT");
      return await exit;
    },
  };
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
