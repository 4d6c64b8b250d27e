/**
 * Child (inside a test's network namespace): `attach --device SEL` as DeviceFollower does it, with real
 * discovery. Each time the device is attached it moves bulk data through the testbed's echo and prints
 * `ATTACHED NAME ECHOED`; each loss prints `LOST REASON`. `stop` on stdin ends it with `VERDICT`.
 */
import { createInterface } from "node:readline";
import { DeviceFollower } from "../../../src/cli/discover.js";
import { parseDeviceSelector } from "../../../src/discovery/select.js";
import type { AttachedDevice } from "../../../src/usbip-attach/attach.js";
import { assertInTestNamespace } from "../../support/netns.js";
import { exitWithVerdict } from "../../support/verdict.js";

assertInTestNamespace();
const selector = process.argv[2]!;
const log: string[] = [];

async function echo(att: AttachedDevice, seed: number): Promise<boolean> {
  const payload = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + seed) & 0xff);
  await att.guest.transferOut(att.port, att.address, 2, payload);
  const back = await att.guest.transferIn(att.port, att.address, 1, 64);
  return Buffer.compare(back, payload) === 0;
}

const follower = new DeviceFollower({
  selector,
  rule: parseDeviceSelector(selector),
  discoverMs: 1000,
  timeoutMs: 3000,
  keepaliveMs: 2000,
  follow: true,
  retryMinMs: 200,
  retryMaxMs: 1000,
  log: (l) => log.push(l),
});
let seed = 0;
follower.events.on("attached", (att, c) => {
  echo(att, ++seed).then(
    (ok) => process.stdout.write(`ATTACHED ${c.server.name} ${ok}\n`),
    (err: unknown) => process.stdout.write(`ATTACHED ${c.server.name} false ${String(err)}\n`),
  );
});
follower.events.on("lost", (reason) => process.stdout.write(`LOST ${reason}\n`));
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line !== "stop") return;
  follower.close().then(() => {
    exitWithVerdict({ ok: true, log }, 0);
  });
});
