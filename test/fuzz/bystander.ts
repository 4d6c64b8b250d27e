/** An honest connection whose frontend runs on its own thread, moving verified data while a test attacks another. */
import { once } from "node:events";
import type { Worker } from "node:worker_threads";
import { Connection } from "../../src/engine/connection.js";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";

export interface Bystander {
  readonly conn: Connection;
  /** Verified echo rounds so far. */
  rounds(): number;
  /** What went wrong in the bystander, or null. */
  readonly errors: string[];
  stop(): Promise<void>;
}

export async function startBystander(): Promise<Bystander> {
  const conn = await Connection.create({ ports: 1, memory: 1024, frontend: false });
  await conn.attach(1, { kind: "emulated", name: "loopback" });
  const counters = new SharedArrayBuffer(16);
  const words = new Int32Array(counters);
  const worker: Worker = startWorker(siblingModule(import.meta.url, "./bystander-worker"), {
    workerData: { handles: conn.handles, counters },
  });
  const errors: string[] = [];
  worker.on("error", (err) => errors.push(String(err)));
  worker.on("message", (m: { type: string; error?: string }) => {
    if (m.type === "error") errors.push(m.error ?? "unknown");
  });
  const [first] = (await once(worker, "message")) as [{ type: string; error?: string }];
  if (first.type !== "ready") throw new Error(`bystander did not start: ${first.error}`);
  return {
    conn,
    rounds: () => Atomics.load(words, 0),
    errors,
    async stop() {
      Atomics.store(words, 2, 1);
      await Promise.race([once(worker, "exit"), new Promise((r) => setTimeout(r, 2000))]);
      await worker.terminate();
      await conn.close();
    },
  };
}
