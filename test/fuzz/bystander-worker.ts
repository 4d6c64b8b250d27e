/**
 * Test worker: an honest VMM device-model thread for the fuzz and fault tests. Builds its own
 * VirtualHostController from a connection's handles, enumerates the loopback on port 1 and echoes
 * verified 4 KiB payloads until told to stop. Word 0 of `counters` counts verified rounds, word 1 is
 * set when something went wrong (the message says what), word 2 asks it to stop.
 */
import { parentPort, workerData } from "node:worker_threads";
import type { ControllerHandles } from "../../src/connection/handles.js";
import { VirtualHostController } from "../../src/frontend/index.js";
import { GuestUsbDriver } from "../../src/guest/guest-driver.js";
import type { DevAddr, PortNum } from "../../src/urb/types.js";
import { pattern } from "../support/data.js";

const { handles, counters } = workerData as { handles: ControllerHandles; counters: SharedArrayBuffer };
const words = new Int32Array(counters);
const hcd = new VirtualHostController(handles);
hcd.start();
const guest = new GuestUsbDriver(hcd, handles);
const p = 1 as PortNum;
const a = 2 as DevAddr;
try {
  await guest.enumerate(p, a);
  parentPort!.postMessage({ type: "ready" });
  let i = 0;
  while (Atomics.load(words, 2) === 0) {
    const data = pattern(4096, ++i);
    await guest.transferOut(p, a, 1, data);
    const back = await guest.transferIn(p, a, 1, data.length);
    if (Buffer.compare(back, data) !== 0) throw new Error(`round ${i}: the echo came back different`);
    Atomics.add(words, 0, 1);
  }
  parentPort!.postMessage({ type: "done" });
} catch (err) {
  Atomics.store(words, 1, 1);
  parentPort!.postMessage({ type: "error", error: String(err) });
} finally {
  await hcd.stop();
}
