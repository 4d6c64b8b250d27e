/**
 * Start one child process (under umockdev-run, or the interactive testbed), kill it at a timeout, and read
 * its `VERDICT <json>` line (test/support/verdict.ts writes it). Python children never write bytecode.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface ChildOutcome {
  verdict: Record<string, unknown> | null;
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export function runChild(
  command: string,
  args: readonly string[],
  timeoutMs = 30_000,
  env: Readonly<Record<string, string>> = {},
): Promise<ChildOutcome> {
  const started = Date.now();
  // Each umockdev testbed has its own fake bus: its devices' host locks must not meet another child's.
  const lockDir = env.USBVIRT_HOST_LOCK_DIR ?? mkdtempSync(join(tmpdir(), "usbvirt-locks-"));
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1", USBVIRT_HOST_LOCK_DIR: lockDir, ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString();
    });
    child.stderr.on("data", (b: Buffer) => {
      stderr += b.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (env.USBVIRT_HOST_LOCK_DIR === undefined) rmSync(lockDir, { recursive: true, force: true });
      resolve({
        verdict: verdictIn(stdout),
        code,
        stdout,
        stderr,
        ms: Date.now() - started,
      });
    });
  });
}

/** The first whole `VERDICT <json>` line of `stdout`; null when there is none, or it was cut short. */
export function verdictIn(stdout: string): Record<string, unknown> | null {
  const lines = stdout.split("\n");
  // The last part has no newline after it: a line still being written when the child ended.
  const line = lines.slice(0, -1).find((l) => l.startsWith("VERDICT "));
  if (line === undefined) return null;
  try {
    const v: unknown = JSON.parse(line.slice("VERDICT ".length));
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** A failure message for a child without a good verdict: its exit, its verdict (or why it has none), its stderr's end. */
export function childFailure(what: string, out: ChildOutcome): string {
  const at = out.stdout.lastIndexOf("VERDICT ");
  const verdict =
    out.verdict !== null
      ? JSON.stringify(out.verdict)
      : at < 0
        ? "no VERDICT line"
        : `its VERDICT line was cut short or is not JSON (${out.stdout.length - at} bytes)`;
  return `${what} failed (exit ${out.code}, ${out.ms} ms): ${verdict}\n${out.stderr.slice(-2000)}`;
}

/** `umockdev-run --device D --pcap SYSFS=R -- node --import tsx <child> <args>` */
export function underReplay(
  umockdevRun: string,
  description: string,
  sysfsPath: string,
  pcap: string,
  child: string,
  childArgs: readonly string[] = [],
): Promise<ChildOutcome> {
  return runChild(umockdevRun, [
    "--device",
    description,
    "--pcap",
    `/sys${sysfsPath}=${pcap}`,
    "--",
    process.execPath,
    "--import",
    "tsx",
    child,
    ...childArgs,
  ]);
}
