/** The frontend on the VMM's own device-model thread, the connection's control plane on this one. */
import { once } from "node:events";
import { expect, it } from "vitest";
import { Connection } from "../../src/engine/connection.js";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";

it("serves a frontend that lives on another thread, built from the posted handles", async () => {
  const conn = await Connection.create({ ports: 2, frontend: false });
  try {
    expect(conn.frontend).toBeNull();
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    const vmm = startWorker(siblingModule(import.meta.url, "./frontend-worker"), {
      workerData: conn.handles,
    });
    const report = await Promise.race([
      once(vmm, "message").then(([m]) => m as unknown),
      once(vmm, "error").then(([e]) => ({ ok: false, error: String(e) })),
    ]);
    await vmm.terminate();
    expect(report).toEqual({ ok: true, product: 0x0001, echoed: true });
    expect((await conn.stats()).responses).toBeGreaterThan(5);
  } finally {
    await conn.close();
  }
});
