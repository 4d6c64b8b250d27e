/**
 * Test worker: a VMM device-model thread. Builds its own VirtualHostController
 * from the connection's handles, enumerates the loopback on port 1 and moves
 * data through it, then reports what it saw.
 */
import { parentPort, workerData } from "node:worker_threads";
import type { ControllerHandles } from "../../src/connection/handles.js";
import { VirtualHostController } from "../../src/frontend/index.js";
import { GuestUsbDriver } from "../../src/guest/guest-driver.js";
import type { DevAddr, PortNum } from "../../src/urb/types.js";

const handles = workerData as ControllerHandles;
const hcd = new VirtualHostController(handles);
hcd.start();
const guest = new GuestUsbDriver(hcd, handles);
const p = 1 as PortNum;
const a = 4 as DevAddr;
try {
  const dev = await guest.enumerate(p, a);
  const data = new Uint8Array(10_000).map((_, i) => (i * 7) & 0xff);
  await guest.transferOut(p, a, 1, data);
  const back = await guest.transferIn(p, a, 1, data.length);
  parentPort!.postMessage({ ok: true, product: dev.productId, echoed: Buffer.compare(back, data) === 0 });
} catch (err) {
  parentPort!.postMessage({ ok: false, error: String(err) });
} finally {
  await hcd.stop();
}
