/** Peer (b), backend worker: a comlink API whose submit routes and calls the port worker's, over comlink. */
import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { connect, serve } from "../../src/util/rpc.js";
import { noDevice, type PeerResult, type PeerUrb, routes } from "./wire.js";

export interface PeerApi {
  submit(urb: PeerUrb): Promise<PeerResult>;
}

const port = connect<PeerApi>((workerData as { port: MessagePort }).port);
const api: PeerApi = {
  submit: async (urb) => (routes(urb) ? await port.submit(urb) : noDevice(urb)),
};
serve(api, parentPort! as unknown as MessagePort);
