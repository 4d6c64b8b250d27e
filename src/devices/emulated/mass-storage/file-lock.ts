/**
 * An exclusive lock on a storage file, so two processes never both serve (and both acknowledge writes
 * to) the same disk image: a lock file `<path>.lock` beside it holding the owner's pid.
 *
 * Why a pid file and not flock(2): Node has no flock, and the npm wrappers are native addons
 * (fs-ext) that must compile on every install; usbvirt keeps `usb` its only native dependency.
 * mkdir/mtime locks (proper-lockfile) need a heartbeat and guess staleness from time. A pid file is
 * exact for a long-lived daemon: the lock is held while its process lives, and a lock whose process is
 * gone (killed, crashed) is stale and taken over.
 *
 * Protocol: the lock file is written whole under a unique temporary name, then link(2)ed to
 * `<path>.lock` — link fails with EEXIST atomically, so no reader ever sees a half-written pid. A lock
 * held by this same process is taken over: the engine is its one owner, and a backend that was cut off
 * (a terminated worker) cannot release its files before its successor re-opens them. A lock file
 * that holds no pid is refused, not guessed at. Known limits: pid reuse after a crash (a stale lock
 * whose pid now names an unrelated process is reported as held, with the pid to check), and two
 * processes taking over the same stale lock in the same instant.
 */
import { randomBytes } from "node:crypto";
import { link, readFile, unlink, writeFile } from "node:fs/promises";
import { registerErrorClass, UsbvirtError } from "../../../util/errors.js";

export class StorageLockError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_STORAGE_LOCKED";
  constructor(message: string, options?: { cause?: unknown }) {
    super("ERR_USBVIRT_STORAGE_LOCKED", message, options);
  }
}
registerErrorClass(StorageLockError);

export function lockPathOf(path: string): string {
  return `${path}.lock`;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The pid a lock file names, null if it holds none, undefined if the file is gone. */
async function holderOf(lockPath: string): Promise<number | null | undefined> {
  let text: string;
  try {
    text = await readFile(lockPath, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new StorageLockError(`cannot read lock file ${lockPath}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const m = /^(\d{1,10})\n?$/.exec(text);
  if (m === null) return null;
  const pid = Number(m[1]);
  return pid > 0 ? pid : null;
}

/** Take the lock on `path` for this process; resolves to the release function. */
export async function lockStorageFile(path: string): Promise<() => Promise<void>> {
  const lockPath = lockPathOf(path);
  const temp = `${lockPath}.${process.pid}.${randomBytes(6).toString("hex")}`;
  // An I/O failure here (a missing directory, no permission) is not contention: it surfaces as it is,
  // as opening the file itself would fail.
  await writeFile(temp, `${process.pid}\n`, { flag: "wx" });
  try {
    // Bounded: a stale lock is removed at most once before the second link attempt decides.
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await link(temp, lockPath);
        return () => releaseStorageLock(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
          throw new StorageLockError(`cannot create lock file ${lockPath}: ${(err as Error).message}`, {
            cause: err,
          });
        }
      }
      const holder = await holderOf(lockPath);
      if (holder === undefined) continue; // released meanwhile
      if (holder === null) {
        throw new StorageLockError(
          `${path} is locked by ${lockPath}, which names no process; remove it if no usbvirt uses ${path}`,
        );
      }
      if (holder !== process.pid && isAlive(holder)) {
        throw new StorageLockError(
          `${path} is in use by process ${holder} (lock file ${lockPath}): another usbvirt serves this disk image; ` +
            `stop it first, or pick another --storage-file`,
        );
      }
      // Stale (its process is gone) or this process's own: take it over.
      await unlink(lockPath).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    }
    throw new StorageLockError(
      `${path}: another process took the lock ${lockPath} while a stale one was removed`,
    );
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

/** Remove the lock on `path` if this process holds it. */
export async function releaseStorageLock(path: string): Promise<void> {
  const lockPath = lockPathOf(path);
  if ((await holderOf(lockPath).catch(() => null)) === process.pid) {
    await unlink(lockPath).catch(() => undefined);
  }
}
