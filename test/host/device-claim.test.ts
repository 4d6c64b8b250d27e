/**
 * The host device lock (src/devices/host/device-claim.ts): one holder per device enumeration across
 * connections and processes, stale locks of ended processes taken over, planted symlinks refused.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { claimHostDevice, claimPath } from "../../src/devices/host/device-claim.js";
import { ROOT } from "./run-child.js";

const key = { busNumber: 3, deviceAddress: 17 };
let dir = "";
let saved: string | undefined;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "usbvirt-claim-"));
  saved = process.env.USBVIRT_HOST_LOCK_DIR;
  process.env.USBVIRT_HOST_LOCK_DIR = dir;
});
afterEach(() => {
  if (saved === undefined) delete process.env.USBVIRT_HOST_LOCK_DIR;
  else process.env.USBVIRT_HOST_LOCK_DIR = saved;
  rmSync(dir, { recursive: true, force: true });
});

describe("host device lock", () => {
  it("gives a device to one holder in this process, names it to the next, and hands it over on release", () => {
    const first = claimHostDevice(key, "connection A");
    if (!first.ok) throw new Error(JSON.stringify(first));
    expect(claimHostDevice(key, "connection B")).toEqual({ ok: false, holder: "connection A" });
    expect(claimHostDevice({ ...key, deviceAddress: 18 }, "connection B").ok).toBe(true); // another device
    first.claim.release();
    first.claim.release(); // idempotent
    expect(claimHostDevice(key, "connection B").ok).toBe(true);
  });

  it("refuses while another process holds it, and takes the lock over once that process has ended", async () => {
    const module = join(ROOT, "src/devices/host/device-claim.ts");
    const script = `
      const { claimHostDevice } = await import(${JSON.stringify(module)});
      const r = claimHostDevice(${JSON.stringify(key)}, "the other process");
      console.log(r.ok ? "HELD" : "REFUSED " + JSON.stringify(r));
      setInterval(() => {}, 1000);
    `;
    const other = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      env: { ...process.env, USBVIRT_HOST_LOCK_DIR: dir },
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      const said = await new Promise<string>((resolve, reject) => {
        let out = "";
        other.stdout.on("data", (b: Buffer) => {
          out += b.toString();
          if (out.includes("\n")) resolve(out.trim());
        });
        other.once("exit", (code) => reject(new Error(`other process exited ${code}: ${out}`)));
      });
      expect(said).toBe("HELD");
      expect(claimHostDevice(key, "this process")).toEqual({ ok: false, holder: "the other process" });
    } finally {
      other.kill("SIGKILL");
    }
    await new Promise((resolve) => other.once("close", resolve));
    // Its lock file is still there, and its pid no longer runs: stale, taken over.
    expect(JSON.parse(readFileSync(claimPath(key), "utf8")).pid).toBe(other.pid);
    const taken = claimHostDevice(key, "this process");
    expect(taken.ok).toBe(true);
    expect(JSON.parse(readFileSync(claimPath(key), "utf8")).holder).toBe("this process");
  });

  it("takes over a lock of an ended pid, or garbage a crash left", () => {
    const ended = spawnSync(process.execPath, ["-e", ""]).pid;
    writeFileSync(claimPath(key), JSON.stringify({ pid: ended, holder: "gone", token: "t" }));
    expect(claimHostDevice(key, "me").ok).toBe(true);
    writeFileSync(claimPath({ ...key, deviceAddress: 5 }), "\u0000garbage");
    expect(claimHostDevice({ ...key, deviceAddress: 5 }, "me").ok).toBe(true);
  });

  it("never follows a symbolic link planted where the lock goes", () => {
    const target = join(dir, "victim");
    writeFileSync(target, "precious");
    symlinkSync(target, claimPath(key));
    const r = claimHostDevice(key, "me");
    expect(r.ok).toBe(false);
    expect(JSON.stringify(r)).toMatch(/symbolic link: refused/);
    expect(readFileSync(target, "utf8")).toBe("precious");
  });
});
