/**
 * Child process for the replay tests, run under umockdev-run:
 *   node --import tsx test/host/children/replay.ts <scenario>
 * Prints one line `VERDICT <json>` and exits. Bounded: gives up after 20 s.
 */
import { exitWithVerdict } from "../../support/verdict.js";
import { runScenario } from "../scenarios.js";

const name = process.argv[2] ?? "";
const watchdog = setTimeout(() => {
  exitWithVerdict({ ok: false, error: "scenario timed out in the child" }, 2);
}, 20_000);

runScenario(name).then(
  (v) => {
    clearTimeout(watchdog);
    exitWithVerdict(v, 0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    const e = err as { code?: string; message?: string };
    exitWithVerdict({ ok: false, error: `${e.code ?? ""} ${e.message ?? String(err)}` }, 1);
  },
);
