/**
 * The designs people would otherwise build, started from the bench's main
 * thread (their frontend): a backend worker and a port worker with the same
 * emulated loopback device, carried by
 * - postMessage: structured clone of each URB and its payload, every hop;
 * - comlink: a call per URB from frontend to backend and backend to port;
 * - piscina: a backend task per URB that runs the port step as a task on a
 *   one-thread pool (a pool is what piscina is; one thread owns the device).
 * Each gives the same `submit(urb) → result` to the same bench drivers.
 */
import { MessageChannel, type Worker } from "node:worker_threads";
import { Piscina } from "piscina";
import { connect, disconnect } from "../../src/util/rpc.js";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";
import type { PeerApi } from "./comlink-backend.js";
import type { PeerResult, PeerUrb } from "./wire.js";

export type PeerDesign = "postmessage" | "comlink" | "piscina";
export const PEER_DESIGNS: readonly PeerDesign[] = ["postmessage", "comlink", "piscina"];

export interface PeerTransport {
  readonly design: PeerDesign;
  submit(urb: PeerUrb): Promise<PeerResult>;
  close(): Promise<void>;
}

function waitReady(worker: Worker): Promise<void> {
  return new Promise((resolve, reject) => {
    worker.once("message", () => resolve());
    worker.once("error", reject);
  });
}

async function startPostMessage(): Promise<PeerTransport> {
  const { port1, port2 } = new MessageChannel();
  const port = startWorker(siblingModule(import.meta.url, "./postmessage-port"), {
    workerData: { port: port2 },
    transferList: [port2],
  });
  await waitReady(port);
  const backend = startWorker(siblingModule(import.meta.url, "./postmessage-backend"), {
    workerData: { port: port1 },
    transferList: [port1],
  });
  const waiting = new Map<number, (r: PeerResult) => void>();
  backend.on("message", (r: PeerResult) => {
    const resolve = waiting.get(r.id);
    waiting.delete(r.id);
    resolve?.(r);
  });
  return {
    design: "postmessage",
    submit: (urb) =>
      new Promise((resolve) => {
        waiting.set(urb.id, resolve);
        backend.postMessage(urb);
      }),
    close: async () => {
      await Promise.all([backend.terminate(), port.terminate()]);
    },
  };
}

async function startComlink(): Promise<PeerTransport> {
  const { port1, port2 } = new MessageChannel();
  const port = startWorker(siblingModule(import.meta.url, "./comlink-port"), {
    workerData: { port: port2 },
    transferList: [port2],
  });
  const backend = startWorker(siblingModule(import.meta.url, "./comlink-backend"), {
    workerData: { port: port1 },
    transferList: [port1],
  });
  const api = connect<PeerApi>(backend);
  return {
    design: "comlink",
    submit: (urb) => api.submit(urb),
    close: async () => {
      disconnect(api);
      await Promise.all([backend.terminate(), port.terminate()]);
    },
  };
}

async function startPiscina(depth: number): Promise<PeerTransport> {
  // piscina loads task modules itself: compiled JavaScript only (the bench runs from dist/).
  const backend = new Piscina({
    filename: siblingModule(import.meta.url, "./piscina-backend").href,
    minThreads: 1,
    maxThreads: 1,
    concurrentTasksPerWorker: depth,
    idleTimeout: 60_000,
    workerData: { portTask: siblingModule(import.meta.url, "./piscina-port").href, depth },
  });
  return {
    design: "piscina",
    submit: (urb) => backend.run(urb) as Promise<PeerResult>,
    close: () => backend.destroy(),
  };
}

/** Start a peer design able to carry `depth` URBs at once. */
export function startPeer(design: PeerDesign, depth: number): Promise<PeerTransport> {
  switch (design) {
    case "postmessage":
      return startPostMessage();
    case "comlink":
      return startComlink();
    case "piscina":
      return startPiscina(depth);
  }
}
