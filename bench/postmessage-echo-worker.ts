/** Bench worker: echoes every message back by postMessage (structured clone), the design usbvirt replaces. */
import { parentPort } from "node:worker_threads";

parentPort!.on("message", (m: unknown) => parentPort!.postMessage(m));
