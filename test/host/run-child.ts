/** Start one child process under umockdev-run, kill it at a timeout, and read its `VERDICT <json>` line. */
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
      env: { ...process.env, USBVIRT_HOST_LOCK_DIR: lockDir, ...env },
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
      const line = stdout.split("\n").find((l) => l.startsWith("VERDICT "));
      resolve({
        verdict:
          line === undefined ? null : (JSON.parse(line.slice("VERDICT ".length)) as Record<string, unknown>),
        code,
        stdout,
        stderr,
        ms: Date.now() - started,
      });
    });
  });
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
