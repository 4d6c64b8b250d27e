/**
 * `usbvirt redirect`: one device to a QEMU virtual machine over usbredir, in the manner of usbredir's
 * own `usbredirect` tool. usbvirt listens (QEMU's usb-redir chardev connects, and reconnects with
 * `reconnect=N`) or connects to a chardev that listens (`server=on`), again with backoff whenever the
 * link drops. The device is any that `serve --device` takes, or one imported from a USB/IP server.
 */
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { type FaceLogger, LOG_FORMATS, type LogFormat, streamLogger } from "../network-face/log.js";
import { parseHostPort } from "../usbip-attach/attach.js";
import { UsbredirServer } from "../usbredir/server.js";
import {
  type CommandSpec,
  METRICS_OPTION,
  parseSize,
  QUIET_OPTION,
  STORAGE_FILE_OPTION,
  STORAGE_SIZE_OPTION,
} from "./args.js";
import { EngineWatch, packageVersion, socketActivationFd, storageFileWarnings } from "./daemon.js";
import { UsageError } from "./errors.js";
import type { ExportEvent, ExportingServer, ExportListener } from "./exporting-server.js";
import { MetricsEndpoint, parseMetricsAddress } from "./metrics.js";
import { StatusTracker } from "./status-page.js";

export const REDIRECT: CommandSpec = {
  name: "redirect",
  summary: "Redirect one device to a QEMU virtual machine over usbredir (QEMU's usb-redir device).",
  positionals: [],
  options: [
    {
      name: "device",
      kind: "string",
      value: "SPEC",
      help: "the device: loopback | keyboard | storage | VID:PID | BUS-PORT | serial=S | usbip://HOST[:PORT]/BUSID",
    },
    {
      name: "listen",
      kind: "string",
      value: "[HOST:]PORT",
      help: "listen for QEMU's chardev to connect (host 127.0.0.1 unless given)",
    },
    {
      name: "connect",
      kind: "string",
      value: "HOST:PORT",
      help: "connect to QEMU's chardev (server=on); reconnect with backoff when the link drops",
    },
    {
      name: "allow-client",
      kind: "string",
      multiple: true,
      value: "ADDR[/BITS]",
      help: "with --listen: accept connections only from these addresses or subnets",
    },
    STORAGE_SIZE_OPTION,
    STORAGE_FILE_OPTION,
    QUIET_OPTION,
    METRICS_OPTION,
    {
      name: "log-format",
      kind: "string",
      value: "text|json",
      help: "log lines as text (default) or one JSON object per line",
    },
  ],
  details: `One device per connection, as usbredir defines. In listen mode the device goes to one VM at a
time; when the VM disconnects its transfers are cancelled, the device is released and the next
connection gets it. SIGINT/SIGTERM: transfers cancelled, device released, exit 0.

QEMU, usbvirt listening (usbvirt redirect --device storage --listen 4000):
  qemu-system-x86_64 ... -device qemu-xhci,id=xhci \\
    -chardev socket,id=usbredir0,host=127.0.0.1,port=4000,reconnect=2 \\
    -device usb-redir,chardev=usbredir0,bus=xhci.0
QEMU listening (usbvirt redirect --device storage --connect 127.0.0.1:4000):
  ... -chardev socket,id=usbredir0,host=127.0.0.1,port=4000,server=on,wait=off ...`,
};

export interface RedirectIo {
  out(text: string): void;
  stopSignal(): Promise<string>;
  logger?: FaceLogger;
  /** Called once the server is up (tests learn the port here). */
  onRedirecting?: (server: UsbredirServer) => void;
}

/** `usbip://HOST[:PORT]/BUSID` → a USB/IP device spec; null when `text` is not such a URL. */
export function usbipSpecFromUrl(text: string): DeviceSpec | null {
  if (!text.startsWith("usbip://")) return null;
  const rest = text.slice("usbip://".length);
  const slash = rest.lastIndexOf("/");
  const busid = slash < 0 ? "" : rest.slice(slash + 1);
  if (slash < 0 || !/^[0-9]+-[0-9.]+$/.test(busid)) {
    throw new UsageError("redirect", `"${text}" is not usbip://HOST[:PORT]/BUSID (bus id like 1-1)`);
  }
  try {
    const { host, port } = parseHostPort(rest.slice(0, slash));
    return { kind: "usbip", host, port, busid };
  } catch (err) {
    throw new UsageError("redirect", `"${text}": ${(err as Error).message}`);
  }
}

/** `[HOST:]PORT` for --listen (port 0 picks a free one). */
function listenAddress(text: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(text);
  const port = m === null ? -1 : Number(m[2]);
  if (m === null || port > 65535) {
    throw new UsageError("redirect", `--listen "${text}" is not [HOST:]PORT with a port in 0..65535`);
  }
  const host = m[1] === undefined ? "127.0.0.1" : m[1].replace(/^\[(.*)\]$/, "$1");
  return { host, port };
}

export async function redirectCommand(
  options: Readonly<Record<string, string | boolean | string[] | undefined>>,
  io: RedirectIo,
  deviceFromSelector: (text: string, storage: Record<string, unknown>) => DeviceSpec,
): Promise<number> {
  const device = options.device;
  if (typeof device !== "string") throw new UsageError("redirect", "--device SPEC is required");
  const listen = typeof options.listen === "string" ? options.listen : undefined;
  const connect = typeof options.connect === "string" ? options.connect : undefined;
  const activated = socketActivationFd();
  if (listen !== undefined && connect !== undefined) {
    throw new UsageError("redirect", "--listen and --connect exclude each other");
  }
  if (listen === undefined && connect === undefined && activated === null) {
    throw new UsageError("redirect", "give one of --listen [HOST:]PORT and --connect HOST:PORT");
  }
  const sizeText = typeof options["storage-size"] === "string" ? options["storage-size"] : undefined;
  const size = sizeText === undefined ? 64 * 1024 * 1024 : parseSize(sizeText);
  if (size === null || size === undefined) {
    throw new UsageError("redirect", `--storage-size "${sizeText}" is not a size like 64M`);
  }
  const file = typeof options["storage-file"] === "string" ? options["storage-file"] : undefined;
  const storage: Record<string, unknown> = { sizeBytes: size, ...(file !== undefined ? { file } : {}) };
  const spec = usbipSpecFromUrl(device) ?? deviceFromSelector(device, storage);

  const format = options["log-format"] ?? "text";
  if (typeof format !== "string" || !LOG_FORMATS.includes(format as LogFormat)) {
    throw new UsageError("redirect", `--log-format must be text or json, not "${String(format)}"`);
  }
  const base = io.logger ?? streamLogger(format as LogFormat);
  const quietable: FaceLogger = options.quiet === true ? { ...base, info: () => {} } : base;
  const metricsText = typeof options.metrics === "string" ? options.metrics : undefined;
  let metricsAt: { host: string; port: number } | null = null;
  try {
    metricsAt = metricsText !== undefined ? parseMetricsAddress(metricsText) : null;
  } catch (err) {
    throw new UsageError("redirect", `--metrics ${(err as Error).message}`);
  }
  // The status page keeps the device's last log lines: every line the server logs is about its one device.
  const tracker = metricsAt !== null ? new StatusTracker() : null;
  const tracked = tracker?.wrap(quietable) ?? quietable;
  const logger: FaceLogger = {
    info: (m, f) => tracked.info(m, { ...f, busid: REDIRECT_BUSID }),
    warn: (m, f) => tracked.warn(m, { ...f, busid: REDIRECT_BUSID }),
    error: (m, f) => tracked.error(m, { ...f, busid: REDIRECT_BUSID }),
  };
  for (const w of storageFileWarnings([spec], sizeText !== undefined)) logger.warn(w);
  const allow = Array.isArray(options["allow-client"]) ? options["allow-client"] : [];
  if (connect !== undefined && allow.length > 0) {
    throw new UsageError("redirect", "--allow-client applies to --listen only");
  }

  const where = connect !== undefined ? parseConnect(connect) : null;
  const server = await UsbredirServer.start({
    device: spec,
    logger,
    allow,
    version: `usbvirt ${packageVersion()}`,
    ...(where !== null
      ? { connect: where }
      : activated !== null && listen === undefined
        ? { listenFd: activated }
        : { listen: listenAddress(listen!) }),
  });
  const watch = new EngineWatch(server.connection);
  let metrics: MetricsEndpoint | null = null;
  if (metricsAt !== null && tracker !== null) {
    const view = redirectStatusView(server);
    try {
      tracker.attach(view, packageVersion());
      metrics = await MetricsEndpoint.start(view, metricsAt, packageVersion(), tracker);
    } catch (err) {
      tracker.close();
      watch.dispose();
      await server.close();
      throw new Error(`cannot serve metrics on ${metricsText}: ${(err as Error).message}`);
    }
  }
  const bound = server.address;
  io.out(`usbvirt: redirecting ${server.name} (${describeSpec(spec)}) over usbredir\n`);
  if (bound !== null) {
    const host = bound.host.includes(":") ? `[${bound.host}]` : bound.host;
    io.out(
      `listening on ${host}:${bound.port}; in QEMU:  -device qemu-xhci,id=xhci ` +
        `-chardev socket,id=usbredir0,host=${bound.host},port=${bound.port},reconnect=2 ` +
        "-device usb-redir,chardev=usbredir0,bus=xhci.0\n",
    );
  } else {
    io.out(`connecting to ${where!.host}:${where!.port} (QEMU: -chardev socket,...,server=on,wait=off)\n`);
  }
  if (metrics !== null) {
    const m = metrics.address;
    const at = `http://${m.host.includes(":") ? `[${m.host}]` : m.host}:${m.port}`;
    io.out(`metrics: ${at}/metrics\nstatus page: ${at}/\n`);
  }
  io.onRedirecting?.(server);
  const stop = await Promise.race([
    io.stopSignal().then((signal) => ({ signal })),
    watch.died.then((died) => ({ died })),
  ]);
  watch.dispose();
  if ("died" in stop) logger.error(`${stop.died}: exiting with status 1 so a supervisor can restart usbvirt`);
  else logger.info(`${stop.signal}: shutting down`);
  tracker?.close();
  await metrics?.close();
  await server.close();
  return "died" in stop ? 1 : 0;
}

function parseConnect(text: string): { host: string; port: number } {
  try {
    return parseHostPort(text, -1);
  } catch (err) {
    throw new UsageError("redirect", `--connect ${(err as Error).message}`);
  }
}

/** The one device's label on the status page and in the metrics (its root port on the engine). */
export const REDIRECT_BUSID = "1-1";

/**
 * The redirect server as the metrics endpoint and status page read a server: one device (REDIRECT_BUSID),
 * held by the VMM it is announced to ("import" on connect, "detach" when the VMM goes).
 */
export function redirectStatusView(server: UsbredirServer): ExportingServer {
  const wrapped = new Map<ExportListener, (peer: string) => void>();
  const eventOf = (e: ExportEvent) => (e === "import" ? "connect" : "disconnect");
  return {
    connection: server.connection,
    get devices() {
      const { vendorId, productId } = server.identity;
      return [
        {
          busid: REDIRECT_BUSID,
          port: 1,
          name: server.name,
          record: { idVendor: vendorId, idProduct: productId },
        },
      ];
    },
    stats() {
      const s = server.stats();
      const held = s.announced && s.peer !== null;
      return {
        clients: s.peer !== null ? 1 : 0,
        imported: held ? [REDIRECT_BUSID] : [],
        perDevice: held ? [{ busid: REDIRECT_BUSID, client: s.peer!, urbs: s.urbs }] : [],
        failed: s.failed !== null ? [{ busid: REDIRECT_BUSID, reason: s.failed, gone: s.gone }] : [],
      };
    },
    on(event, listener) {
      const w = (peer: string) => listener(REDIRECT_BUSID, peer);
      wrapped.set(listener, w);
      server.on(eventOf(event), w);
    },
    off(event, listener) {
      const w = wrapped.get(listener);
      if (w !== undefined) server.off(eventOf(event), w);
      wrapped.delete(listener);
    },
  };
}
