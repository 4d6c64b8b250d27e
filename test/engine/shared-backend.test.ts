/**
 * The backend on the frontend's own thread (Connection option backendThread "shared", what the USB/IP
 * server uses): the same rings, grants, parse gate and port service as with a backend worker, no worker
 * for the backend, devices enumerate and move data, a restart brings the port back, and a closed
 * connection leaves nothing that keeps the process alive.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { ENODEV, ESHUTDOWN } from "../../src/urb/status.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { addr, port } from "../support/brands.js";
import { pattern } from "../support/data.js";
import { type Rig, rig } from "./helpers.js";

let r: Rig | undefined;
afterEach(async () => {
  await r?.close();
  r = undefined;
});

describe("backend on the frontend's thread", () => {
  it("enumerates the loopback and storage, echoes bulk data and answers on the same thread", async () => {
    r = await rig({ backendThread: "shared" });
    await r.conn.attach(1, { kind: "emulated", name: "loopback" });
    await r.guest.enumerate(port(1), addr(3));
    for (const [i, size] of [1, 512, 65536, 300_000].entries()) {
      const data = pattern(size, i + 1);
      expect(await r.guest.transferOut(port(1), addr(3), 1, data)).toBe(size);
      expect(Buffer.compare(await r.guest.transferIn(port(1), addr(3), 1, size), data)).toBe(0);
    }
    const stats = await r.conn.stats();
    expect(stats.liveWorkers).toBe(0); // no port worker for an emulated device, and no backend worker either
    expect(stats.requests).toBeGreaterThan(8);
  });

  it("restarts: URBs in flight end (-ENODEV as its ports close, or -ESHUTDOWN), the device comes back", async () => {
    r = await rig({ backendThread: "shared" });
    const { conn, guest, hcd } = r;
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await guest.enumerate(port(1), addr(2));
    const pending = hcd.submit({
      type: "bulk",
      port: port(1),
      device: addr(2),
      endpoint: 1 as EndpointNum,
      directionIn: true,
      buffer: [guest.buffers.allocate(512)],
    });
    await conn.restartBackend();
    expect([ENODEV, ESHUTDOWN]).toContain((await pending).status);
    await guest.enumerate(port(1), addr(6));
    const data = pattern(2048, 8);
    await guest.transferOut(port(1), addr(6), 1, data);
    expect(Buffer.compare(await guest.transferIn(port(1), addr(6), 1, 2048), data)).toBe(0);
  });

  it("lets the process exit once the connection is closed", () => {
    const engine = fileURLToPath(new URL("../../src/engine/connection.ts", import.meta.url));
    const script = `
      const { Connection } = await import(${JSON.stringify(engine)});
      const c = await Connection.create({ ports: 2, memory: 1024, backendThread: "shared" });
      await c.attach(1, { kind: "emulated", name: "keyboard" });
      await c.close();
      console.log("closed");
    `;
    const run = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 20_000,
    });
    expect(run.stderr).toBe("");
    expect(run.stdout.trim()).toBe("closed");
    expect(run.status).toBe(0); // a timeout (something kept the loop alive) gives null
  });
});
