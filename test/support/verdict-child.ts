/**
 * Child process for test/host/run-child.test.ts: a `VERDICT <json>` line with argv[2] bytes of padding,
 * written and followed by the exit as every test child does it (exitWithVerdict).
 */
import { exitWithVerdict } from "./verdict.js";

const bytes = Number(process.argv[2] ?? "0");
process.stdout.write("STAGE start\n");
exitWithVerdict({ ok: true, padding: "x".repeat(bytes) }, 0);
