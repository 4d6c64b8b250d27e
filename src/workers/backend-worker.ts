/**
 * Backend worker entry: one per frontend connection (the default placement of
 * the backend), running the backend host (src/backend/backend-host.ts).
 */
import { workerData } from "node:worker_threads";
import { type BackendHostData, startBackendHost } from "../backend/backend-host.js";

export type { BackendApi, BackendHostData as BackendWorkerData } from "../backend/backend-host.js";
export { BackendPortError } from "../backend/backend-host.js";

startBackendHost(workerData as BackendHostData);
