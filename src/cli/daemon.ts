/**
 * The pieces `usbvirt serve` and `usbvirt redirect` need to run as daemons (daemon-run.ts puts them together):
 * - the package version (`usbvirt --version`);
 * - systemd socket activation (sd_listen_fds(3)): when LISTEN_PID names this process and LISTEN_FDS
 *   says one socket was passed, the server listens on fd 3 instead of binding;
 * - the engine watch: counts backend losses and resolves when the engine dies for good (its
 *   Connection reaches Closed without anyone closing it, e.g. past maxRestarts), so the process can log
 *   it and exit non-zero for its supervisor to restart it;
 * - warnings about an existing storage file whose size differs from the size asked for.
 */

import { readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { DeviceSpec } from "../devices/spec.js";
import { type Connection, ConnectionState } from "../engine/connection.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

// ---------------------------------------------------------------- version

/** The version in usbvirt's package.json (found upward from this module: src/cli or dist/src/cli). */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  // Bounded: a path has finitely many parents; stop at the root.
  for (let i = 0; i < 8; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === "usbvirt" && typeof pkg.version === "string") return pkg.version;
    } catch {
      // no package.json here: look further up
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return "unknown";
}

// ---------------------------------------------------------------- socket activation

/** sd_listen_fds(3): the first passed descriptor. */
export const SD_LISTEN_FDS_START = 3;

export class SocketActivationError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_SOCKET_ACTIVATION";
  constructor(message: string) {
    super("ERR_USBVIRT_SOCKET_ACTIVATION", message);
  }
}
registerErrorClass(SocketActivationError);

/**
 * The listening socket systemd passed, or null when none was passed to this process. Like
 * sd_listen_fds(1) it removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from `env`, so children do
 * not inherit them. usbvirt listens on one socket: more than one is an error.
 */
export function socketActivationFd(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | null {
  const listenPid = env.LISTEN_PID;
  const listenFds = env.LISTEN_FDS;
  if (listenPid === undefined || listenFds === undefined) return null;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (!/^\d{1,10}$/.test(listenPid) || Number(listenPid) !== pid) return null; // meant for another process
  if (!/^\d{1,4}$/.test(listenFds)) {
    throw new SocketActivationError(`LISTEN_FDS must be a number of descriptors, got "${listenFds}"`);
  }
  const n = Number(listenFds);
  if (n === 0) return null;
  if (n !== 1) {
    throw new SocketActivationError(
      `systemd passed ${n} sockets (LISTEN_FDS=${n}); usbvirt listens on exactly one (one ListenStream= in the .socket unit)`,
    );
  }
  return SD_LISTEN_FDS_START;
}

// ---------------------------------------------------------------- engine watch

/**
 * Watches the server's engine Connection: counts backend losses (each restart after a lost or faulty
 * backend) and resolves `died` with a reason when the connection reaches Closed before `dispose()`.
 * Call `dispose()` before closing the server on purpose.
 */
export class EngineWatch {
  backendLosses = 0;
  lastLoss: string | null = null;
  readonly died: Promise<string>;
  private disposed = false;
  private readonly onLost = (reason: string): void => {
    this.backendLosses++;
    this.lastLoss = reason;
  };
  private onState: (s: ConnectionState) => void = () => {};

  constructor(private readonly connection: Connection) {
    this.died = new Promise<string>((resolve) => {
      this.onState = (s) => {
        if (s !== ConnectionState.Closed || this.disposed) return;
        const last = this.lastLoss !== null ? `; last loss: ${this.lastLoss}` : "";
        resolve(`the engine stopped for good after ${this.backendLosses} backend loss(es)${last}`);
      };
    });
    connection.on("backend-lost", this.onLost);
    connection.on("state", this.onState);
    if (connection.state === ConnectionState.Closed) this.onState(ConnectionState.Closed);
  }

  dispose(): void {
    this.disposed = true;
    this.connection.off("backend-lost", this.onLost);
    this.connection.off("state", this.onState);
  }
}

// ---------------------------------------------------------------- storage files

function mib(bytes: number): string {
  if (bytes > 0 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes > 0 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

/**
 * Warnings for each exported file-backed storage device whose existing file's size differs from the size
 * asked for (`explicit`: the size came from --storage-size / the config, not the default). A larger
 * file keeps its size (the device shows the whole file); a smaller one is grown — unless its size is
 * not whole 512-byte blocks, which the store refuses (FileStore.open), so no warning is needed here.
 */
export function storageFileWarnings(specs: readonly DeviceSpec[], explicit: boolean): string[] {
  const out: string[] = [];
  for (const spec of specs) {
    if (spec.kind !== "emulated" || spec.name !== "storage") continue;
    const options = (spec.options ?? {}) as { file?: unknown; sizeBytes?: unknown; readOnly?: unknown };
    if (typeof options.file !== "string" || typeof options.sizeBytes !== "number") continue;
    let size: number;
    try {
      size = statSync(options.file).size;
    } catch {
      continue; // missing: created at the size asked for
    }
    const asked = options.sizeBytes;
    const what = explicit
      ? `--storage-size ${mib(asked)}`
      : `the default size ${mib(asked)} (no --storage-size)`;
    if (size > asked) {
      out.push(
        `storage file ${options.file} is ${mib(size)}, larger than ${what}: the device shows the whole file (${mib(size)}); the file is not shrunk`,
      );
    } else if (size < asked && size % 512 === 0 && size > 0) {
      out.push(
        `storage file ${options.file} is ${mib(size)}, smaller than ${what}: growing it to ${mib(asked)}`,
      );
    }
  }
  return out;
}
