/**
 * Block stores behind the emulated mass-storage device: memory (an ArrayBuffer or SharedArrayBuffer) or
 * a file (positioned async I/O through a FileHandle, so the port worker's event loop never blocks). Data
 * moves straight between the guest's buffer view and the store: `read` fills the view it is given,
 * `write` takes bytes from the view it is given. Offsets are in bytes and always inside the store (the
 * SCSI layer range-checks LBAs before calling).
 */
import type { FileHandle } from "node:fs/promises";
import { InvalidOptionError } from "../../../util/errors.js";
import { lockStorageFile } from "./file-lock.js";
import { openRegular } from "./open-regular.js";

export const BLOCK_SIZE = 512;
export const DEFAULT_STORE_SIZE = 64 * 1024 * 1024;
/** Largest memory store: one ArrayBuffer. */
export const MAX_MEMORY_STORE_SIZE = 2 ** 31;

export interface BlockStore {
  readonly blockSize: number;
  readonly blockCount: number;
  readonly readOnly: boolean;
  /** Fill `into` from byte `offset`. */
  read(offset: number, into: Uint8Array): void | Promise<void>;
  /** Store `from` at byte `offset`. */
  write(offset: number, from: Uint8Array): void | Promise<void>;
  /** SYNCHRONIZE CACHE: make written data durable. */
  flush(): void | Promise<void>;
  close(): void | Promise<void>;
}

function checkSize(what: string, size: number, max: number): void {
  if (!Number.isSafeInteger(size) || size < BLOCK_SIZE || size % BLOCK_SIZE !== 0 || size > max)
    throw new InvalidOptionError(
      `${what} must be a positive multiple of ${BLOCK_SIZE} up to ${max}, got ${size}`,
    );
}

export class MemoryStore implements BlockStore {
  readonly blockSize = BLOCK_SIZE;
  readonly blockCount: number;
  readonly bytes: Uint8Array;

  /** A zero-filled store of `sizeBytes`, or one over existing `bytes` (shared, not copied). */
  constructor(
    options: { sizeBytes?: number; bytes?: Uint8Array; shared?: boolean; readOnly?: boolean } = {},
  ) {
    if (options.bytes !== undefined) {
      checkSize("memory store bytes.length", options.bytes.length, MAX_MEMORY_STORE_SIZE);
      this.bytes = options.bytes;
    } else {
      const size = options.sizeBytes ?? DEFAULT_STORE_SIZE;
      checkSize("options.sizeBytes", size, MAX_MEMORY_STORE_SIZE);
      this.bytes = new Uint8Array(
        options.shared === false ? new ArrayBuffer(size) : new SharedArrayBuffer(size),
      );
    }
    this.blockCount = this.bytes.length / BLOCK_SIZE;
    this.readOnly = options.readOnly ?? false;
  }

  readonly readOnly: boolean;

  read(offset: number, into: Uint8Array): void {
    into.set(this.bytes.subarray(offset, offset + into.length));
  }

  write(offset: number, from: Uint8Array): void {
    this.bytes.set(from, offset);
  }

  flush(): void {}
  close(): void {}
}

/** Reads and writes go through one FileHandle with explicit positions; a short read means the file shrank. */
export class FileStore implements BlockStore {
  readonly blockSize = BLOCK_SIZE;

  private constructor(
    private readonly handle: FileHandle,
    readonly blockCount: number,
    readonly readOnly: boolean,
    private readonly unlock: (() => Promise<void>) | null,
  ) {}

  /**
   * Open `path`. Read-write opens take the file's lock first (file-lock.ts: a second device on the same
   * image, in this process or another, gets a StorageLockError), create the file (0600) when missing and
   * grow it to `sizeBytes` when it is smaller — except a file whose size is not a whole number of blocks,
   * which is no disk image this device wrote and is refused rather than grown. A symbolic link at `path`
   * is refused, not followed (open-regular.ts), as is anything but a regular file. The block count is the
   * file size rounded down to whole blocks.
   */
  static async open(
    path: string,
    options: { readOnly?: boolean; sizeBytes?: number } = {},
  ): Promise<FileStore> {
    const readOnly = options.readOnly ?? false;
    if (options.sizeBytes !== undefined)
      checkSize("options.sizeBytes", options.sizeBytes, Number.MAX_SAFE_INTEGER);
    const unlock = readOnly ? null : await lockStorageFile(path);
    let handle: FileHandle | null = null;
    try {
      const opened = await openRegular(path, readOnly ? "read" : "read-write-create");
      if (!opened.ok) {
        throw new InvalidOptionError(
          opened.refusal === "a symbolic link"
            ? `${path} is a symbolic link, not a disk image: give the file itself (refusing to follow it)`
            : `${path} is ${opened.refusal}, so not a disk image`,
        );
      }
      handle = opened.handle;
      let size = opened.stats.size;
      if (!readOnly && options.sizeBytes !== undefined && size < options.sizeBytes) {
        if (size % BLOCK_SIZE !== 0) {
          throw new InvalidOptionError(
            `${path} is ${size} bytes, not a whole number of ${BLOCK_SIZE}-byte blocks, so not a disk image: ` +
              `refusing to grow it to ${options.sizeBytes} bytes (remove it or pick another file)`,
          );
        }
        await handle.truncate(options.sizeBytes);
        size = options.sizeBytes;
      }
      const blocks = Math.floor(size / BLOCK_SIZE);
      if (blocks === 0) throw new InvalidOptionError(`${path}: smaller than one ${BLOCK_SIZE}-byte block`);
      return new FileStore(handle, blocks, readOnly, unlock);
    } catch (err) {
      await handle?.close();
      await unlock?.();
      throw err;
    }
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    let done = 0;
    // Bounded: every pass reads at least one byte or fails.
    while (done < into.length) {
      const { bytesRead } = await this.handle.read(into, done, into.length - done, offset + done);
      if (bytesRead === 0) throw new Error(`short read at ${offset + done}`);
      done += bytesRead;
    }
  }

  async write(offset: number, from: Uint8Array): Promise<void> {
    let done = 0;
    while (done < from.length) {
      const { bytesWritten } = await this.handle.write(from, done, from.length - done, offset + done);
      if (bytesWritten === 0) throw new Error(`short write at ${offset + done}`);
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    if (!this.readOnly) await this.handle.datasync();
  }

  async close(): Promise<void> {
    try {
      await this.handle.close();
    } finally {
      await this.unlock?.();
    }
  }
}
