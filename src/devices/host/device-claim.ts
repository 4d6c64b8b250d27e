/**
 * Who holds a host device, across connections, servers and processes: one
 * lock file per device enumeration (bus number and device address, the
 * kernel's name for it), created exclusively, holding the holder's pid, a
 * description of it and a token. A second opener — another connection or
 * port of this process, or another `serve`/`redirect` process — finds the
 * file and is refused with the holder's description, before it detaches a
 * kernel driver or claims anything. A lock whose pid no longer runs is stale
 * and taken over; one whose pid runs is honoured even when that pid is ours
 * (another connection in this process holds the device; a port worker that
 * died without releasing hands its lock back through the backend's fallback,
 * src/backend/held-record.ts).
 *
 * The directory is USBVIRT_HOST_LOCK_DIR, else usbvirt-host-devices-UID
 * under XDG_RUNTIME_DIR or the temporary directory, made 0700; it must be a
 * directory of this user (not a symlink). Files are opened with O_NOFOLLOW,
 * created 0600, and read with a size limit.
 *
 * Limits: a pid reused by an unrelated process keeps a stale lock until that
 * process ends (the message names the pid); two processes taking over one
 * stale lock at the same instant may both succeed (the kernel's claim then
 * refuses the second with EBUSY).
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { threadId } from "node:worker_threads";

/** The kernel's name for one enumeration of a device. */
export interface DeviceClaimKey {
  readonly busNumber: number;
  readonly deviceAddress: number;
}

/** A device this thread holds; release() is idempotent and removes only this holder's file. */
export interface DeviceClaim {
  readonly path: string;
  readonly token: string;
  release(): void;
}

export type ClaimResult =
  | { readonly ok: true; readonly claim: DeviceClaim }
  | { readonly ok: false; readonly holder: string }
  | { readonly ok: false; readonly error: string };

/** What a lock file holds. */
interface LockRecord {
  readonly pid: number;
  readonly holder: string;
  readonly token: string;
}

const MAX_LOCK_BYTES = 4096;

/** The lock directory (see the header). */
export function claimDirectory(): string {
  const explicit = process.env.USBVIRT_HOST_LOCK_DIR;
  if (explicit !== undefined && explicit !== "") return explicit;
  const base = process.env.XDG_RUNTIME_DIR || tmpdir();
  return join(base, `usbvirt-host-devices-${process.getuid?.() ?? "user"}`);
}

/** The lock file of one device enumeration. */
export function claimPath(key: DeviceClaimKey): string {
  return join(claimDirectory(), `usb-${key.busNumber}-${key.deviceAddress}.lock`);
}

/** This holder, for another opener's error: the process's command (`usbvirt serve`, a script), pid and thread. */
export function describeHolder(): string {
  // A worker's process.argv is its own ("[worker eval]"): the process's command line is in /proc.
  let argv: readonly string[] = process.argv;
  try {
    argv = readFileSync("/proc/self/cmdline", "utf8").split("\0").filter(Boolean);
  } catch {
    // Not Linux: this thread's argv.
  }
  const at = argv.findIndex((a, i) => i > 0 && /\.[cm]?[jt]s$/.test(a));
  const script = at < 0 ? basename(argv[0] ?? process.argv0) : basename(argv[at]!);
  const command =
    /^main\.[cm]?[jt]s$/.test(script) && argv[at + 1] !== undefined ? `usbvirt ${argv[at + 1]}` : script;
  return `${command.slice(0, 80)} (pid ${process.pid}${threadId === 0 ? "" : `, thread ${threadId}`})`;
}

/** Take the device for this thread, or say who holds it. */
export function claimHostDevice(key: DeviceClaimKey, holder: string = describeHolder()): ClaimResult {
  const dir = claimDirectory();
  const problem = ensureDirectory(dir);
  if (problem !== null) return { ok: false, error: problem };
  const path = claimPath(key);
  const token = randomBytes(12).toString("hex");
  const record: LockRecord = { pid: process.pid, holder, token };
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(
        path,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (err) {
      if (errnoOf(err) !== "EEXIST") return { ok: false, error: `lock file ${path}: ${String(err)}` };
      const held = readLock(path);
      if (held === "gone") continue; // released between our open and our read
      if (typeof held === "string") return { ok: false, error: held };
      if (held !== null && isAlive(held.pid)) return { ok: false, holder: held.holder };
      // Stale (its process ended) or unreadable garbage of a crash: take it over.
      try {
        unlinkSync(path);
      } catch (e) {
        if (errnoOf(e) !== "ENOENT") return { ok: false, error: `stale lock file ${path}: ${String(e)}` };
      }
      continue;
    }
    try {
      writeSync(fd, JSON.stringify(record));
    } finally {
      closeSync(fd);
    }
    let released = false;
    return {
      ok: true,
      claim: {
        path,
        token,
        release() {
          if (released) return;
          released = true;
          releaseClaim(path, token);
        },
      },
    };
  }
  return { ok: false, error: `lock file ${path} keeps changing; try again` };
}

/** Remove the lock file at `path` if it is still the one `token` wrote (a fallback's release, too). */
export function releaseClaim(path: string, token: string): void {
  const held = readLock(path);
  if (held === null || typeof held === "string" || held.token !== token) return;
  try {
    unlinkSync(path);
  } catch {
    // Gone already.
  }
}

function ensureDirectory(dir: string): string | null {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory()) return `host device lock directory ${dir} is not a directory`;
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid)
      return `host device lock directory ${dir} belongs to uid ${st.uid}, not to this user (${uid})`;
    return null;
  } catch (err) {
    return `host device lock directory ${dir}: ${String(err)}`;
  }
}

/**
 * Who holds the device now (a live holder's description), or null when no one does: a read-only look at
 * the lock, for a toolstack that says a device is in use before it tries to open it.
 */
export function claimHolder(key: DeviceClaimKey): string | null {
  const held = readLock(claimPath(key));
  if (held === null || held === "gone" || typeof held === "string") return null;
  return isAlive(held.pid) ? held.holder : null;
}

/** The lock at `path`: its record, null when it is not one (garbage), "gone", or an error message. */
function readLock(path: string): LockRecord | null | "gone" | string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = errnoOf(err);
    if (code === "ENOENT") return "gone";
    if (code === "ELOOP") return `lock file ${path} is a symbolic link: refused`;
    return `lock file ${path}: ${String(err)}`;
  }
  try {
    const buf = Buffer.alloc(MAX_LOCK_BYTES + 1);
    const n = readSync(fd, buf, 0, buf.length, 0);
    if (n > MAX_LOCK_BYTES) return null;
    const value: unknown = JSON.parse(buf.subarray(0, n).toString("utf8"));
    if (typeof value !== "object" || value === null) return null;
    const { pid, holder, token } = value as Record<string, unknown>;
    if (!Number.isSafeInteger(pid) || (pid as number) <= 0) return null;
    if (typeof holder !== "string" || typeof token !== "string") return null;
    return { pid: pid as number, holder: holder.slice(0, 200), token };
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoOf(err) === "EPERM"; // it runs, as another user
  }
}

function errnoOf(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err ? String(err.code) : undefined;
}
