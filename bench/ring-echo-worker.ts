/**
 * Bench worker: the backend end of a ring that answers every request at
 * once with its id (the cheapest possible backend). With `spin` it spins
 * adaptively before parking; without, it parks in Atomics.wait every time it
 * runs dry, which shows what an OS wake-up costs.
 */
import { workerData } from "node:worker_threads";
import { BackRing } from "../src/rings/back-ring.js";
import { Doorbell } from "../src/rings/doorbell.js";
import type { RingGeometry } from "../src/rings/layout.js";
import { AdaptiveSpin } from "../src/rings/spin.js";

const { ring, geometry, backBell, frontBell, stop, spin } = workerData as {
  ring: SharedArrayBuffer;
  geometry: RingGeometry;
  backBell: SharedArrayBuffer;
  frontBell: SharedArrayBuffer;
  stop: SharedArrayBuffer;
  spin: boolean;
};

const back = new BackRing(ring, geometry);
const myBell = new Doorbell(backBell);
const peerBell = new Doorbell(frontBell);
const stopWord = new Int32Array(stop);
const spinner = spin ? new AdaptiveSpin() : undefined;
const copy = new Uint8Array(geometry.slotSize);
const stopOrWork = {
  hasPending: () => Atomics.load(stopWord, 0) !== 0 || back.hasPending(),
  armAndCheck: () => Atomics.load(stopWord, 0) !== 0 || back.armAndCheck(),
};

while (Atomics.load(stopWord, 0) === 0 && back.fault === 0) {
  while (back.takeRequest(copy)) {
    const slot = back.responseSlot();
    // Response: the id (first 4 bytes) and a zero status.
    slot[0] = copy[0]!;
    slot[1] = copy[1]!;
    slot[2] = copy[2]!;
    slot[3] = copy[3]!;
    slot[4] = slot[5] = slot[6] = slot[7] = 0;
    back.commitResponse();
  }
  if (back.pushResponses()) peerBell.ring();
  myBell.wait(stopOrWork, spinner);
}
