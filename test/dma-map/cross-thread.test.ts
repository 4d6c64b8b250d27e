/** A grant made on the main thread is mapped and written by a worker over the same SABs. */
import { once } from "node:events";
import { expect, it } from "vitest";
import type { GuestFrame } from "../../src/dma-map/index.js";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";
import { BACKEND, mockGuest } from "./support.js";

it("a worker maps a main-thread grant, writes through it; revoke waits for its unmap", async () => {
  const g = mockGuest([4, 4]);
  const ref = g.owner.grant(BACKEND, 5 as GuestFrame, 1, false);
  const length = 300;
  const worker = startWorker(siblingModule(import.meta.url, "./map-worker"), {
    workerData: { regions: g.memory.regions, table: g.table, ref, domid: BACKEND, length },
  });
  try {
    const [first] = await once(worker, "message");
    expect(first).toEqual({ mapped: true });
    const seen = g.memory.frameView(5 as GuestFrame);
    for (let i = 0; i < length; i++) expect(seen[i]).toBe((i * 7 + 1) & 0xff);
    expect(seen[length]).toBe(0);
    expect(g.owner.tryRevoke(ref)).toBe(false);
    worker.postMessage("unmap");
    const [second] = await once(worker, "message");
    expect(second).toEqual({ unmapped: "OK" });
    expect(g.owner.tryRevoke(ref)).toBe(true);
  } finally {
    await worker.terminate();
  }
});
