/**
 * `usbvirt redirect`: one device to a QEMU virtual machine over usbredir, in the manner of usbredir's
 * own `usbredirect` tool. usbvirt listens (QEMU's usb-redir chardev connects, and reconnects with
 * `reconnect=N`) or connects to a chardev that listens (`server=on`), again with backoff whenever the
 * link drops. The device is any that `serve --device` takes, or one imported from a USB/IP server.
 */
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { parseHostPort } from "../usbip/attach.js";
import { LOG_FORMATS, type LogFormat, streamLogger, type UsbipLogger } from "../usbip/log.js";
import { UsbredirServer } from "../usbredir/server.js";
import { type CommandSpec, parseSize } from "./args.js";
import { EngineWatch, packageVersion, socketActivationFd, storageFileWarnings } from "./daemon.js";
import { UsageError } from "./errors.js";

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
    {
      name: "storage-size",
      kind: "string",
      value: "SIZE",
      help: "size of the emulated storage device (default 64M)",
    },
    {
      name: "storage-file",
      kind: "string",
      value: "PATH",
      help: "back the emulated storage device by this file",
    },
    { name: "quiet", kind: "boolean", help: "log only warnings and errors" },
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
  logger?: UsbipLogger;
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
  const logger: UsbipLogger = options.quiet === true ? { ...base, info: () => {} } : base;
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
  io.onRedirecting?.(server);
  const stop = await Promise.race([
    io.stopSignal().then((signal) => ({ signal })),
    watch.died.then((died) => ({ died })),
  ]);
  watch.dispose();
  if ("died" in stop) logger.error(`${stop.died}: exiting with status 1 so a supervisor can restart usbvirt`);
  else logger.info(`${stop.signal}: shutting down`);
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
