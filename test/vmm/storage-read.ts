/**
 * The QEMU guest's storage read, usbvirt against a naive Python usbredir server, in one boot: QEMU's
 * qemu-xhci carries two usb-redir devices, one a chardev to `usbvirt redirect --device storage` (the CLI,
 * a child process, its default 64 MiB memory disk) and one to test/vmm/peers/usbredir-storage-peer.py
 * (a child process, `python3 -B`, a 64 MiB RAM disk). The guest's storage-read check (scripts/vmm/init.sh)
 * writes the same random pattern to both disks, then reads `mib` MiB from each with O_DIRECT in 64 KiB
 * reads, `rounds` times, alternating (usbvirt first in odd rounds, the peer first in even ones), timed by
 * the guest's clock, and finally reads each disk once more and compares it with the pattern.
 *
 * One boot rather than one per server: boots cost 30 s each here, and within one boot both servers see
 * the same guest, the same QEMU and the same minute of machine load; the alternation within each round
 * cancels a drift. Each server's CPU time (/proc/PID/stat) is sampled at every STEP line, so each read
 * also says what it cost the server that served it (and the other, idle one) per MiB.
 *
 * $USBVIRT_VMM_REDIRECT_NODE_ARGS (space-separated) adds node flags to the usbvirt process, e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile it during the reads.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_STORAGE_SERIAL } from "../../src/devices/emulated/mass-storage/device.js";
import { bootGuest, type GuestRun, type VmmGuest } from "./qemu-guest.js";

const REPO = join(import.meta.dirname, "../..");
const CLI = join(REPO, "dist/src/cli/main.js");
const PEER = join(import.meta.dirname, "peers/usbredir-storage-peer.py");
/** The Python peer's serial number (the guest finds each disk by its USB serial). */
export const PEER_SERIAL = "5059504545520001";
export const LABELS = ["usbvirt", "pypeer"] as const;
export type Label = (typeof LABELS)[number];

export interface StorageReadOptions {
  /** Console log name (test-output/vmm/<name>.log). */
  readonly name: string;
  readonly rounds: number;
  readonly mib: number;
  readonly timeoutMs: number;
  readonly guest?: VmmGuest;
}

/** One timed read of `mib` MiB from one disk. */
export interface ReadFigure {
  readonly round: number;
  readonly mibps: number;
  readonly ns: number;
  /** CPU time each server process used between the previous STEP line and this one (ms)... */
  readonly cpuMs: Readonly<Record<Label, number>>;
  /** ... and the part of it in the kernel. */
  readonly systemCpuMs: Readonly<Record<Label, number>>;
  /** QEMU's CPU time over the same span (ms). */
  readonly qemuCpuMs: number;
}

export interface StorageReadRun {
  readonly run: GuestRun;
  readonly reads: Readonly<Record<Label, readonly ReadFigure[]>>;
  /** The guest read back the pattern it wrote (read-verify-<label> ok). */
  readonly verified: Readonly<Record<Label, boolean>>;
  /** Load average at the start and at the end. */
  readonly loadavg: { readonly before: readonly number[]; readonly after: readonly number[] };
  /** Each server's stderr, for failure messages. */
  readonly logs: Readonly<Record<Label, string>>;
}

/** A server in a child process, listening on 127.0.0.1. */
interface ServerProcess {
  readonly child: ChildProcess;
  readonly port: number;
  readonly stderr: () => string;
}

function startServer(what: string, argv: readonly string[], portLine: RegExp): Promise<ServerProcess> {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  let out = "";
  child.stderr!.setEncoding("utf8").on("data", (c: string) => {
    err = (err + c).slice(-20_000);
  });
  return new Promise((resolve, reject) => {
    const fail = (why: string) => {
      child.kill("SIGKILL");
      reject(new Error(`${what} did not start: ${why}\n${out}${err}`));
    };
    child.once("error", (e) => fail(e.message));
    child.once("exit", (code) => fail(`exited ${code}`));
    child.stdout!.setEncoding("utf8").on("data", (c: string) => {
      out += c;
      const m = portLine.exec(out);
      if (m === null) return;
      child.removeAllListeners("exit");
      child.removeAllListeners("error");
      resolve({ child, port: Number(m[1]), stderr: () => err });
    });
  });
}

/** CPU time of a process in ms, all of it and the part in the kernel (0 when it is gone). */
export function cpuOf(pid: number | undefined): { all: number; system: number } {
  if (pid === undefined) return { all: 0, system: 0 };
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime, fields 14 and 15 of stat(5) (counted from the state, field 3, here); ticks of 10 ms.
    const user = Number(fields[11]) * 10;
    const system = Number(fields[12]) * 10;
    return { all: user + system, system };
  } catch {
    return { all: 0, system: 0 };
  }
}

function stop(p: ServerProcess | null): Promise<void> {
  if (p === null || p.child.exitCode !== null || p.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    p.child.once("exit", () => resolve());
    p.child.kill("SIGTERM");
  });
}

const READ_LINE = /^read-(\w+)-(\d+)$/;
const MIBPS = /(?:^| )bytes=(\d+) ns=(\d+)(?: |$)/;

/** Boot once with both servers and collect every timed read. */
export async function runStorageRead(options: StorageReadOptions): Promise<StorageReadRun> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  const loadBefore = readLoad();
  let ours: ServerProcess | null = null;
  let peer: ServerProcess | null = null;
  try {
    const nodeArgs = (process.env.USBVIRT_VMM_REDIRECT_NODE_ARGS ?? "").split(" ").filter((a) => a !== "");
    ours = await startServer(
      "usbvirt redirect",
      [process.execPath, ...nodeArgs, CLI, "redirect", "--device", "storage", "--listen", "127.0.0.1:0"],
      /listening on 127\.0\.0\.1:(\d+);/,
    );
    peer = await startServer(
      "the Python usbredir peer",
      ["python3", "-B", PEER, "--serial", PEER_SERIAL],
      /LISTENING (\d+)\n/,
    );
    const pids: Record<Label, number | undefined> = { usbvirt: ours.child.pid, pypeer: peer.child.pid };
    const reads: Record<Label, ReadFigure[]> = { usbvirt: [], pypeer: [] };
    let last = { usbvirt: cpuOf(pids.usbvirt), pypeer: cpuOf(pids.pypeer), qemu: cpuOf(undefined) };
    const run = await bootGuest({
      name: options.name,
      guest: options.guest,
      redirPorts: [ours.port, peer.port],
      checks: ["storage-read"],
      params: {
        "read-disks": `usbvirt:${DEFAULT_STORAGE_SERIAL},pypeer:${PEER_SERIAL}`,
        "read-rounds": options.rounds,
        "read-mib": options.mib,
      },
      timeoutMs: options.timeoutMs,
      onLine: (line, control) => {
        if (!line.startsWith("STEP ")) return;
        const now = { usbvirt: cpuOf(pids.usbvirt), pypeer: cpuOf(pids.pypeer), qemu: cpuOf(control.pid) };
        const since = last;
        last = now;
        const [, name, verdict, ...rest] = line.split(" ");
        const m = READ_LINE.exec(name ?? "");
        if (m === null || verdict !== "ok" || !(LABELS as readonly string[]).includes(m[1]!)) return;
        const figures = MIBPS.exec(rest.join(" "));
        if (figures === null) return;
        const bytes = Number(figures[1]);
        const ns = Number(figures[2]);
        reads[m[1] as Label].push({
          round: Number(m[2]),
          mibps: bytes / 1048576 / (ns / 1e9),
          ns,
          cpuMs: { usbvirt: now.usbvirt.all - since.usbvirt.all, pypeer: now.pypeer.all - since.pypeer.all },
          systemCpuMs: {
            usbvirt: now.usbvirt.system - since.usbvirt.system,
            pypeer: now.pypeer.system - since.pypeer.system,
          },
          qemuCpuMs: now.qemu.all - since.qemu.all,
        });
      },
    });
    const verified = {
      usbvirt: run.steps.get("read-verify-usbvirt")?.ok === true,
      pypeer: run.steps.get("read-verify-pypeer")?.ok === true,
    };
    return {
      run,
      reads,
      verified,
      loadavg: { before: loadBefore, after: readLoad() },
      logs: { usbvirt: ours.stderr(), pypeer: peer.stderr() },
    };
  } finally {
    await Promise.all([stop(ours), stop(peer)]);
  }
}

function readLoad(): number[] {
  try {
    return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);
  } catch {
    return [];
  }
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The bench record's figures of a run (names in the README's Benchmarks section). */
export function recordOf(r: StorageReadRun, mib: number): { name: string; value: number; unit: string }[] {
  const ours = r.reads.usbvirt;
  const theirs = r.reads.pypeer;
  const cpuPerMib = (figures: readonly ReadFigure[], label: Label) =>
    figures.reduce((sum, f) => sum + f.cpuMs[label], 0) / (figures.length * mib);
  return [
    { name: "vmm.usbredir.storage.read.mbps", value: median(ours.map((f) => f.mibps)), unit: "MiB/s" },
    {
      name: "vmm.usbredir.storage.read.min.mbps",
      value: Math.min(...ours.map((f) => f.mibps)),
      unit: "MiB/s",
    },
    {
      name: "vmm.usbredir.storage.read.pypeer.mbps",
      value: median(theirs.map((f) => f.mibps)),
      unit: "MiB/s",
    },
    { name: "vmm.usbredir.storage.read.cpu_ms_per_mib", value: cpuPerMib(ours, "usbvirt"), unit: "ms/MiB" },
    {
      name: "vmm.usbredir.storage.read.pypeer.cpu_ms_per_mib",
      value: cpuPerMib(theirs, "pypeer"),
      unit: "ms/MiB",
    },
  ];
}
