/**
 * Bulk streams end to end through real worker threads: the frontend's allocStreams and a bulk URB's
 * streamId travel the URB ring, the backend's gate and the port ring to the port worker, which checks the
 * stream against what was allocated. The storage at SuperSpeed speaks Bulk-Only here (alternate 0): its
 * endpoints offer no streams, so the port refuses both, with -EINVAL, and the device goes on working.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BulkOnlyClient } from "../../src/guest/bulk-only-client.js";
import { EINVAL } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { addr, port } from "../support/brands.js";
import { type Rig, rig } from "./helpers.js";

let r: Rig;
beforeEach(async () => {
  r = await rig();
});
afterEach(async () => {
  await r.close();
});

describe("bulk streams through the engine", () => {
  it("a SuperSpeed Bulk-Only disk: ALLOC_STREAMS and a stream id are -EINVAL, plain bulk still works", async () => {
    await r.conn.attach(1, {
      kind: "emulated",
      name: "storage",
      options: { sizeBytes: 1024 * 1024, speed: 4 },
    });
    expect(r.hcd.portStatus(1).speed).toBe(4);
    const dev = await r.guest.enumerate(port(1), addr(5));
    expect(dev.interfaces[0]!.endpoints.map((e) => [e.maxPacketSize, e.maxStreams])).toEqual([
      [1024, 0],
      [1024, 0],
    ]);
    expect(await r.hcd.allocStreams(1, 0x81, 4)).toBe(EINVAL);
    const buffer = r.guest.buffers.allocate(512);
    const c = await r.hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(5),
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [buffer],
      streamId: 1,
    });
    expect(c.status).toBe(EINVAL);
    const bot = new BulkOnlyClient(r.guest, port(1), addr(5), 1, 2);
    expect(await bot.testUnitReady()).toBe(0);
  });

  it("refuses a stream id that is no stream id (above 65533) before it leaves the frontend", async () => {
    await r.conn.attach(1, {
      kind: "emulated",
      name: "storage",
      options: { sizeBytes: 1024 * 1024, speed: 4 },
    });
    await expect(r.hcd.allocStreams(1, 0x81, 0x10000)).rejects.toThrow(/streams must be an integer 1..65533/);
    await expect(r.hcd.allocStreams(1, 0x80, 2)).rejects.toThrow(/endpointAddress/);
    const c = await r.hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(0),
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [r.guest.buffers.allocate(64)],
      streamId: 0xfffe,
    });
    expect(c.status).toBe(EINVAL);
  });
});
