/** Peer (a), port worker: one loopback device; URBs and answers by postMessage. */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { openLoopback, type PeerUrb, submitToDevice } from "./wire.js";

const fromBackend = (workerData as { port: MessagePort }).port;
const device = await openLoopback();
fromBackend.on("message", (urb: PeerUrb) => {
  void submitToDevice(device, urb).then((r) => fromBackend.postMessage(r));
});
parentPort!.postMessage("ready");
