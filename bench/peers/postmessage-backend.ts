/**
 * Peer (a), backend worker: URBs arrive by postMessage (structured clone),
 * are routed by port and posted on to the port worker; answers come back
 * the same way. No shared memory anywhere.
 */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { noDevice, type PeerResult, type PeerUrb, routes } from "./wire.js";

const toPort = (workerData as { port: MessagePort }).port;
parentPort!.on("message", (urb: PeerUrb) => {
  if (routes(urb)) toPort.postMessage(urb);
  else parentPort!.postMessage(noDevice(urb));
});
toPort.on("message", (r: PeerResult) => parentPort!.postMessage(r));
