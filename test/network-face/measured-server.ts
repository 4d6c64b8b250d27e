/**
 * The parent's side of server-process.ts: a USB/IP or usbredir server in a child process, its resident
 * memory read from /proc (what the kernel charges the server for, whatever holds it: unsent replies,
 * queued requests, promise chains), its stats over IPC, and its real text log (stderr) line by line.
 * The child runs with a small V8 nursery (--max-semi-space-size=1) so that RSS follows what the server
 * holds rather than how far the young generation has grown.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { eventually } from "../support/eventually.js";

const ROOT = join(import.meta.dirname, "../..");
const ENTRY = join(import.meta.dirname, "server-process.ts");

export interface MeasuredServer {
  readonly port: number;
  readonly pid: number;
  /** Resident set size now, bytes (VmRSS). */
  rss(): number;
  /** The server's stats() (as JSON). */
  stats(): Promise<Record<string, unknown>>;
  /** Everything the server logged so far (stderr), line by line. */
  lines(): string[];
  /** The raw stderr text (to look for raw control characters). */
  stderr(): string;
  close(): Promise<void>;
}

export function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (m === null) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

export async function startMeasuredServer(
  protocol: "usbip" | "usbredir",
  options: Record<string, unknown>,
): Promise<MeasuredServer> {
  const child: ChildProcess = spawn(
    process.execPath,
    ["--max-semi-space-size=1", "--import", "tsx", ENTRY, JSON.stringify({ protocol, options })],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe", "ipc"] },
  );
  let out = "";
  let err = "";
  let exited = false;
  child.stdout!.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on("data", (d: Buffer) => {
    err += d.toString("utf8");
  });
  const gone = new Promise<void>((r) =>
    child.once("exit", () => {
      exited = true;
      r();
    }),
  );
  await eventually(() => out.includes("\n") || exited, 30_000, "the server process to listen");
  if (exited) throw new Error(`the server process exited: ${err}`);
  const port = (JSON.parse(out.split("\n")[0]!) as { port: number }).port;
  const pid = child.pid!;
  return {
    port,
    pid,
    rss: () => rssOf(pid),
    stats: () =>
      new Promise((resolve) => {
        child.once("message", (m) => resolve((m as { stats: Record<string, unknown> }).stats));
        child.send("stats");
      }),
    lines: () => err.split("\n").filter((l) => l !== ""),
    stderr: () => err,
    async close() {
      if (exited) return;
      child.send("close");
      const killed = setTimeout(() => child.kill("SIGKILL"), 5000);
      await gone;
      clearTimeout(killed);
    },
  };
}
