/**
 * The per-peer bounds given to the commands reach the running servers: `serve --max-connections 1` holds
 * one connection and closes a second, unanswered, until the first goes; `redirect` with
 * `"handshakeTimeoutMs": 300` in its config file drops a peer that never sends its hello (the default
 * would hold it 30 s). In-process through run(), peers on loopback. How the flags and keys are read and
 * checked is in config.test.ts.
 */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { UsbipClient } from "../../src/usbip/client.js";
import { encodeDevlistRequest } from "../../src/usbip/management-pdus.js";
import { RawConnection } from "../network-face/raw-connection.js";
import { eventually } from "../support/eventually.js";
import { redirectInProcess, serveInProcess } from "./helpers.js";

const raws: RawConnection[] = [];
const stops: (() => Promise<number>)[] = [];
afterEach(async () => {
  for (const r of raws.splice(0)) r.destroy();
  for (const stop of stops.splice(0)) await stop();
});

async function open(port: number): Promise<RawConnection> {
  const r = await RawConnection.open(port);
  raws.push(r);
  return r;
}

describe("serve --max-connections", () => {
  it("1: a second connection is closed unanswered while the first is held; once it goes, a client is served", async () => {
    const s = await serveInProcess(["--device", "loopback", "--max-connections", "1"]);
    stops.push(s.stop);
    const port = s.server.address.port;
    const held = await open(port);
    await eventually(() => s.server.stats().clients === 1, 5000, "the first connection held");
    const second = await open(port);
    second.write(encodeDevlistRequest());
    await second.closedBy(5000, "the second connection to be closed");
    expect(second.received.length, "an answer to the refused connection").toBe(0);
    expect(held.closed).toBe(false);
    await eventually(
      () => s.c.logger.matching("(maxConnections 1)").length === 1,
      5000,
      "the refusal logged, naming the bound",
    );
    held.destroy();
    await eventually(() => s.server.stats().clients === 0, 5000, "the slot free");
    const client = await UsbipClient.connect({ host: "127.0.0.1", port });
    try {
      expect((await client.devlist()).map((d) => d.busid)).toEqual(["1-1"]);
    } finally {
      client.close();
    }
  });
});

describe("redirect's config key handshakeTimeoutMs", () => {
  it("300: a peer that never sends its hello is dropped", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-bounds-"));
    const file = join(dir, "redirect.json");
    await writeFile(
      file,
      JSON.stringify({ device: "loopback", listen: "127.0.0.1:0", handshakeTimeoutMs: 300 }),
    );
    const r = redirectInProcess(["--config", file]);
    stops.push(r.stop);
    const server = await r.ready;
    const silent = await open(server.address!.port);
    await silent.closedBy(10_000, "the silent peer to be dropped (the default would hold it 30 s)");
  });
});
