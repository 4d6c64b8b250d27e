/**
 * Test worker: parks on a doorbell until a shared flag is set, then reports how it woke.
 * Shared words: [0] the flag the parent sets; [1] this worker's progress: 1 started, 2 armed (the
 * doorbell's final check has been made and found nothing: from here it sleeps until the bell rings).
 */
import { parentPort, workerData } from "node:worker_threads";
import { Doorbell } from "../../src/rings/doorbell.js";

const { bell, flag } = workerData as { bell: SharedArrayBuffer; flag: SharedArrayBuffer };
const word = new Int32Array(flag);
const waitable = {
  hasPending: () => Atomics.load(word, 0) !== 0,
  armAndCheck: () => {
    const pending = Atomics.load(word, 0) !== 0;
    if (!pending) Atomics.store(word, 1, 2);
    return pending;
  },
};
Atomics.store(word, 1, 1);
const outcome = new Doorbell(bell).wait(waitable, undefined, 10_000);
parentPort!.postMessage({ outcome, flag: Atomics.load(word, 0) });
