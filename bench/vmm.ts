/**
 * The `vmm` suite: the QEMU guest's sequential O_DIRECT read of `usbvirt redirect --device storage`,
 * against a naive Python usbredir server in the same boot (test/vmm/storage-read.ts). The measurement is
 * the vmm test itself: this suite runs test/vmm/storage-read.test.ts under vitest in a child process (the
 * harness is test code, run from its sources; USBVIRT_REQUIRE_TOOLS=1, so a guest that cannot boot or a
 * missing python3 fails the suite rather than skipping), with its output in a scratch folder, and takes the figures the test wrote
 * there (<output>/vmm/storage-read.json). It needs QEMU and the built guest (scripts/vmm/build-guest.sh).
 *
 * Under --quick it boots nothing: it merges the record the last test run left in the test output folder
 * ($USBVIRT_TEST_OUTPUT or test-output/; CI's `npm test` has just run the test there), saying when it was
 * measured, or none if there is none.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Result, SuiteOptions } from "./harness.js";

const REPO = join(import.meta.dirname, "../..");
const TEST = "test/vmm/storage-read.test.ts";

interface StorageReadRecord {
  readonly when: string;
  readonly rounds: number;
  readonly mib: number;
  readonly loadavg: { readonly before: readonly number[]; readonly after: readonly number[] };
  readonly reads: Readonly<Record<string, readonly { readonly round: number; readonly mibps: number }[]>>;
  readonly results: readonly Result[];
}

function readRecord(file: string): StorageReadRecord {
  const record = JSON.parse(readFileSync(file, "utf8")) as StorageReadRecord;
  if (!Array.isArray(record.results)) throw new Error(`${file}: no results`);
  return record;
}

function runTest(output: string): Promise<void> {
  const vitest = join(REPO, "node_modules/vitest/vitest.mjs");
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [vitest, "run", TEST], {
      cwd: REPO,
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...process.env, USBVIRT_REQUIRE_TOOLS: "1", USBVIRT_TEST_OUTPUT: output },
    });
    child.once("error", reject);
    child.once("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`${TEST} failed (exit ${code}): see its output above`)),
    );
  });
}

function print(record: StorageReadRecord, source: string): void {
  console.log(`\n## QEMU guest storage read (${source})`);
  console.log(
    `${record.rounds} rounds of ${record.mib} MiB, O_DIRECT, 64 KiB reads, one boot, the two disks alternating; ` +
      `load ${record.loadavg.before.join(" ")} → ${record.loadavg.after.join(" ")}`,
  );
  const rows = Object.entries(record.reads).map(([label, reads]) => ({
    server: label,
    "MiB/s by round": reads.map((r) => r.mibps.toFixed(1)).join(", "),
  }));
  console.table(rows);
}

export const vmmSuite = {
  name: "vmm",
  async run(opts: SuiteOptions): Promise<Result[]> {
    if (opts.quick) {
      const file = join(
        process.env.USBVIRT_TEST_OUTPUT ?? join(REPO, "test-output"),
        "vmm/storage-read.json",
      );
      if (!existsSync(file)) {
        console.log(`\n## QEMU guest storage read\nno record at ${file}: run npx vitest run ${TEST} first`);
        return [];
      }
      const record = readRecord(file);
      print(record, `merged from the test run of ${record.when}`);
      return [...record.results];
    }
    const output = mkdtempSync(join(tmpdir(), "usbvirt-bench-vmm-"));
    try {
      await runTest(output);
      const record = readRecord(join(output, "vmm/storage-read.json"));
      print(record, "measured now");
      return [...record.results];
    } finally {
      rmSync(output, { recursive: true, force: true });
    }
  },
};
