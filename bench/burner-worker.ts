/**
 * Bench worker: a busy thread doing a fixed CPU workload, as a VMM's vCPU
 * threads do (bench/contended.ts). One work unit is `iterations` rounds of a
 * multiply-xorshift hash; after each unit the thread adds 1 to its own
 * counter (word `index * stride`, its own 64-byte line), and stops when word 0
 * turns non-zero. What the counters gain while an engine runs beside them is
 * the CPU time that engine left to the rest of the host.
 */
import { workerData } from "node:worker_threads";

const { words, index, stride, iterations } = workerData as {
  words: SharedArrayBuffer;
  index: number;
  stride: number;
  iterations: number;
};
const w = new Int32Array(words);
let h = index | 1;
while (Atomics.load(w, 0) === 0) {
  for (let i = 0; i < iterations; i++) {
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
    h ^= h << 7;
  }
  Atomics.add(w, index * stride, 1);
}
// The hash's last value, so the loop cannot be optimised away.
Atomics.store(w, index * stride + 1, h);
