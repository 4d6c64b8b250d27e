/**
 * The controller's own listener map: `once` runs a listener for the next
 * event only, `off` removes a `once` listener by the caller's function, and a
 * listener registered both ways keeps its `on` registration.
 */
import { describe, expect, it } from "vitest";
import type { PortStatus } from "../../src/frontend/types.js";
import { pump, rig } from "./support.js";

describe("controller events", () => {
  it("once runs a portChange listener for the next change only", async () => {
    const r = rig();
    const seen: PortStatus[] = [];
    r.hc.once("portChange", (s) => seen.push(s));
    r.fake.plug(2);
    await pump(r);
    r.fake.plug(3);
    await pump(r);
    expect(seen.map((s) => [s.port, s.connected])).toEqual([[2, true]]);
  });

  it("off removes a once listener before it ran", async () => {
    const r = rig();
    const seen: number[] = [];
    const listener = (s: PortStatus): void => {
      seen.push(s.port);
    };
    r.hc.once("portChange", listener).off("portChange", listener);
    r.fake.plug(1);
    await pump(r);
    expect(r.hc.portStatus(1).connected).toBe(true);
    expect(seen).toEqual([]);
  });

  it("a listener added with on and with once runs twice, then on every change", async () => {
    const r = rig();
    const seen: number[] = [];
    const listener = (s: PortStatus): void => {
      seen.push(s.port);
    };
    r.hc.on("portChange", listener).once("portChange", listener);
    r.fake.plug(1);
    await pump(r);
    r.fake.plug(2);
    await pump(r);
    expect(seen).toEqual([1, 1, 2]);
  });
});
