/**
 * Child (inside a test's network namespace): what a VMM does with a port that holds "SEL anywhere" — an
 * engine Connection whose port 1 gets `{ kind: "usbip", select: SEL }`, found by real discovery and found
 * again by the engine's reconnect after a loss. Each time the device is on the port it is enumerated and
 * bulk data moves through the testbed's echo: `ATTACHED NAME ECHOED`, NAME the announcing server the engine
 * logged it found; each loss prints `LOST REASON`. `stop` on stdin ends it with `VERDICT`.
 */
import { createInterface } from "node:readline";
import { Connection } from "../../../src/engine/connection.js";
import { GuestUsbDriver } from "../../../src/guest/guest-driver.js";
import type { DevAddr, PortNum } from "../../../src/urb/types.js";
import { assertInTestNamespace } from "../../support/netns.js";
import { exitWithVerdict } from "../../support/verdict.js";

assertInTestNamespace();
const select = process.argv[2]!;
const port = 1 as PortNum;
const address = 1 as DevAddr;
const log: string[] = [];
let server = "?";

const conn = await Connection.create({ ports: 1, memory: 8192 });
const guest = new GuestUsbDriver(conn.frontend!, conn.handles);
conn.on("log", (line) => {
  log.push(line);
  // port 1: "serial=…" is 1-1 1209:7301 serial=… on NAME (HOST:PORT)
  const found = / is \S+ \S+ .*? on (.+) \([\d.]+:\d+\)$/.exec(line);
  if (found !== null) server = found[1]!;
});

let seed = 0;
async function echoed(): Promise<void> {
  try {
    await guest.enumerate(port, address);
    const payload = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + ++seed) & 0xff);
    await guest.transferOut(port, address, 2, payload);
    const back = await guest.transferIn(port, address, 1, 64);
    process.stdout.write(`ATTACHED ${server} ${Buffer.compare(back, payload) === 0}\n`);
  } catch (err) {
    process.stdout.write(`ATTACHED ${server} false ${String(err)}\n`);
  }
}

conn.on("port-failed", (p, reason) => {
  if (p === port) process.stdout.write(`LOST ${reason}\n`);
});
conn.on("port-reconnected", (p) => {
  if (p === port) void echoed();
});
await conn.attach(port, {
  kind: "usbip",
  select,
  discoverMs: 1000,
  timeoutMs: 3000,
  keepaliveMs: 2000,
  retryMinMs: 200,
  retryMaxMs: 1000,
});
await echoed();
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line !== "stop") return;
  conn.close().then(() => exitWithVerdict({ ok: true, log }, 0));
});
