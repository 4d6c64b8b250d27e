/**
 * A storage file belongs to one process and, inside it, to one device: a second `usbvirt serve` on the
 * same file (a real second process), or a second device of the same process, fails with a clear error
 * naming the holder; a stale lock (its process gone, or the thread that held it terminated) is taken over;
 * the lock goes away with its server. Neither the image nor its lock file is opened through a symbolic
 * link planted at its name; a new image is created 0600. An existing file of another size than --storage-size is
 * warned about; a file that is not whole 512-byte blocks is refused, not grown.
 */
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { lockStorageFile, StorageLockError } from "../../src/devices/emulated/mass-storage/file-lock.js";
import { FileStore } from "../../src/devices/emulated/mass-storage/store.js";
import { InvalidOptionError } from "../../src/util/errors.js";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";
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

describe("storage file lock within one process", () => {
  const inUse = (file: string, pid: number) =>
    `${file} is in use by process ${pid} (lock file ${file}.lock): another usbvirt serves this disk image; ` +
    "stop it first, or pick another --storage-file";

  it("a second read-write store on the same image is refused with the message a second process gets", async () => {
    const file = await tempFile("disk.img");
    const first = await FileStore.open(file, { sizeBytes: 4096 });
    const err = await FileStore.open(file, { sizeBytes: 4096 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageLockError);
    expect((err as Error).message).toBe(inUse(file, process.pid));
    // The refusal left the first store's lock alone; once it is closed the image is free again.
    expect((await readFile(`${file}.lock`, "utf8")).trim()).toBe(String(process.pid));
    await first.close();
    const again = await FileStore.open(file, { sizeBytes: 4096 });
    await again.close();
    expect(existsSync(`${file}.lock`)).toBe(false);
  });

  it("serve with two storage devices on one --storage-file fails, naming the image", async () => {
    const file = await tempFile("disk.img");
    // Should it start, it is stopped at once: the test then fails on the exit status, not on a timeout.
    let stop!: (signal: string) => void;
    const stopped = new Promise<string>((r) => {
      stop = r;
    });
    const c = capture({ stopSignal: () => stopped, onListening: () => stop("SIGINT") });
    const code = await run(
      [
        "serve",
        "--port",
        "0",
        "--device",
        "storage",
        "--device",
        "storage",
        "--storage-file",
        file,
        "--storage-size",
        "1M",
      ],
      c.io,
    );
    expect(code).toBe(1);
    expect(c.err).toContain(inUse(file, process.pid));
    expect(existsSync(`${file}.lock`)).toBe(false);
  });

  it("a store held on another thread is refused; once that thread is terminated (it cannot release), the lock is taken over", async () => {
    const file = await tempFile("disk.img");
    const worker = startWorker(siblingModule(import.meta.url, "./storage-holder-worker"), {
      workerData: file,
    });
    const [said] = await once(worker, "message");
    expect(said).toBe("open");
    const err = await FileStore.open(file, { sizeBytes: 4096 }).catch((e: unknown) => e);
    expect((err as Error).message).toBe(inUse(file, process.pid));
    await worker.terminate();
    const store = await FileStore.open(file, { sizeBytes: 4096 });
    await store.close();
    expect(existsSync(`${file}.lock`)).toBe(false);
  });
});

describe("storage file: symbolic links and modes", () => {
  it("a symbolic link planted where the image is named is refused, read-write or read-only; the file it points to is untouched", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-storage-"));
    const victim = join(dir, "victim");
    await writeFile(victim, "secret, 20 bytes ok\n");
    const image = join(dir, "disk.img");
    await symlink(victim, image);
    for (const readOnly of [false, true]) {
      const err = await FileStore.open(image, { readOnly, sizeBytes: 4096 }).catch((e: unknown) => e);
      expect(err, `readOnly ${readOnly}`).toBeInstanceOf(InvalidOptionError);
      expect((err as Error).message).toBe(
        `${image} is a symbolic link, not a disk image: give the file itself (refusing to follow it)`,
      );
    }
    expect(await readFile(victim, "utf8")).toBe("secret, 20 bytes ok\n");
    expect(existsSync(`${image}.lock`)).toBe(false);
    const folder = join(dir, "folder.img");
    await mkdir(folder);
    await expect(FileStore.open(folder, { readOnly: true })).rejects.toThrow(
      `${folder} is not a regular file (a directory, device or FIFO), so not a disk image`,
    );
  });

  it("a new image is created readable and writable by its owner only (0600)", async () => {
    const file = await tempFile("new.img");
    const store = await FileStore.open(file, { sizeBytes: 4096 });
    await store.close();
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });

  it("a lock file that is a symbolic link, or longer than a pid, is refused without being followed or read whole", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-storage-"));
    const file = join(dir, "disk.img");
    const victim = join(dir, "victim");
    await writeFile(victim, `${process.pid}\n`);
    await symlink(victim, `${file}.lock`);
    const linked = await FileStore.open(file, { sizeBytes: 4096 }).catch((e: unknown) => e);
    expect(linked).toBeInstanceOf(StorageLockError);
    expect((linked as Error).message).toBe(
      `${file} is locked by ${file}.lock, which is a symbolic link, not a lock file usbvirt wrote; ` +
        `remove it if no usbvirt uses ${file}`,
    );
    expect(existsSync(victim)).toBe(true);
    await unlink(`${file}.lock`);
    await writeFile(`${file}.lock`, "1".repeat(1 << 20));
    const long = await FileStore.open(file, { sizeBytes: 4096 }).catch((e: unknown) => e);
    expect(long).toBeInstanceOf(StorageLockError);
    expect((long as Error).message).toBe(
      `${file} is locked by ${file}.lock, which is 1048576 bytes, not a lock file usbvirt wrote; ` +
        `remove it if no usbvirt uses ${file}`,
    );
    await unlink(`${file}.lock`);
    await mkdir(`${file}.lock`);
    await expect(FileStore.open(file, { sizeBytes: 4096 })).rejects.toThrow(
      `${file} is locked by ${file}.lock, which is not a regular file (a directory, device or FIFO), not a lock file usbvirt wrote`,
    );
    expect(existsSync(file)).toBe(false); // refused before the image was opened
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
