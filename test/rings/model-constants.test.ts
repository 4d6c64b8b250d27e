/**
 * The SPIN model (model/ring.pml) is a scaled-down instance of the code: this pins what must agree.
 * Agree exactly: the index checks are the code's (ringDistance modulo a power of two). Agree in shape:
 * slots a power of two, indices wider than the ring, 1 <= unlink reserve < slots, 1 <= batch < slots.
 * The sizes differ on purpose (4 slots instead of 256) to keep every interleaving checkable.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { URB_RING_GEOMETRY } from "../../src/connection/handles.js";
import { UNLINK_RESERVED_SLOTS } from "../../src/frontend/controller.js";
import { MAX_SLOTS, MIN_SLOTS } from "../../src/rings/layout.js";

const model = readFileSync(new URL("../../model/ring.pml", import.meta.url), "utf8");
const backend = readFileSync(new URL("../../src/backend/backend.ts", import.meta.url), "utf8");

function modelDefine(name: string): number {
  const m = new RegExp(`^#define ${name} (\\d+)`, "m").exec(model);
  if (m === null) throw new Error(`model/ring.pml has no #define ${name}`);
  return Number(m[1]);
}

const isPowerOfTwo = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

describe("model constants", () => {
  const slots = modelDefine("SLOTS");
  const mod = modelDefine("MOD");
  const reserve = modelDefine("RESERVE");
  const batch = modelDefine("BATCH");
  const ndata = modelDefine("NDATA");
  const init = modelDefine("INIT");
  const requestsPerPoll = Number(/const REQUESTS_PER_POLL = (\d+);/.exec(backend)?.[1]);

  it("the code's ring is an instance of the modelled shape", () => {
    expect(isPowerOfTwo(URB_RING_GEOMETRY.slots)).toBe(true);
    expect(URB_RING_GEOMETRY.slots).toBeGreaterThanOrEqual(MIN_SLOTS);
    expect(URB_RING_GEOMETRY.slots).toBeLessThanOrEqual(MAX_SLOTS);
    // Free-running u32 indices: 2^32 is a power of two wider than twice the largest ring, as MOD is in the model.
    expect(2 ** 32).toBeGreaterThan(2 * MAX_SLOTS);
    expect(UNLINK_RESERVED_SLOTS).toBeGreaterThanOrEqual(1);
    expect(UNLINK_RESERVED_SLOTS).toBeLessThan(URB_RING_GEOMETRY.slots);
    expect(requestsPerPoll).toBeGreaterThanOrEqual(1);
    expect(requestsPerPoll).toBeLessThan(URB_RING_GEOMETRY.slots);
  });

  it("the model's bounds have the same shape", () => {
    expect(isPowerOfTwo(slots)).toBe(true);
    expect(isPowerOfTwo(mod)).toBe(true);
    expect(mod).toBeGreaterThan(2 * slots);
    expect(reserve).toBeGreaterThanOrEqual(1);
    expect(reserve).toBeLessThan(slots);
    expect(batch).toBeGreaterThanOrEqual(1);
    expect(batch).toBeLessThan(slots);
    // More data URBs than data slots, so one waits in the pending queue; the run crosses the index wrap.
    expect(ndata).toBeGreaterThan(slots - reserve);
    expect(init + ndata * 2).toBeGreaterThan(mod);
  });

  it("the model's data-URB check is the controller's (free <= reserve refuses)", () => {
    expect(model).toMatch(/f_commit\(REQ_DATA, DATA_RESERVE, ok\)/);
    expect(model).toMatch(/SLOTS - dist\(reqProdPvt, rspCons\) > need/);
    const sender = readFileSync(new URL("../../src/frontend/urb-sender.ts", import.meta.url), "utf8");
    expect(sender).toContain("if (this.ring.freeRequests <= UNLINK_RESERVED_SLOTS) return false;");
  });

  it("the model's index checks are the code's", () => {
    const back = readFileSync(new URL("../../src/rings/back-ring.ts", import.meta.url), "utf8");
    const front = readFileSync(new URL("../../src/rings/front-ring.ts", import.meta.url), "utf8");
    expect(back).toContain(
      "if (ahead > this.v.geometry.slots || ringDistance(this.reqCons, this.rspProdPvt) > ahead) {",
    );
    expect(model).toContain(
      "dist(prod, rspProdPvt) > SLOTS || dist(reqCons, rspProdPvt) > dist(prod, rspProdPvt)",
    );
    expect(front).toContain(
      "if (ringDistance(prod, this.rspCons) > ringDistance(this.reqProdPushed, this.rspCons)) {",
    );
    expect(model).toContain("dist(prod, rspCons) > dist(reqProdPushed, rspCons)");
    expect(front).toContain("return ringDistance(next, event) < ringDistance(next, old);");
    expect(model).toContain("dist(reqProdPushed, ev) < dist(reqProdPushed, old)");
  });
});
