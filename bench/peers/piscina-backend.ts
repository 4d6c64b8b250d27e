/**
 * Peer (c), backend task: piscina runs it on its one "backend" thread; it
 * routes the URB and runs the port step as a task on its own one-thread
 * pool (the port worker). Up to `depth` tasks run at once on each thread.
 */
import { Piscina, workerData } from "piscina";
import { noDevice, type PeerResult, type PeerUrb, routes } from "./wire.js";

const { portTask, depth } = workerData as { portTask: string; depth: number };
const port = new Piscina({
  filename: portTask,
  minThreads: 1,
  maxThreads: 1,
  concurrentTasksPerWorker: depth,
  idleTimeout: 60_000,
});

export default function backendTask(urb: PeerUrb): Promise<PeerResult> | PeerResult {
  return routes(urb) ? (port.run(urb) as Promise<PeerResult>) : noDevice(urb);
}
