/** Test worker: parks on a doorbell until a shared flag is set, then reports how it woke. */
import { parentPort, workerData } from "node:worker_threads";
import { Doorbell } from "../../src/rings/doorbell.js";

const { bell, flag } = workerData as { bell: SharedArrayBuffer; flag: SharedArrayBuffer };
const word = new Int32Array(flag);
const waitable = {
  hasPending: () => Atomics.load(word, 0) !== 0,
  armAndCheck: () => Atomics.load(word, 0) !== 0,
};
Atomics.store(word, 1, 1); // parked (or about to be)
const outcome = new Doorbell(bell).wait(waitable, undefined, 10_000);
parentPort!.postMessage({ outcome, flag: Atomics.load(word, 0) });
