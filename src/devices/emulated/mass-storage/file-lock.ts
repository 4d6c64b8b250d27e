/**
 * An exclusive lock on a storage file, so two devices never both serve (and both acknowledge writes to)
 * the same disk image — whether they run in two processes or in one: a lock file `<path>.lock` beside it
 * holding the owner's pid, kept open by its owner for as long as it holds the lock.
 *
 * Why a pid file and not flock(2): Node has no flock, and the npm wrappers are native addons
 * (fs-ext) that must compile on every install; usbvirt keeps `usb` its only native dependency.
 * mkdir/mtime locks (proper-lockfile) need a heartbeat and guess staleness from time. A pid file is
 * exact for a long-lived daemon: the lock is held while its process lives, and a lock whose process is
 * gone (killed, crashed) is stale and taken over.
 *
 * Inside one process the pid says nothing, so the owner keeps the lock file open: a lock naming this
 * process is held while a descriptor of this process (any thread's: /proc/self/fd, or /dev/fd) has that
 * file open, and stale once none has. A worker thread that is terminated cannot release its lock, but
 * Node closes its descriptors, so its successor takes the lock over; a second device on the same image
 * while the first is open is refused with the message a second process gets. Where this process's
 * descriptors cannot be listed, a lock naming it is refused (two writers would corrupt the image).
 *
 * Protocol: the lock file is written whole under a unique temporary name, then link(2)ed to
 * `<path>.lock` — link fails with EEXIST atomically, so no reader ever sees a half-written pid. A lock
 * file is read without following a symbolic link and only up to MAX_LOCK_FILE_BYTES; one that is a
 * link, larger, or holds no pid is refused, not guessed at. Known limits: pid reuse after a crash (a
 * stale lock whose pid now names an unrelated process is reported as held, with the pid to check); two
 * processes (or threads) taking over the same stale lock in the same instant; a thread of this process
 * reading the lock file at the instant another checks it makes the lock look held (refused, not shared).
 */
import { randomBytes } from "node:crypto";
import { type FileHandle, link, lstat, open, readdir, stat, unlink } from "node:fs/promises";
import { registerErrorClass, UsbvirtError } from "../../../util/errors.js";
import { openRegular } from "./open-regular.js";

export class StorageLockError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_STORAGE_LOCKED";
  constructor(message: string, options?: { cause?: unknown }) {
    super("ERR_USBVIRT_STORAGE_LOCKED", message, options);
  }
}
registerErrorClass(StorageLockError);

/** A lock file holds "<pid>\n" (at most 11 bytes); anything longer is not one this module wrote. */
const MAX_LOCK_FILE_BYTES = 32;

/** Where this process's open descriptors are listed (each entry resolves to the file it has open). */
const FD_DIR = process.platform === "linux" ? "/proc/self/fd" : "/dev/fd";

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

/** Whether a descriptor of this process has the file (dev, ino) open; null when they cannot be listed. */
async function openInThisProcess(dev: number, ino: number): Promise<boolean | null> {
  let names: string[];
  try {
    names = await readdir(FD_DIR);
  } catch {
    return null;
  }
  for (const name of names) {
    const s = await stat(`${FD_DIR}/${name}`).catch(() => null);
    if (s !== null && s.dev === dev && s.ino === ino) return true;
  }
  return false;
}

interface LockHolder {
  /** The pid the lock file names; null when it names none. */
  readonly pid: number | null;
  readonly dev: number;
  readonly ino: number;
}

/** Who holds the lock file, or undefined when it is gone; a file that is no lock file is refused. */
async function holderOf(path: string, lockPath: string): Promise<LockHolder | undefined> {
  const refuse = (what: string) =>
    new StorageLockError(
      `${path} is locked by ${lockPath}, which is ${what}, not a lock file usbvirt wrote; ` +
        `remove it if no usbvirt uses ${path}`,
    );
  let opened: Awaited<ReturnType<typeof openRegular>>;
  try {
    opened = await openRegular(lockPath, "read");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new StorageLockError(`cannot read lock file ${lockPath}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!opened.ok) throw refuse(opened.refusal);
  const { handle, stats } = opened;
  let text: string;
  try {
    if (stats.size > MAX_LOCK_FILE_BYTES) throw refuse(`${stats.size} bytes`);
    // Read at most one byte past the limit: a file that grew since fstat is still no lock file.
    const buf = Buffer.alloc(MAX_LOCK_FILE_BYTES + 1);
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_LOCK_FILE_BYTES) throw refuse(`more than ${MAX_LOCK_FILE_BYTES} bytes`);
    text = buf.toString("utf8", 0, bytesRead);
  } finally {
    await handle.close();
  }
  const m = /^(\d{1,10})\n?$/.exec(text);
  const pid = m === null ? 0 : Number(m[1]);
  return { pid: pid > 0 ? pid : null, dev: stats.dev, ino: stats.ino };
}

/** Whether the lock described by `holder` is held now (by another process, or a live owner in this one). */
async function isHeld(holder: LockHolder & { pid: number }): Promise<boolean> {
  if (holder.pid !== process.pid) return isAlive(holder.pid);
  return (await openInThisProcess(holder.dev, holder.ino)) ?? true;
}

/** Write `<pid>\n` into a new file at `temp` and keep it open (the open descriptor marks the lock held). */
async function writeLockFile(temp: string): Promise<FileHandle> {
  // "wx": O_EXCL, so nothing already at this name (a link included) is opened.
  const handle = await open(temp, "wx", 0o644);
  try {
    await handle.writeFile(`${process.pid}\n`);
    return handle;
  } catch (err) {
    await handle.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw err;
  }
}

/** Take the lock on `path` for this process; resolves to the release function. */
export async function lockStorageFile(path: string): Promise<() => Promise<void>> {
  const lockPath = lockPathOf(path);
  const temp = `${lockPath}.${process.pid}.${randomBytes(6).toString("hex")}`;
  // An I/O failure here (a missing directory, no permission) is not contention: it surfaces as it is,
  // as opening the file itself would fail.
  const handle = await writeLockFile(temp);
  let held = false;
  try {
    // Bounded: a stale lock is removed at most once before the second link attempt decides.
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await link(temp, lockPath);
        held = true;
        return releaser(lockPath, handle);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
          throw new StorageLockError(`cannot create lock file ${lockPath}: ${(err as Error).message}`, {
            cause: err,
          });
        }
      }
      const holder = await holderOf(path, lockPath);
      if (holder === undefined) continue; // released meanwhile
      if (holder.pid === null) {
        throw new StorageLockError(
          `${path} is locked by ${lockPath}, which names no process; remove it if no usbvirt uses ${path}`,
        );
      }
      if (await isHeld({ ...holder, pid: holder.pid })) {
        throw new StorageLockError(
          `${path} is in use by process ${holder.pid} (lock file ${lockPath}): another usbvirt serves this disk image; ` +
            `stop it first, or pick another --storage-file`,
        );
      }
      // Stale (its process gone, or its thread in this process ended without releasing): take it over.
      await unlink(lockPath).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    }
    throw new StorageLockError(
      `${path}: another process took the lock ${lockPath} while a stale one was removed`,
    );
  } finally {
    await unlink(temp).catch(() => undefined);
    if (!held) await handle.close().catch(() => undefined);
  }
}

/** The release function of a lock held through `handle`: removes the lock file if it is still this one. */
function releaser(lockPath: string, handle: FileHandle): () => Promise<void> {
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    try {
      const [mine, named] = await Promise.all([handle.stat(), lstat(lockPath).catch(() => null)]);
      if (named !== null && named.dev === mine.dev && named.ino === mine.ino)
        await unlink(lockPath).catch(() => undefined);
    } finally {
      await handle.close().catch(() => undefined);
    }
  };
}
