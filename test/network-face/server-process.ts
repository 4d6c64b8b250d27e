/**
 * A network server in a process of its own, for the hostile-peer tests that measure what a peer makes the
 * server hold (its resident memory, read from /proc by the parent) and read its real text log (stderr, as
 * `usbvirt serve` and `usbvirt redirect` write it). Started through tsx with one JSON argument:
 * `{ "protocol": "usbip" | "usbredir", "options": { ... } }`; the options go to the server as given (the
 * logger is the real text logger on stderr). Prints `{"port": N}` on stdout once listening; answers each
 * IPC message `"stats"` with the server's stats(); a "close" message closes the server and exits.
 */
import { streamLogger } from "../../src/network-face/log.js";
import { UsbipServer } from "../../src/usbip-server/server.js";
import { UsbredirServer } from "../../src/usbredir/server.js";

interface Spec {
  readonly protocol: "usbip" | "usbredir";
  readonly options: Record<string, unknown>;
}

const spec = JSON.parse(process.argv[2] ?? "{}") as Spec;
const logger = streamLogger("text");

async function main(): Promise<void> {
  let stats: () => unknown;
  let close: () => Promise<void>;
  let port: number;
  if (spec.protocol === "usbip") {
    const server = await UsbipServer.start({
      devices: [{ kind: "emulated", name: "loopback" }],
      port: 0,
      logger,
      ...spec.options,
    } as Parameters<typeof UsbipServer.start>[0]);
    stats = () => server.stats();
    close = () => server.close();
    port = server.address.port;
  } else {
    const server = await UsbredirServer.start({
      device: { kind: "emulated", name: "loopback" },
      listen: { port: 0 },
      logger,
      ...spec.options,
    } as Parameters<typeof UsbredirServer.start>[0]);
    stats = () => server.stats();
    close = () => server.close();
    port = server.address!.port;
  }
  process.on("message", (m) => {
    if (m === "stats") process.send?.({ stats: stats() });
    else if (m === "close") void close().then(() => process.exit(0));
  });
  process.stdout.write(`${JSON.stringify({ port })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`server-process: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
