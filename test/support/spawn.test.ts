import { once } from "node:events";
import { expect, it } from "vitest";
import { siblingModule, startWorker } from "../../src/util/start-worker.js";

it("starts a TypeScript worker", async () => {
  const w = startWorker(siblingModule(import.meta.url, "./echo-worker"));
  const [v] = await once(w, "message");
  expect(v).toBe(42);
  await w.terminate();
});
