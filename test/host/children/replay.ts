/**
 * Child process for the replay tests, run under umockdev-run:
 *   node --import tsx test/host/children/replay.ts <scenario>
 * Prints one line `VERDICT <json>` and exits. Bounded: gives up after 20 s.
 */
import { runScenario } from "../scenarios.js";

const name = process.argv[2] ?? "";
const watchdog = setTimeout(() => {
  process.stdout.write(
    `VERDICT ${JSON.stringify({ ok: false, error: "scenario timed out in the child" })}\n`,
  );
  process.exit(2);
}, 20_000);

runScenario(name).then(
  (v) => {
    clearTimeout(watchdog);
    process.stdout.write(`VERDICT ${JSON.stringify(v)}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    const e = err as { code?: string; message?: string };
    process.stdout.write(
      `VERDICT ${JSON.stringify({ ok: false, error: `${e.code ?? ""} ${e.message ?? String(err)}` })}\n`,
    );
    process.exit(1);
  },
);
