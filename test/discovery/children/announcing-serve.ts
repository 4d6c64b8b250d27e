/**
 * Child (run under test/host/children/testbed.py, inside a test's network namespace): the real
 * `usbvirt serve --announce` in-process, with the arguments given. Prints `READY PORT` once it listens;
 * reads lines on stdin: `unplug` / `plug` become the testbed's STAGE lines, `stop` stops serve and prints
 * `VERDICT {"ok":true,"code":N}`.
 */
import { createInterface } from "node:readline";
import { run } from "../../../src/cli/run.js";
import { CollectingLogger } from "../../../src/network-face/log.js";
import { assertInTestNamespace } from "../../support/netns.js";
import { exitWithVerdict } from "../../support/verdict.js";

assertInTestNamespace();
let stop!: (s: string) => void;
const stopped = new Promise<string>((r) => {
  stop = r;
});
const log = new CollectingLogger();
const exit = run(["serve", "--port", "0", ...process.argv.slice(2)], {
  out: () => undefined,
  err: (t) => process.stderr.write(t),
  logger: log,
  stopSignal: () => stopped,
  onListening: (s) => process.stdout.write(`READY ${s.address.port}\n`),
});
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "unplug" || line === "plug") process.stdout.write(`STAGE ${line}\n`);
  if (line === "stop") stop("SIGTERM");
});
const code = await exit;
exitWithVerdict({ ok: code === 0, code, log: log.lines }, 0);
