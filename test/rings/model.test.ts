/**
 * npm run verify:model as a test: SPIN checks model/ring.pml (every property holds, every broken variant
 * fails). Skipped when spin or gcc is not installed (CI installs spin: .ci/run), and when
 * USBVIRT_SKIP_MODEL=1 (CI's second Node version: the model does not depend on Node).
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const has = (tool: string): boolean => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0;
const missing = ["spin", "gcc"].filter((t) => !has(t));
const skipped = process.env.USBVIRT_SKIP_MODEL === "1";
if (missing.length > 0) {
  console.warn(
    `test/rings/model.test.ts skipped: ${missing.join(" and ")} not installed (apt-get install spin gcc)`,
  );
} else if (skipped) console.warn("test/rings/model.test.ts skipped: USBVIRT_SKIP_MODEL=1");

describe.skipIf(missing.length > 0 || skipped)("SPIN model of the rings", () => {
  it("every property holds and every broken variant yields a counterexample", () => {
    const script = fileURLToPath(new URL("../../scripts/verify-model.sh", import.meta.url));
    const r = spawnSync("bash", [script], { encoding: "utf8", timeout: 290_000 });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain("every property holds and every broken variant fails");
  }, 300_000);
});
