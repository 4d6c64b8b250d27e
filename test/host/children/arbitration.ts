/**
 * Child process under test/host/children/testbed.py (interactive umockdev): who may hold one host device.
 *   1. connection A attaches the device;
 *   2. connection B (this process) asks for it: refused, naming this process;
 *   3. another process asks for it: refused, naming this process;
 *   4. A detaches it: B attaches it.
 * With `crash` or `kill` as argument, step 4 is instead: A's port worker is crashed (process.exit on it) or
 * terminated (no exit hook runs), and B attaches the device once the port reported the failure. With
 * `backend`, A's backend worker ends (process.exit) instead; A's control plane attaches the device again.
 * Prints `VERDICT <json>`.
 */
import { spawnSync } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Connection } from "../../../src/engine/connection.js";
import type { PortNum } from "../../../src/urb/types.js";
import { eventually } from "../../support/eventually.js";
import { exitWithVerdictOf } from "../../support/verdict.js";
import { PID, VID } from "../fixture.js";

/** This process's fds open on a USB device node (as /proc/self/fd names them). */
function deviceFds(): string[] {
  const found: string[] = [];
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.includes("bus/usb") || target.startsWith("socket:")) found.push(`${fd} ${target}`);
    } catch {
      // closed meanwhile
    }
  }
  return found;
}

const spec = { kind: "host", vendorId: VID, productId: PID } as const;

async function refusal(conn: Connection): Promise<{ code: unknown; message: string } | null> {
  try {
    await conn.attach(1, spec);
    return null;
  } catch (err) {
    return { code: (err as { code?: unknown }).code, message: String((err as Error).message) };
  }
}

async function main(): Promise<Record<string, unknown>> {
  const a = await Connection.create({ ports: 2, memory: 1024 });
  const b = await Connection.create({ ports: 2, memory: 1024 });
  try {
    await a.attach(1, spec);
    const inProcess = await refusal(b);
    const engine = fileURLToPath(new URL("../../../src/engine/connection.ts", import.meta.url));
    const script = `
      const { Connection } = await import(${JSON.stringify(engine)});
      const c = await Connection.create({ ports: 1, memory: 256 });
      try { await c.attach(1, ${JSON.stringify(spec)}); console.log("RESULT " + JSON.stringify(null)); }
      catch (err) { console.log("RESULT " + JSON.stringify({ code: err.code, message: err.message })); }
      await c.close();
    `;
    const other = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 20_000,
    });
    const line = other.stdout.split("\n").find((l) => l.startsWith("RESULT "));
    const otherProcess: unknown =
      line === undefined ? `no result: ${other.stderr.slice(-500)}` : JSON.parse(line.slice(7));
    const fdsHeld = deviceFds();
    const end = process.argv.find((x) => x === "crash" || x === "kill" || x === "backend");
    if (end === "backend") {
      // The backend worker ends (process.exit on it) and takes A's port worker with it; the control plane
      // starts a new backend and attaches the device again, which it can only do once it was given back.
      const ready = new Promise<void>((res) => a.once("backend-ready", () => res()));
      const logs: string[] = [];
      a.on("log", (line) => logs.push(line));
      await a.crashBackend("exit");
      await ready;
      await eventually(() => a.frontend!.portStatus(1 as PortNum).connected, 20_000, "A's device back");
      const fdsLeft = deviceFds();
      return { pid: process.pid, inProcess, otherProcess, after: await refusal(b), fdsHeld, fdsLeft, logs };
    }
    if (end !== undefined) {
      // Crashed (process.exit on the port worker: its exit hook runs) or killed (terminate(): none runs).
      const failed = new Promise<string>((res) => a.once("port-failed", (_p, why) => res(why)));
      if (end === "crash") await a.crashPort(1, "exit");
      else await a.killPort(1);
      await failed;
    } else {
      await a.detach(1);
    }
    const fdsLeft = deviceFds();
    const after = await refusal(b);
    return { pid: process.pid, inProcess, otherProcess, after, fdsHeld, fdsLeft };
  } finally {
    await a.close();
    await b.close();
  }
}

exitWithVerdictOf(main(), 25_000);
