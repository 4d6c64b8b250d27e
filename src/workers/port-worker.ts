/**
 * Port worker entry: one per device placed on a worker, spawned by the
 * backend (src/backend/worker-port.ts), running the port worker's host
 * (src/backend/port-worker-host.ts).
 */
import { workerData } from "node:worker_threads";
import { type PortWorkerData, startPortWorkerHost } from "../backend/port-worker-host.js";

void startPortWorkerHost(workerData as PortWorkerData);
