/**
 * The QEMU guest reads `usbvirt redirect --device storage` and a naive Python usbredir server in one boot
 * (storage-read.ts): both disks take the guest's pattern, serve every timed O_DIRECT read to its end and
 * return the pattern intact. Speed is not asserted here: the figures go to
 * <test output>/vmm/storage-read.json, which the bench's `vmm` suite reads into the record
 * (bench/vmm.ts; `npm run bench -- --only vmm` runs this file for it). $USBVIRT_VMM_READ_ROUNDS (1..50,
 * default 5) and $USBVIRT_VMM_READ_MIB (1..64, default 32) size the run. Skips where QEMU, the guest image
 * or python3 is missing, unless USBVIRT_REQUIRE_TOOLS=1 (CI).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { outputDir } from "../support/chromium.js";
import { allOf, command, need, skipWithout } from "../support/tools.js";
import { describeRun, vmmGuest } from "./qemu-guest.js";
import { LABELS, median, recordOf, runStorageRead } from "./storage-read.js";

const tools = allOf(vmmGuest(), command(["python3"], "apt-get install python3"));

function sizeFromEnv(name: string, fallback: number, max: number): number {
  const text = process.env[name];
  if (text === undefined || text === "") return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new RangeError(`${name}: 1..${max}, not ${text}`);
  return n;
}

describe.skipIf(skipWithout("the QEMU storage read test", tools))("the QEMU guest's storage read", () => {
  it("reads usbvirt's disk and a naive Python usbredir server's, alternately, and gets its data back", async () => {
    const rounds = sizeFromEnv("USBVIRT_VMM_READ_ROUNDS", 5, 50);
    const mib = sizeFromEnv("USBVIRT_VMM_READ_MIB", 32, 64);
    const r = await runStorageRead({
      name: "storage-read",
      guest: need(tools)[0],
      rounds,
      mib,
      timeoutMs: 400_000,
    });
    const why = `${describeRun(r.run)}\nusbvirt redirect stderr:\n${r.logs.usbvirt}\nPython peer stderr:\n${r.logs.pypeer}`;
    expect(r.run.done, why).toBe(true);
    expect(r.run.steps.get("read-written"), why).toMatchObject({ ok: true });
    for (const label of LABELS) {
      expect(
        r.reads[label].map((f) => f.round),
        why,
      ).toEqual(Array.from({ length: rounds }, (_, i) => i + 1));
      for (const f of r.reads[label]) expect(f.mibps, why).toBeGreaterThan(0);
      expect(r.verified[label], why).toBe(true);
    }
    expect(r.run.steps.get("storage-read"), why).toMatchObject({ ok: true });

    const results = recordOf(r, mib);
    const record = {
      when: new Date().toISOString(),
      node: process.version,
      cpu: os.cpus()[0]?.model ?? "unknown",
      cores: os.availableParallelism(),
      rounds,
      mib,
      loadavg: r.loadavg,
      reads: r.reads,
      results,
    };
    const dir = join(outputDir(), "vmm");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "storage-read.json"), `${JSON.stringify(record, null, 2)}\n`);
    const fmt = (xs: readonly number[]) => xs.map((x) => x.toFixed(1)).join(", ");
    const ours = r.reads.usbvirt.map((f) => f.mibps);
    const theirs = r.reads.pypeer.map((f) => f.mibps);
    console.log(
      `storage read, ${mib} MiB O_DIRECT in 64 KiB reads, MiB/s: usbvirt ${fmt(ours)}; Python peer ${fmt(theirs)}; ` +
        `median ratio ${(median(ours) / median(theirs)).toFixed(2)} (load ${r.loadavg.before.join(" ")} → ${r.loadavg.after.join(" ")})`,
    );
  }, 420_000);
});
