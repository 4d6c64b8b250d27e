/**
 * The real-VMM harness: boots QEMU (TCG, no network) with the test guest that scripts/vmm/build-guest.sh
 * builds — a Debian kernel and an initramfs whose /init (scripts/vmm/init.sh) runs the checks named on the
 * kernel command line and prints `STEP <name> ok|fail <detail>` lines, then `DONE`, on the serial console.
 * usbredir devices reach the guest through QEMU's xHCI: one `usb-redir` device per port, its chardev a TCP
 * client of a server on 127.0.0.1. USB/IP devices reach the guest's vhci-hcd through virtio-serial: one
 * `virtserialport` named `usbip.BUSID` per device, its chardev a TCP client of 127.0.0.1 (the guest's
 * guest-tool imports BUSID over it and relays it to vhci). The console is kept whole and written to
 * test-output/vmm/<name>.log.
 *
 * Availability: `vmmGuest()` says why a guest cannot boot here (no qemu-system-x86_64, image not built).
 * Tests skip then, with that reason (test/support/tools.ts), unless USBVIRT_REQUIRE_TOOLS=1 (CI sets it):
 * then a missing guest fails.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { outputDir } from "../support/chromium.js";
import { command, found, missing, need, type Tool } from "../support/tools.js";

const REPO = join(import.meta.dirname, "../..");

/** What a boot needs: the QEMU binary and the guest's kernel and initramfs. */
export interface VmmGuest {
  readonly qemu: string;
  readonly kernel: string;
  readonly initrd: string;
}

/** The guest, or why it cannot boot here. */
export type VmmAvailability = Tool<VmmGuest>;

/**
 * The guest, or why there is none. $USBVIRT_QEMU names the QEMU binary (default qemu-system-x86_64 on the
 * PATH), $USBVIRT_VMM_GUEST the image folder (default <repo>/.cache/vmm-guest).
 */
export function vmmGuest(): VmmAvailability {
  const qemu = command([process.env.USBVIRT_QEMU || "qemu-system-x86_64"], "apt-get install qemu-system-x86");
  if (!qemu.ok) return qemu;
  const dir = process.env.USBVIRT_VMM_GUEST || join(REPO, ".cache/vmm-guest");
  const kernel = join(dir, "vmlinuz");
  const initrd = join(dir, "initrd.img");
  if (!existsSync(kernel) || !existsSync(initrd))
    return missing(`the guest image is not built in ${dir} (run scripts/vmm/build-guest.sh)`);
  return found({ qemu: qemu.value, kernel, initrd });
}

/** The guest, or an error carrying the reason it is unavailable. */
export function requireGuest(availability: VmmAvailability = vmmGuest()): VmmGuest {
  return need(availability);
}

export interface StepResult {
  readonly ok: boolean;
  readonly detail: string;
}

/** What a test can do while the guest runs (from `onLine`). */
export interface GuestControl {
  /** Runs one QEMU human-monitor command (e.g. `sendkey a`) and returns its output. Needs `monitor: true`. */
  hmp(command: string): Promise<string>;
  /** Ends the guest now (SIGKILL). */
  kill(): void;
  /** QEMU's process id (e.g. to read its CPU time), if it started. */
  readonly pid: number | undefined;
}

export interface BootOptions {
  /** Names the console log: test-output/vmm/<name>.log. */
  readonly name: string;
  /** Checks for the guest's /init, in order: `storage`, `keyboard`, `loopback`. */
  readonly checks: readonly string[];
  /** Ports on 127.0.0.1 of usbredir servers: one usb-redir device on the xHCI each (QEMU connects). */
  readonly redirPorts?: readonly number[];
  /**
   * USB/IP devices for the guest's `vhci` check: one virtio-serial port each, named `usbip.BUSID`, whose
   * chardev connects to 127.0.0.1:PORT (a USB/IP server, or a relay to one) when QEMU starts.
   */
  readonly usbip?: readonly { readonly busid: string; readonly port: number }[];
  /** The guest is killed after this long. */
  readonly timeoutMs: number;
  /** How long the guest's /init waits for each device to appear, in seconds (default 30). */
  readonly waitS?: number;
  /** More parameters for the checks, on the kernel command line as `usbvirt.<key>=<value>` (e.g. storage-read's `read-disks`). */
  readonly params?: Readonly<Record<string, string | number>>;
  /** More QEMU arguments (e.g. QEMU's own `-device usb-storage,bus=xhci.0,…`). */
  readonly extraArgs?: readonly string[];
  /** Opens an HMP monitor on a unix socket, for `GuestControl.hmp`. */
  readonly monitor?: boolean;
  /** Called for each console line (without its line ending), e.g. to type a key at `STEP keyboard-ready`. */
  readonly onLine?: (line: string, control: GuestControl) => void;
  readonly guest?: VmmGuest;
}

export interface GuestRun {
  /** Each STEP line by name (a repeated name keeps the last). */
  readonly steps: ReadonlyMap<string, StepResult>;
  /** The guest printed DONE (every check ran to its end). */
  readonly done: boolean;
  readonly timedOut: boolean;
  readonly exitCode: number | null;
  readonly console: string;
  readonly logPath: string;
  readonly elapsedMs: number;
  /** The QEMU command line, for messages. */
  readonly argv: readonly string[];
}

const STEP_LINE = /^STEP (\S+) (ok|fail)(?: (.*))?$/;

/** Parses one console line into a STEP, or null. */
export function parseStep(line: string): { name: string; result: StepResult } | null {
  const m = STEP_LINE.exec(line);
  if (m === null) return null;
  return { name: m[1]!, result: { ok: m[2] === "ok", detail: m[3] ?? "" } };
}

/** The QEMU arguments of a boot (exported so the README and the log show the same command line). */
export function qemuArgs(
  guest: VmmGuest,
  options: Pick<BootOptions, "checks" | "redirPorts" | "usbip" | "waitS" | "extraArgs" | "params">,
  monitorPath?: string,
): string[] {
  const usbip = options.usbip ?? [];
  for (const { busid } of usbip) {
    if (!/^\d{1,3}-\d{1,3}(\.\d{1,3}){0,4}$/.test(busid))
      throw new RangeError(`usbip: bad bus id ${JSON.stringify(busid)}`);
  }
  for (const port of [...(options.redirPorts ?? []), ...usbip.map((u) => u.port)]) {
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new RangeError(`redirPorts, usbip: bad port ${port}`);
  }
  for (const check of options.checks) {
    if (!/^[a-z-]+$/.test(check)) throw new RangeError(`checks: bad check name ${JSON.stringify(check)}`);
  }
  const params = Object.entries(options.params ?? {}).map(([key, value]) => {
    if (!/^[a-z][a-z-]*$/.test(key) || ["checks", "wait", "usbip"].includes(key))
      throw new RangeError(`params: bad key ${JSON.stringify(key)}`);
    if (!/^[\w.,:-]+$/.test(String(value)))
      throw new RangeError(`params: bad value ${JSON.stringify(value)} for ${key}`);
    return `usbvirt.${key}=${value}`;
  });
  const append = [
    "console=ttyS0",
    "panic=-1",
    "quiet",
    `usbvirt.checks=${options.checks.join(",")}`,
    `usbvirt.wait=${options.waitS ?? 30}`,
    ...params,
  ];
  if (usbip.length > 0) append.push(`usbvirt.usbip=${usbip.map((u) => u.busid).join(",")}`);
  const args = [
    ...["-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1"],
    ...["-nodefaults", "-nic", "none", "-display", "none", "-serial", "stdio", "-no-reboot"],
    ...["-kernel", guest.kernel, "-initrd", guest.initrd, "-append", append.join(" ")],
    ...["-device", "qemu-xhci,id=xhci"],
  ];
  (options.redirPorts ?? []).forEach((port, i) => {
    args.push("-chardev", `socket,id=r${i},host=127.0.0.1,port=${port}`);
    args.push("-device", `usb-redir,chardev=r${i},bus=xhci.0`);
  });
  if (usbip.length > 0) args.push("-device", "virtio-serial-pci,id=vser");
  usbip.forEach(({ busid, port }, i) => {
    args.push("-chardev", `socket,id=u${i},host=127.0.0.1,port=${port}`);
    args.push("-device", `virtserialport,bus=vser.0,chardev=u${i},name=usbip.${busid}`);
  });
  if (monitorPath !== undefined) args.push("-monitor", `unix:${monitorPath},server=on,wait=off`);
  args.push(...(options.extraArgs ?? []));
  return args;
}

/** A human-monitor connection: one command at a time, each answered by the next `(qemu) ` prompt. */
class Hmp {
  private socket: Socket | null = null;
  private buffer = "";
  private waiter: { resolve: (text: string) => void; reject: (e: Error) => void } | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  constructor(private readonly path: string) {}

  command(command: string): Promise<string> {
    if (/[\r\n]/.test(command)) return Promise.reject(new RangeError("hmp: one line per command"));
    const run = this.queue.then(async () => {
      await this.open();
      const answer = this.untilPrompt();
      this.socket!.write(`${command}\n`);
      return (await answer).replace(/\r/g, "");
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }

  private async open(): Promise<void> {
    if (this.socket !== null) return;
    const socket = connect(this.path);
    this.socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.buffer += chunk;
      this.answer();
    });
    socket.on("close", () => {
      this.waiter?.reject(new Error("hmp: the monitor closed"));
      this.waiter = null;
    });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", (e) => reject(new Error(`hmp: cannot connect to ${this.path}: ${e.message}`)));
    });
    await this.untilPrompt(); // the banner
  }

  private untilPrompt(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.answer(); // a prompt already buffered answers at once
    });
  }

  private answer(): void {
    const at = this.buffer.indexOf("(qemu) ");
    if (at < 0 || this.waiter === null) return;
    const text = this.buffer.slice(0, at);
    this.buffer = this.buffer.slice(at + "(qemu) ".length);
    const { resolve } = this.waiter;
    this.waiter = null;
    resolve(text);
  }
}

/**
 * Boots the guest, runs its checks and resolves when QEMU exits (the guest powers off after DONE) or was
 * killed at the timeout. Never rejects for what the guest reports: look at `steps`, `done`, `timedOut`.
 */
export async function bootGuest(options: BootOptions): Promise<GuestRun> {
  const guest = options.guest ?? requireGuest();
  if (!/^[\w.-]+$/.test(options.name))
    throw new RangeError(`name: use letters, digits, '.', '-' (${options.name})`);
  const work = mkdtempSync(join(tmpdir(), "usbvirt-vmm-"));
  const monitorPath = options.monitor === true ? join(work, "monitor.sock") : undefined;
  const argv = [guest.qemu, ...qemuArgs(guest, options, monitorPath)];
  const logDir = join(outputDir(), "vmm");
  mkdirSync(logDir, { recursive: true });
  const logPath = join(logDir, `${options.name}.log`);
  const hmp = monitorPath === undefined ? null : new Hmp(monitorPath);

  const steps = new Map<string, StepResult>();
  const lines: string[] = [];
  let done = false;
  let timedOut = false;
  const started = performance.now();
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  const control: GuestControl = {
    hmp: (command) =>
      hmp === null ? Promise.reject(new Error("hmp: boot with monitor: true")) : hmp.command(command),
    kill: () => child.kill("SIGKILL"),
    pid: child.pid,
  };

  let partial = "";
  const onConsole = (chunk: string) => {
    partial += chunk;
    let nl = partial.indexOf("\n");
    while (nl >= 0) {
      const line = partial.slice(0, nl).replace(/\r$/, "");
      partial = partial.slice(nl + 1);
      lines.push(line);
      const step = parseStep(line);
      if (step !== null) steps.set(step.name, step.result);
      if (line === "DONE") done = true;
      options.onLine?.(line, control);
      nl = partial.indexOf("\n");
    }
  };
  child.stdout!.setEncoding("utf8").on("data", onConsole);
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    for (const l of chunk.split("\n")) if (l !== "") lines.push(`[qemu stderr] ${l}`);
  });
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, options.timeoutMs);

  const exitCode = await new Promise<number | null>((resolve) => {
    child.on("error", (e) => {
      lines.push(`[harness] cannot start ${argv[0]}: ${e.message}`);
      resolve(null);
    });
    child.on("close", (code) => resolve(code));
  });
  clearTimeout(timer);
  hmp?.close();
  rmSync(work, { recursive: true, force: true });
  if (partial !== "") onConsole("\n");
  const elapsedMs = performance.now() - started;
  const header = [
    `# ${argv.map((a) => (/[\s"]/.test(a) ? JSON.stringify(a) : a)).join(" ")}`,
    `# exit ${exitCode}${timedOut ? ` (killed at the ${options.timeoutMs} ms timeout)` : ""}, ${Math.round(elapsedMs)} ms, DONE ${done ? "seen" : "not seen"}`,
  ];
  const text = lines.join("\n");
  writeFileSync(logPath, `${header.join("\n")}\n${text}\n`);
  return { steps, done, timedOut, exitCode, console: text, logPath, elapsedMs, argv };
}

/** One line per step and the verdict (and, short of DONE, the console's tail), for assertion messages. */
export function describeRun(run: GuestRun): string {
  const steps = [...run.steps].map(([name, r]) => `  ${name} ${r.ok ? "ok" : "FAIL"} ${r.detail}`);
  const end = run.done
    ? "DONE"
    : run.timedOut
      ? "killed at the timeout"
      : `QEMU exited ${run.exitCode} before DONE`;
  const tail = run.done
    ? []
    : run.console
        .split("\n")
        .filter((l) => !l.startsWith("LOG ") && !l.startsWith("STEP "))
        .slice(-10)
        .map((l) => `  | ${l}`);
  return [...steps, `  ${end} after ${Math.round(run.elapsedMs)} ms (console: ${run.logPath})`, ...tail].join(
    "\n",
  );
}
