/**
 * Opening a disk image or its lock file as the file named, and only a regular file: a symbolic link
 * planted at the name is not followed (O_NOFOLLOW; where the platform has no O_NOFOLLOW, lstat after the
 * open must name the same file), a FIFO or device there is refused without blocking (O_NONBLOCK, then
 * fstat), and a file this creates is readable and writable by its owner only (0600).
 */
import { constants, type Stats } from "node:fs";
import { type FileHandle, lstat, open } from "node:fs/promises";

export type OpenMode = "read" | "read-write-create";

/** Why a name was refused, as the rest of a sentence "<path> is …". */
export type Refusal = "a symbolic link" | "not a regular file (a directory, device or FIFO)";

export type Opened =
  | { readonly ok: true; readonly handle: FileHandle; readonly stats: Stats }
  | { readonly ok: false; readonly refusal: Refusal };

const NOFOLLOW = constants.O_NOFOLLOW ?? 0;
const NONBLOCK = constants.O_NONBLOCK ?? 0;

async function isSymlink(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => null))?.isSymbolicLink() ?? false;
}

/**
 * Open `path` for reading, or for reading and writing (created 0600 when missing). Resolves to the handle
 * and its stats, or to why the name was refused; other failures (ENOENT, EACCES) reject as they are.
 */
export async function openRegular(path: string, mode: OpenMode): Promise<Opened> {
  const access = mode === "read" ? constants.O_RDONLY : constants.O_RDWR | constants.O_CREAT;
  // Without O_NOFOLLOW, a dangling link must not be created through: look first, and check again after.
  if (NOFOLLOW === 0 && (await isSymlink(path))) return { ok: false, refusal: "a symbolic link" };
  let handle: FileHandle;
  try {
    handle = await open(path, access | NOFOLLOW | NONBLOCK, 0o600);
  } catch (err) {
    // ELOOP is also a loop of links in the directories above: only a link at the name itself is ours to name.
    if ((err as NodeJS.ErrnoException).code === "ELOOP" && (await isSymlink(path)))
      return { ok: false, refusal: "a symbolic link" };
    throw err;
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) {
      await handle.close();
      return { ok: false, refusal: "not a regular file (a directory, device or FIFO)" };
    }
    if (NOFOLLOW === 0) {
      const named = await lstat(path);
      if (named.isSymbolicLink() || named.dev !== stats.dev || named.ino !== stats.ino) {
        await handle.close();
        return { ok: false, refusal: "a symbolic link" };
      }
    }
    return { ok: true, handle, stats };
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}
