/** Shared set-up of the usbredir tests: a UsbredirServer on 127.0.0.1 (ephemeral port) and guest-side clients. */
import type { DeviceSpec } from "../../src/devices/spec.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { RedirStatus } from "../../src/usbredir/protocol.js";
import { UsbredirServer, type UsbredirServerOptions } from "../../src/usbredir/server.js";
import { pattern } from "../support/data.js";

export const LOOPBACK: DeviceSpec = { kind: "emulated", name: "loopback" };
export const KEYBOARD: DeviceSpec = { kind: "emulated", name: "keyboard" };
export const STORAGE: DeviceSpec = {
  kind: "emulated",
  name: "storage",
  options: { sizeBytes: 4 * 1024 * 1024 },
};

export interface TestRedirServer {
  readonly server: UsbredirServer;
  readonly log: CollectingLogger;
  readonly port: number;
  connect(options?: Parameters<typeof UsbredirClient.connect>[1]): Promise<UsbredirClient>;
  close(): Promise<void>;
}

export async function startRedirServer(
  device: DeviceSpec = LOOPBACK,
  options: Partial<UsbredirServerOptions> = {},
): Promise<TestRedirServer> {
  const log = new CollectingLogger();
  const server = await UsbredirServer.start({ device, listen: { port: 0 }, logger: log, ...options });
  const port = server.address!.port;
  const clients: UsbredirClient[] = [];
  return {
    server,
    log,
    port,
    async connect(o) {
      const c = await UsbredirClient.connect(port, o);
      clients.push(c);
      return c;
    },
    async close() {
      for (const c of clients) c.close();
      await server.close();
    },
  };
}

/** One round of a loopback echo through `client` (bulk OUT on 0x01, back IN on 0x81), checked; for HonestLoop. */
export function echoRound(client: UsbredirClient): (i: number) => Promise<void> {
  return async (i) => {
    const data = pattern(4096, i);
    const w = await client.bulk(0x01, data).reply;
    const r = await client.bulk(0x81, data.length).reply;
    if (
      w.status !== RedirStatus.SUCCESS ||
      r.status !== RedirStatus.SUCCESS ||
      Buffer.compare(r.data, data) !== 0
    )
      throw new Error(`echo round ${i}: the data came back different (statuses ${w.status}, ${r.status})`);
  };
}
