/**
 * A storage file belongs to one process: a second `usbvirt serve` on the same file (a real second
 * process) fails with a clear error naming the holder; a stale lock (its process gone) is taken over;
 * the lock goes away with its server. An existing file of another size than --storage-size is
 * warned about; a file that is not whole 512-byte blocks is refused, not grown.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { lockStorageFile, StorageLockError } from "../../src/devices/emulated/mass-storage/file-lock.js";
import { FileStore } from "../../src/devices/emulated/mass-storage/store.js";
import { capture, serveInProcess, spawnChild } from "../cli/helpers.js";

async function tempFile(name: string): Promise<string> {
  return join(await mkdtemp(join(tmpdir(), "usbvirt-storage-")), name);
}

/** A pid that named a process which has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], {
    encoding: "utf8",
  });
  return Number(r.stdout);
}

describe("storage file lock", () => {
  it("a second serve process on the same storage file fails with a clear error; the first keeps it", async () => {
    const file = await tempFile("disk.img");
    const first = spawnChild([
      "serve",
      "--port",
      "0",
      "--device",
      "storage",
      "--storage-file",
      file,
      "--storage-size",
      "1M",
    ]);
    try {
      await first.waitFor(/serving 1 device/, "out");
      expect((await readFile(`${file}.lock`, "utf8")).trim()).toBe(String(first.child.pid));
      // This test's process is the second one.
      const c = capture();
      expect(
        await run(
          ["serve", "--port", "0", "--device", "storage", "--storage-file", file, "--storage-size", "1M"],
          c.io,
        ),
      ).toBe(1);
      expect(c.err).toContain(`${file} is in use by process ${first.child.pid} (lock file ${file}.lock)`);
      expect((await readFile(`${file}.lock`, "utf8")).trim()).toBe(String(first.child.pid));
    } finally {
      first.child.kill("SIGINT");
    }
    expect(await first.exited).toBe(0);
    expect(existsSync(`${file}.lock`)).toBe(false);
    // Free again: this process can serve it now.
    const s = await serveInProcess(["--device", "storage", "--storage-file", file, "--storage-size", "1M"]);
    expect(await s.stop()).toBe(0);
  }, 30_000);

  it("a stale lock (its process gone) is taken over; a lock naming no process is refused", async () => {
    const file = await tempFile("disk.img");
    await writeFile(`${file}.lock`, `${deadPid()}\n`);
    const release = await lockStorageFile(file);
    expect((await readFile(`${file}.lock`, "utf8")).trim()).toBe(String(process.pid));
    await release();
    expect(existsSync(`${file}.lock`)).toBe(false);
    await writeFile(`${file}.lock`, "garbage");
    await expect(FileStore.open(file, { sizeBytes: 4096 })).rejects.toThrow(/names no process/);
    const err = await lockStorageFile(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageLockError);
    expect((err as StorageLockError).code).toBe("ERR_USBVIRT_STORAGE_LOCKED");
  });

  it("a read-only open takes no lock; closing a read-write store releases it", async () => {
    const file = await tempFile("disk.img");
    const rw = await FileStore.open(file, { sizeBytes: 4096 });
    expect(existsSync(`${file}.lock`)).toBe(true);
    const ro = await FileStore.open(file, { readOnly: true });
    await ro.close();
    expect(existsSync(`${file}.lock`)).toBe(true);
    await rw.close();
    expect(existsSync(`${file}.lock`)).toBe(false);
  });
});

describe("storage file size", () => {
  it("a 3-byte file is refused, not grown to 64 MiB", async () => {
    const file = await tempFile("tiny.img");
    await writeFile(file, "abc");
    const c = capture();
    expect(await run(["serve", "--port", "0", "--device", "storage", "--storage-file", file], c.io)).toBe(1);
    expect(c.err).toContain(`${file} is 3 bytes, not a whole number of 512-byte blocks, so not a disk image`);
    expect((await stat(file)).size).toBe(3);
    expect(existsSync(`${file}.lock`)).toBe(false);
  });

  it("a larger existing file keeps its size, with a warning naming both sizes", async () => {
    const file = await tempFile("big.img");
    await writeFile(file, Buffer.alloc(2 * 1024 * 1024));
    const s = await serveInProcess(["--device", "storage", "--storage-file", file, "--storage-size", "1M"]);
    expect(await s.stop()).toBe(0);
    expect(s.c.logger.matching("warn: storage file")).toEqual([
      `warn: storage file ${file} is 2 MiB, larger than --storage-size 1 MiB: the device shows the whole file (2 MiB); the file is not shrunk`,
    ]);
    expect((await stat(file)).size).toBe(2 * 1024 * 1024);
  });

  it("a smaller existing image is grown, with a warning; the default size is named as such", async () => {
    const file = await tempFile("small.img");
    await writeFile(file, Buffer.alloc(512 * 1024));
    const s = await serveInProcess(["--device", "storage", "--storage-file", file, "--storage-size", "1M"]);
    expect(await s.stop()).toBe(0);
    expect(s.c.logger.matching("warn: storage file")).toEqual([
      `warn: storage file ${file} is 512 KiB, smaller than --storage-size 1 MiB: growing it to 1 MiB`,
    ]);
    expect((await stat(file)).size).toBe(1024 * 1024);
    const d = await serveInProcess(["--device", "storage", "--storage-file", file]);
    expect(await d.stop()).toBe(0);
    expect(d.c.logger.matching("warn: storage file")).toEqual([
      `warn: storage file ${file} is 1 MiB, smaller than the default size 64 MiB (no --storage-size): growing it to 64 MiB`,
    ]);
  });

  it("a file of the size asked for, or a new one, gives no warning", async () => {
    const file = await tempFile("new.img");
    const s = await serveInProcess(["--device", "storage", "--storage-file", file, "--storage-size", "1M"]);
    expect(await s.stop()).toBe(0);
    const again = await serveInProcess([
      "--device",
      "storage",
      "--storage-file",
      file,
      "--storage-size",
      "1M",
    ]);
    expect(await again.stop()).toBe(0);
    expect([...s.c.logger.matching("storage file"), ...again.c.logger.matching("storage file")]).toEqual([]);
  });
});
