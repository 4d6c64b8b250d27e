/** Peer (b), port worker: one loopback device behind a comlink API. */
import { type MessagePort, workerData } from "node:worker_threads";
import { serve } from "../../src/util/rpc.js";
import type { PeerApi } from "./comlink-backend.js";
import { openLoopback, submitToDevice } from "./wire.js";

const device = await openLoopback();
const api: PeerApi = { submit: (urb) => submitToDevice(device, urb) };
serve(api, (workerData as { port: MessagePort }).port);
