/**
 * npm run verify:model as a test: SPIN checks model/ring.pml (every property holds, every broken variant
 * fails). Skipped when spin or gcc is not installed (a failure under USBVIRT_REQUIRE_TOOLS=1, which
 * .ci/run sets after installing spin), and when USBVIRT_SKIP_MODEL=1 (CI's second Node version: the model
 * does not depend on Node).
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { allOf, command, need, skipWithout } from "../support/tools.js";

const spin = allOf(command(["spin"], "apt-get install spin"), command(["gcc"], "apt-get install gcc"));
const skipped = process.env.USBVIRT_SKIP_MODEL === "1";
if (skipped) console.warn("test/rings/model.test.ts skipped: USBVIRT_SKIP_MODEL=1");

describe.skipIf(skipped || skipWithout("the SPIN model of the rings", spin))(
  "SPIN model of the rings",
  () => {
    it("every property holds and every broken variant yields a counterexample", () => {
      need(spin);
      const script = fileURLToPath(new URL("../../scripts/verify-model.sh", import.meta.url));
      const r = spawnSync("bash", [script], { encoding: "utf8", timeout: 290_000 });
      expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toContain("every property holds and every broken variant fails");
    }, 300_000);
  },
);
