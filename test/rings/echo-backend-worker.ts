/**
 * Test worker: the backend end of a ring. Answers each request with its
 * sequence number doubled, checks the sequence itself, and reports any gap.
 * Blocks in Doorbell.wait (this thread needs no event loop while serving).
 */
import { parentPort, workerData } from "node:worker_threads";
import { BackRing } from "../../src/rings/back-ring.js";
import { Doorbell } from "../../src/rings/doorbell.js";
import type { RingGeometry } from "../../src/rings/layout.js";
import { AdaptiveSpin } from "../../src/rings/spin.js";

const { ring, geometry, backBell, frontBell, total } = workerData as {
  ring: SharedArrayBuffer;
  geometry: RingGeometry;
  backBell: SharedArrayBuffer;
  frontBell: SharedArrayBuffer;
  total: number;
};

const back = new BackRing(ring, geometry);
const myBell = new Doorbell(backBell);
const peerBell = new Doorbell(frontBell);
const spin = new AdaptiveSpin();
const copy = new Uint8Array(geometry.slotSize);
const view = new DataView(copy.buffer);
let expected = 0;
let errors = 0;
let sleeps = 0;

while (expected < total) {
  while (back.takeRequest(copy)) {
    const seq = view.getUint32(4, true);
    if (seq !== expected) errors++;
    expected = seq + 1;
    const slot = back.responseSlot();
    slot.set(copy);
    new DataView(slot.buffer, slot.byteOffset, 16).setUint32(8, (seq * 2) >>> 0, true);
    back.commitResponse();
  }
  if (back.pushResponses()) peerBell.ring();
  if (back.fault !== 0) break;
  if (myBell.wait(back, spin, 5000) !== "work") sleeps++;
}
if (back.pushResponses()) peerBell.ring();
parentPort!.postMessage({ received: expected, errors, sleeps, fault: back.fault });
