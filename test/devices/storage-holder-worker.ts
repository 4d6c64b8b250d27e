/**
 * Worker for test/devices/storage-file.test.ts: opens the storage file it is given, says "open", and holds
 * it until it is terminated (its message listener keeps the thread alive; it never closes the store).
 */
import { parentPort, workerData } from "node:worker_threads";
import { FileStore } from "../../src/devices/emulated/mass-storage/store.js";

const store = await FileStore.open(workerData as string, { sizeBytes: 4096 });
parentPort!.on("message", () => undefined);
parentPort!.postMessage(store.blockCount > 0 ? "open" : "empty");
