/**
 * The `usbvirt` commands: list, serve (the standalone USB/IP passthrough
 * host), attach (the USB/IP client side), help. `run` returns the exit
 * status: 0 success, 1 failure, 2 usage error. Everything a test needs to
 * replace (output, stop signal, logger, host listing) comes in through CliIo.
 */

import { EMULATED_DEVICES, isEmulatedDeviceName } from "../devices/emulated/index.js";
import { filterFromLists, needsSerial } from "../devices/host/filter.js";
import { parseSelector, specFromSelector } from "../devices/host/select.js";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { discover } from "../discovery/browser.js";
import { parseDeviceSelector } from "../discovery/select.js";
import { escapeControls, escapeForTerminal, type FaceLogger } from "../network-face/log.js";
import type { HostRow } from "../toolstack/toolstack.js";
import { listRemote } from "../usbip/client.js";
import { USBIP_PORT } from "../usbip/protocol.js";
import {
  attachRemote,
  describeEnumerated,
  hex4,
  loopbackCheck,
  parseHostPort,
} from "../usbip-attach/attach.js";
import { HostExports, type HotplugSource, libusbHotplugSource } from "../usbip-server/host-exports.js";
import { UsbipServer } from "../usbip-server/server.js";
import type { UsbredirServer } from "../usbredir/server.js";
import { announceDaemon, announcedTls, type ServerAnnouncement } from "./announce.js";
import {
  ANNOUNCE_OPTION,
  CONFIG_OPTION,
  CONTROL_OPTION,
  type CommandSpec,
  commandHelp,
  LOG_FORMAT_OPTION,
  METRICS_OPTION,
  NAME_OPTION,
  parseArgs,
  QUIET_OPTION,
  STATE_DIR_OPTION,
  STORAGE_FILE_OPTION,
  STORAGE_SIZE_OPTION,
  STORAGE_SPEED_OPTION,
  secondsOption,
} from "./args.js";
import { ATTACH_SETTINGS, attachEntries, millisecondsOf } from "./attach-config.js";
import { peerBoundOptions, peerBoundsOf, RENAMED_BOUND_FLAGS } from "./bound-settings.js";
import {
  commandConfig,
  SERVE_MAX_URBS_DEFAULT,
  SERVE_SETTINGS,
  storageBytes,
  storageSpeedOption,
} from "./config.js";
import { CTL, ctlCommand } from "./ctl.js";
import { packageVersion, socketActivationFd, storageFileWarnings } from "./daemon.js";
import {
  Daemon,
  daemonLog,
  hostForPeers,
  listenErrorText,
  logListenerNotes,
  USBIP_EXPOSURE,
} from "./daemon-run.js";
import { DEFAULT_DISCOVER_S, DeviceFollower, discoveryTable } from "./discover.js";
import { UsageError } from "./errors.js";
import { REDIRECT, redirectCommand } from "./redirect.js";
import { allowedExports, checkExplicitDevices, planPorts } from "./serve-hosts.js";
import { STATUS, statusCommand } from "./status.js";
import { CONTROL_SPARE_PORTS, type Steering, startSteering } from "./steering.js";
import {
  METRICS_TLS_OPTIONS,
  metricsTlsOptions,
  TLS_CERT_OPTION,
  TLS_CLIENT_OPTIONS,
  TLS_KEY_OPTION,
  TLS_SERVER_OPTIONS,
  tlsClientOptions,
  tlsServerOptions,
} from "./tls-flags.js";

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** Resolves (with the signal's name) when serve / attach should stop; default SIGINT or SIGTERM. */
  stopSignal?: () => Promise<string>;
  /** Called once serve listens (tests learn the port here). */
  onListening?: (server: UsbipServer) => void;
  /** Called once redirect listens or dials (tests learn the port here). */
  onRedirecting?: (server: UsbredirServer) => void;
  logger?: FaceLogger;
  /** Replaces the libusb listing (tests). */
  listHostDevices?: () => Promise<readonly HostDeviceRow[]>;
  /** Replaces libusb's hotplug events for serve (tests). */
  hotplugSource?: HotplugSource;
}

/** What `list` needs of a host device (src/devices/host/enumerate.ts HostDeviceInfo). */
export interface HostDeviceRow {
  readonly vendorId: number;
  readonly productId: number;
  readonly portPath: string;
  readonly speed?: string;
  readonly serial?: string;
  readonly manufacturer?: string;
  readonly product?: string;
  /** For the filter: bDeviceClass, bcdDevice and the interface classes (HostDeviceInfo has them). */
  readonly deviceClass?: number;
  readonly bcdDevice?: number;
  readonly interfaceClasses?: readonly number[];
}

export const defaultIo: CliIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
};

// ---------------------------------------------------------------- command specs

const DEFAULT_TIMEOUT_S = 5;
const DEFAULT_KEEPALIVE_S = 5;

const TIMEOUT_OPTION = {
  name: "timeout",
  kind: "string",
  value: "SECONDS",
  help: `give up when a USB/IP server does not answer within this time (default ${DEFAULT_TIMEOUT_S})`,
} as const;

const LIST: CommandSpec = {
  name: "list",
  summary:
    "List host USB devices (through libusb) and the built-in emulated devices, or a USB/IP server's exports.",
  positionals: [],
  options: [
    { name: "json", kind: "boolean", help: "print JSON instead of a table" },
    {
      name: "remote",
      kind: "string",
      value: "HOST[:PORT]",
      help: "list the devices a USB/IP server exports instead",
    },
    { name: "no-strings", kind: "boolean", help: "do not open host devices to read their strings" },
    {
      name: "discover",
      kind: "boolean",
      help: "list the usbvirt servers announcing on the local network (multicast DNS) and their devices",
    },
    TIMEOUT_OPTION,
  ],
  details: `With --discover, --timeout is how long to listen for answers (default ${DEFAULT_DISCOVER_S} s).`,
};

const SERVE: CommandSpec = {
  name: "serve",
  summary: "Export devices over USB/IP (TCP, version 0x0111) so Linux's usbip / vhci-hcd can import them.",
  positionals: [],
  options: [
    { name: "bind", kind: "string", value: "ADDR", help: "address to listen on (default 127.0.0.1)" },
    {
      name: "port",
      kind: "string",
      value: "N",
      help: `TCP port (default ${USBIP_PORT}; 0 picks a free one)`,
    },
    {
      name: "device",
      kind: "string",
      multiple: true,
      value: "SEL",
      help: "export a device: loopback | keyboard | storage | VID:PID | BUS-PORT (1-1.2) | serial=S",
    },
    {
      name: "filter",
      kind: "string",
      multiple: true,
      value: "RULES",
      help: 'host device rules, first match wins: "0x03,-1,-1,-1,0|..." (usbredir) or "deny class=hid|allow *"',
    },
    {
      name: "allow",
      kind: "string",
      multiple: true,
      value: "SEL",
      help: "allow host devices matching SEL, and export every one plugged in at start",
    },
    {
      name: "deny",
      kind: "string",
      multiple: true,
      value: "SEL",
      help: "never export host devices matching SEL (class=hid, VID:PID, 1-1.2, serial=S; explicit ones too)",
    },
    {
      name: "match-new",
      kind: "boolean",
      help: "also export every host device plugged in later that passes the filter",
    },
    {
      name: "allow-client",
      kind: "string",
      multiple: true,
      value: "ADDR[/BITS]",
      help: "accept USB/IP clients only from these addresses or subnets",
    },
    STORAGE_SIZE_OPTION,
    STORAGE_SPEED_OPTION,
    STORAGE_FILE_OPTION,
    CONFIG_OPTION,
    QUIET_OPTION,
    LOG_FORMAT_OPTION,
    METRICS_OPTION,
    ...METRICS_TLS_OPTIONS,
    ANNOUNCE_OPTION,
    NAME_OPTION,
    ...TLS_SERVER_OPTIONS,
    CONTROL_OPTION,
    STATE_DIR_OPTION,
    ...peerBoundOptions(SERVE_MAX_URBS_DEFAULT),
  ],
  renamed: RENAMED_BOUND_FLAGS,
  details: `With no device selected, serve exports the emulated loopback, keyboard and a 64 MiB storage device.
Host devices pass the filter first: --filter rules in order, then --deny, then --allow; the first rule that
matches decides; then hubs (class 9) are denied; with no match a device is allowed unless an allow rule was
given. A class rule is checked against the device class and each interface class (as usbredir does).
Devices get bus ids 1-1, 1-2, … in the order given. Every import, detach and error is logged with the
client's address. SIGINT/SIGTERM: in-flight URBs are completed or cancelled, devices released, exit 0.
If the engine dies for good (its backend lost more often than it may be restarted) serve logs it and exits 1.
Under systemd socket activation (LISTEN_FDS/LISTEN_PID) serve listens on the passed socket, not --bind/--port.
A --storage-file is locked (FILE.lock holds the pid): a second serve on the same file fails.
With --control, 'usbvirt ctl' binds, unbinds, detaches, assigns and releases devices while serve runs
(${CONTROL_SPARE_PORTS} ports are kept free for runtime binds; with no device selected it starts with none);
what it changed is kept in --state-dir and restored.

Config file (JSON): {"bind": "0.0.0.0", "port": 3240, "devices": ["loopback", "1209:0001",
  {"kind": "emulated", "name": "storage", "options": {"sizeBytes": 16777216}}],
  "allow": ["1d6b:*"], "deny": [], "allowClients": ["192.168.1.0/24"], "storageSize": "64M", "storageFile": "disk.img"}
Each per-client bound's key is its flag in camelCase ("maxConnections": 16 for --max-connections 16); redirect
takes the same ones.

On a Linux client (modprobe vhci-hcd):  usbip list -r HOST   then   usbip attach -r HOST -b 1-1`,
};

const ATTACH: CommandSpec = {
  name: "attach",
  summary:
    "Import a device from a USB/IP server (usbvirt serve or Linux usbipd) onto port 1 of a local virtual host controller.",
  positionals: ["HOST[:PORT]?", "BUSID?"],
  options: [
    {
      name: "device",
      kind: "string",
      multiple: true,
      value: "SEL",
      help: "instead of HOST BUSID: the one free device SEL names (VID:PID, serial=S, class=C) among the servers announcing on the network, followed to whichever server announces it next (repeatable)",
    },
    CONFIG_OPTION,
    {
      name: "discover-timeout",
      kind: "string",
      value: "SECONDS",
      help: `with --device: how long each look at the network listens (default ${DEFAULT_DISCOVER_S})`,
    },
    {
      name: "check",
      kind: "boolean",
      help: "if the device is usbvirt's loopback, move data through it, then exit 0 (verified) or 1",
    },
    TIMEOUT_OPTION,
    {
      name: "keepalive",
      kind: "string",
      value: "SECONDS",
      help: `check on a quiet server after this long (default ${DEFAULT_KEEPALIVE_S})`,
    },
    {
      name: "no-reconnect",
      kind: "boolean",
      help: "exit 1 when the link is lost instead of reconnecting",
    },
    ...TLS_CLIENT_OPTIONS,
    TLS_CERT_OPTION,
    TLS_KEY_OPTION,
  ],
  details: `Without --check the device stays attached until SIGINT/SIGTERM (exit 0). If the server closes the
connection, or stays silent for --keepalive and then does not answer a status request within --timeout,
the device is disconnected (URBs in flight end with -ESHUTDOWN), then attach reconnects with exponential
backoff (0.5 s doubling up to 30 s, with jitter) and imports the same bus id again; each step is logged.
With --no-reconnect it says so and exits 1 instead.
With --device SEL (no HOST BUSID) the servers announcing on the network (serve --announce) are asked which
has a free device SEL matches: one is imported; several are an error listing them (exit 1); none is waited
for. When it is lost, attach asks again on the same schedule and imports it from whichever server has it.
A server that requires TLS is reached with --tls-cert/--tls-key (its clients are checked) and verified with
--tls-ca or --tls-server-fingerprint; with neither, the fingerprint it announces is pinned (trust on first
discovery: anyone on the link can announce; prefer --tls-ca). With TLS settings given, a server announcing
no TLS is not used. --device may be repeated; --config FILE lists the devices, each with its own TLS
settings (schema/usbvirt-attach.schema.json; contrib/usbvirt-attach.service runs it). attach exits 1 once
every device has ended (an ambiguous selector, or lost with --no-reconnect).`,
};

const COMMANDS: readonly CommandSpec[] = [LIST, SERVE, ATTACH, REDIRECT, STATUS, CTL];

const USAGE = `usbvirt — USB passthrough engine for virtual machine monitors

usage: usbvirt <command> [options]

commands:
  help [COMMAND]             show this text, or a command's help
  list                       list host USB devices and built-in emulated devices
  serve                      export devices over USB/IP (default 127.0.0.1:${USBIP_PORT})
  attach HOST[:PORT] BUSID   import a device from a USB/IP server onto a local virtual controller
  redirect                   redirect one device to a QEMU virtual machine over usbredir
  status                     show a running server's devices and counters (serve --metrics)
  ctl VERB [ARG]             steer a running serve: list, bind, unbind, detach, assign, release (serve --control)

usbvirt --version (-V) prints the version.

Run 'usbvirt <command> --help' for a command's options.
`;

// ---------------------------------------------------------------- entry

export async function run(argv: readonly string[], given: CliIo = defaultIo): Promise<number> {
  // What a command prints may hold a peer's or a device's strings: no control character reaches the terminal.
  const io: CliIo = {
    ...given,
    out: (t) => given.out(escapeForTerminal(t)),
    err: (t) => given.err(escapeForTerminal(t)),
  };
  const [command, ...rest] = argv;
  if (command === "--version" || command === "-V") {
    io.out(`usbvirt ${packageVersion()}\n`);
    return 0;
  }
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    const topic = command === "help" ? rest[0] : undefined;
    const spec = COMMANDS.find((c) => c.name === topic);
    if (topic !== undefined && spec === undefined) {
      io.err(`usbvirt: unknown command '${topic}'\n\n${USAGE}`);
      return 2;
    }
    io.out(spec !== undefined ? commandHelp(spec) : USAGE);
    return 0;
  }
  const spec = COMMANDS.find((c) => c.name === command);
  if (spec === undefined) {
    io.err(`usbvirt: unknown command '${command}'\n\n${USAGE}`);
    return 2;
  }
  try {
    const parsed = parseArgs(spec, rest);
    if (parsed.help) {
      io.out(commandHelp(spec));
      return 0;
    }
    switch (spec.name) {
      case "list":
        return await listCommand(parsed.options, io);
      case "serve":
        return await serveCommand(parsed.options, io);
      case "status":
        return await statusCommand(parsed.options, io);
      case "ctl":
        return await ctlCommand(parsed.positionals, parsed.options, io);
      case "redirect":
        return await redirectCommand(
          parsed.options,
          {
            out: io.out,
            stopSignal: io.stopSignal ?? signals,
            ...(io.logger !== undefined ? { logger: io.logger } : {}),
            ...(io.onRedirecting !== undefined ? { onRedirecting: io.onRedirecting } : {}),
            listHostDevices: async () => {
              const listing = await loadHostListing(io, false);
              if ("error" in listing) throw new Error(listing.error);
              return listing.rows.map(pluggedOf);
            },
          },
          (text, storage) => deviceFromSelector(text, storage, "redirect"),
        );
      default:
        return await attachCommand(parsed.positionals, parsed.options, io);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`usbvirt ${err.command}: ${err.message}\nRun 'usbvirt ${err.command} --help' for usage.\n`);
      return 2;
    }
    io.err(`usbvirt ${spec.name}: ${listenErrorText(err) ?? (err as Error).message ?? String(err)}\n`);
    return 1;
  }
}

function signals(): Promise<string> {
  return new Promise((resolve) => {
    const on = (name: string) => () => {
      process.off("SIGINT", onInt);
      process.off("SIGTERM", onTerm);
      resolve(name);
    };
    const onInt = on("SIGINT");
    const onTerm = on("SIGTERM");
    process.once("SIGINT", onInt);
    process.once("SIGTERM", onTerm);
  });
}

// ---------------------------------------------------------------- list

type Options = Parsed["options"];
type Parsed = ReturnType<typeof parseArgs>;

async function loadHostListing(
  io: CliIo,
  strings: boolean,
): Promise<{ rows: readonly HostDeviceRow[] } | { error: string }> {
  try {
    if (io.listHostDevices !== undefined) return { rows: await io.listHostDevices() };
    // Loaded on demand: the libusb backend may be absent or unable to load on this machine.
    const modulePath = "../devices/host/enumerate.js";
    const mod = (await import(modulePath)) as {
      listHostDevices?: (o: { strings: boolean }) => Promise<HostDeviceRow[]>;
    };
    if (typeof mod.listHostDevices !== "function")
      return { error: "this build has no libusb backend (listHostDevices missing)" };
    return { rows: await mod.listHostDevices({ strings }) };
  } catch (err) {
    return { error: (err as Error).message ?? String(err) };
  }
}

async function listCommand(options: Options, io: CliIo): Promise<number> {
  const json = options.json === true;
  if (options.discover === true) {
    if (options.remote !== undefined)
      throw new UsageError("list", "--discover and --remote exclude each other");
    const timeoutMs = secondsOption(options, "timeout", DEFAULT_DISCOVER_S, "list");
    const result = await discover({ timeoutMs });
    io.out(json ? `${JSON.stringify(result, null, 2)}\n` : discoveryTable(result));
    return 0;
  }
  if (typeof options.remote === "string") {
    const { host, port } = hostPort(options.remote, "list");
    const timeoutMs = secondsOption(options, "timeout", DEFAULT_TIMEOUT_S, "list");
    const devices = await listRemote({ host, port, timeoutMs });
    if (json) {
      io.out(`${JSON.stringify({ server: `${host}:${port}`, devices }, null, 2)}\n`);
      return 0;
    }
    io.out(`USB/IP devices exported by ${host}:${port}\n`);
    if (devices.length === 0) io.out("  (none)\n");
    for (const d of devices) {
      const itfs = d.interfaces
        .map((i) => `${hex2(i.cls)}/${hex2(i.subclass)}/${hex2(i.protocol)}`)
        .join(" ");
      io.out(
        `  ${escapeControls(d.busid).padEnd(8)} ${hex4(d.idVendor)}:${hex4(d.idProduct)}  speed ${d.speed}  interfaces ${itfs}\n`,
      );
    }
    return 0;
  }
  const host = await loadHostListing(io, options["no-strings"] !== true);
  if (json) {
    io.out(
      `${JSON.stringify(
        {
          emulated: EMULATED_DEVICES.map((d) => ({ name: d.name, description: d.description })),
          host: "rows" in host ? host.rows : null,
          ...("error" in host ? { hostError: `host devices cannot be listed: ${host.error}` } : {}),
        },
        null,
        2,
      )}\n`,
    );
    return 0;
  }
  io.out("EMULATED DEVICES (serve --device NAME)\n");
  const width = Math.max(...EMULATED_DEVICES.map((d) => d.name.length));
  for (const d of EMULATED_DEVICES) io.out(`  ${d.name.padEnd(width)}  ${d.description}\n`);
  io.out("\nHOST DEVICES (serve --device VID:PID | BUS-PORT | serial=S)\n");
  if ("error" in host) {
    io.out(`  host devices cannot be listed: ${host.error}\n`);
    return 0;
  }
  if (host.rows.length === 0) io.out("  (none found)\n");
  for (const d of host.rows) {
    // The device's own strings: no line break or escape of theirs reaches the terminal.
    const name = escapeControls(
      [d.manufacturer, d.product].filter((x) => x !== undefined && x !== "").join(" "),
    );
    const serial = d.serial !== undefined ? `  serial=${escapeControls(d.serial)}` : "";
    io.out(
      `  ${d.portPath.padEnd(10)} ${hex4(d.vendorId)}:${hex4(d.productId)}  ${(d.speed ?? "").padEnd(6)} ${name}${serial}\n`,
    );
  }
  return 0;
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, "0");
}

function hostPort(text: string, command: string): { host: string; port: number } {
  try {
    return parseHostPort(text);
  } catch (err) {
    throw new UsageError(command, (err as Error).message);
  }
}

// ---------------------------------------------------------------- serve

/** One --device selector → a DeviceSpec (emulated by name, else a host selector). */
export function deviceFromSelector(
  text: string,
  storage: Record<string, unknown>,
  command = "serve",
): DeviceSpec {
  const name = text.startsWith("emulated:") ? text.slice("emulated:".length) : text;
  if (isEmulatedDeviceName(name)) {
    return name === "storage" ? { kind: "emulated", name, options: storage } : { kind: "emulated", name };
  }
  if (text.startsWith("emulated:")) {
    throw new UsageError(
      command,
      `unknown emulated device "${name}"; known: ${EMULATED_DEVICES.map((d) => d.name).join(", ")}`,
    );
  }
  try {
    return specFromSelector(parseSelector(text));
  } catch (err) {
    throw new UsageError(
      command,
      `cannot read device "${text}": ${(err as Error).message} (emulated names: ${EMULATED_DEVICES.map((d) => d.name).join(", ")})`,
    );
  }
}

export async function serveCommand(options: Options, io: CliIo): Promise<number> {
  // One schema for both sources (src/cli/config.ts): each is checked whole, then flags win key by key.
  const config = await commandConfig(SERVE_SETTINGS, options);
  if (config.name !== undefined && config.announce !== true)
    throw new UsageError("serve", "--name names the announcement: it needs --announce");
  const bind = config.bind ?? "127.0.0.1";
  const port = config.port ?? USBIP_PORT;
  const storageFile = config.storageFile;
  const storage: Record<string, unknown> = {
    sizeBytes: storageBytes(config.storageSize),
    ...storageSpeedOption(config.storageSpeed),
    ...(storageFile !== undefined ? { file: storageFile } : {}),
  };

  const specs: DeviceSpec[] = (config.devices ?? []).map((d) =>
    typeof d === "string" ? deviceFromSelector(d, storage) : d,
  );
  const allow = config.allow ?? [];
  const matchNew = config.matchNew === true;
  const filterLists = typeof config.filter === "string" ? [config.filter] : (config.filter ?? []);
  const filter = filterFromLists({ filter: filterLists, deny: config.deny ?? [], allow });
  // Host devices are judged even with no rule given: the built-in rule denies hubs.
  let rows: readonly HostDeviceRow[] | null = null;
  const control = config.control !== undefined && config.control !== false ? config.control : null;
  if (allow.length > 0 || matchNew || control !== null || specs.some((s) => s.kind === "host")) {
    const listing = await loadHostListing(io, true);
    if ("rows" in listing) rows = listing.rows;
    if ("error" in listing) {
      for (const [wanted, flag] of [
        [allow.length > 0, "--allow"],
        [matchNew, "--match-new"],
      ] as const) {
        if (wanted) throw new Error(`${flag} needs the host's device list, which failed: ${listing.error}`);
      }
    } else {
      checkExplicitDevices(specs, filter, listing.rows);
      specs.push(...allowedExports(allow, filter, listing.rows, specs));
    }
    if (allow.length > 0 && specs.length === 0 && control === null)
      throw new Error("no host device matches --allow (and none was selected otherwise)");
  }
  if (specs.length === 0 && !matchNew && control === null) {
    specs.push(
      { kind: "emulated", name: "loopback" },
      { kind: "emulated", name: "keyboard" },
      { kind: "emulated", name: "storage", options: storage },
    );
  }
  if (specs.length > 31)
    throw new UsageError("serve", `at most 31 devices can be exported, ${specs.length} selected`);
  const allowClients = config.allowClients ?? [];
  const tls = tlsServerOptions("serve", config);
  const metricsTls = metricsTlsOptions("serve", config);

  // The status page keeps each device's last log lines: it sees every line the log writes.
  const log = daemonLog(config, io.logger);
  const { logger } = log;
  for (const w of storageFileWarnings(specs, config.storageSize !== undefined)) logger.warn(w);
  // With no allow rule the filter is a deny list: everything it does not deny passes.
  if (matchNew && !filter.rules.some((r) => r.action === "allow")) {
    logger.warn(
      "--match-new with no allow rule: every host device plugged in from now on will be exported, " +
        "except hubs and what a deny rule refuses (narrow it with --allow SEL, or an allow rule in --filter)",
    );
  }
  const listenFd = socketActivationFd();
  const plan = planPorts(specs, rows, matchNew);
  // Ports kept free for runtime binds (usbvirt ctl bind), after the config's and --match-new's.
  const sparePorts: number[] = [];
  const devices = [...plan.devices];
  if (control !== null) {
    for (let p = devices.length + 1; p <= Math.min(31, plan.devices.length + CONTROL_SPARE_PORTS); p++) {
      devices.push(null);
      sparePorts.push(p);
    }
  }
  const server = await UsbipServer.start({
    devices,
    host: bind,
    port,
    logger,
    allow: allowClients,
    ...peerBoundsOf(config),
    ...(listenFd !== null ? { listenFd } : {}),
    ...(tls !== null ? { tls } : {}),
  });
  let hotplug: HostExports | null = null;
  if (rows !== null && (plan.wants.length > 0 || matchNew || control !== null)) {
    hotplug = new HostExports({
      server,
      wants: plan.wants,
      filter,
      matchNew,
      freePorts: plan.freePorts,
      log: logger,
      source:
        io.hotplugSource ??
        libusbHotplugSource(needsSerial(filter) || plan.wants.some((w) => w.selector.serial !== undefined)),
    });
    try {
      await hotplug.start();
    } catch (err) {
      await server.close();
      throw new Error(`cannot watch for host devices: ${(err as Error).message}`);
    }
  }
  let announcement: ServerAnnouncement | null = null;
  let steering: Steering | null = null;
  try {
    steering = await startSteering(
      config,
      {
        usbip: server,
        hotplug,
        sparePorts,
        filter,
        specOf: (text) => deviceFromSelector(text, storage),
        listHost: async () => {
          const listing = await loadHostListing(io, needsSerial(filter));
          if ("error" in listing) throw new Error(listing.error);
          return listing.rows.map(pluggedOf);
        },
      },
      logger,
    );
  } catch (err) {
    await hotplug?.stop();
    await server.close();
    throw err;
  }
  const daemon = await Daemon.start({
    view: server,
    log,
    settings: config,
    control: steering?.source ?? null,
    metricsTls,
    close: async () => {
      await announcement?.stop();
      await steering?.close();
      await hotplug?.stop();
      await server.close();
    },
  });
  if (config.announce === true) {
    announcement = await announceDaemon(daemon, log, {
      service: "_usbip._tcp",
      server,
      port: server.address.port,
      name: config.name,
      tls: announcedTls(tls),
    });
  }
  const { host: boundHost, port: boundPort } = server.address;
  const socketPath = server.socketPath;
  io.out(
    `usbvirt: serving ${server.devices.length} device(s) over USB/IP on ${
      socketPath !== null
        ? `the Unix-domain socket ${socketPath || "systemd passed"}`
        : `${boundHost}:${boundPort}`
    }\n`,
  );
  for (const d of server.devices) {
    io.out(`  ${d.busid.padEnd(6)} ${d.name}  (${describeSpec(d.spec)})\n`);
  }
  const shown = hostForPeers(boundHost);
  // Linux's usbip dials TCP only: for a socket file there is no line to give it.
  if (socketPath === null) {
    io.out(
      `on a Linux client:  usbip ${boundPort !== USBIP_PORT ? `--tcp-port ${boundPort} ` : ""}list -r ${shown}` +
        `   then   usbip ${boundPort !== USBIP_PORT ? `--tcp-port ${boundPort} ` : ""}attach -r ${shown} -b ${server.devices[0]?.busid ?? "1-1"}\n`,
    );
  }
  logListenerNotes(logger, {
    bound: socketPath !== null ? { path: socketPath } : { host: boundHost },
    allowClients,
    face: USBIP_EXPOSURE,
    tls,
    activated: listenFd,
    replaces: "--bind/--port",
  });
  io.out(daemon.addresses());
  io.onListening?.(server);
  return await daemon.run(io.stopSignal ?? signals);
}

/** A listed host device as the toolstack reads it. */
function pluggedOf(r: HostDeviceRow): HostRow {
  return { ...r, deviceClass: r.deviceClass ?? 0 };
}

// ---------------------------------------------------------------- attach

async function attachCommand(positionals: readonly string[], options: Options, io: CliIo): Promise<number> {
  if (options.device !== undefined || options.config !== undefined) {
    if (positionals.length > 0)
      throw new UsageError("attach", "--device and --config replace HOST BUSID: give one or the other");
    return await attachBySelectors(options, io);
  }
  if (positionals.length < 2) throw new UsageError("attach", "missing HOST[:PORT] BUSID (or --device SEL)");
  const { host, port } = hostPort(positionals[0]!, "attach");
  const busid = positionals[1]!;
  if (busid.length === 0 || busid.length > 31)
    throw new UsageError("attach", `"${busid}" is not a bus id like 1-1`);
  const timeoutMs = secondsOption(options, "timeout", DEFAULT_TIMEOUT_S, "attach");
  const keepaliveMs = secondsOption(options, "keepalive", DEFAULT_KEEPALIVE_S, "attach");
  const tls = tlsClientOptions("attach", options);
  io.out(`usbvirt: importing ${busid} from ${host}:${port}${tls !== null ? " over TLS" : ""}\n`);
  const att = await attachRemote({
    host,
    port,
    busid,
    ...(tls !== null ? { tls } : {}),
    timeoutMs,
    keepaliveMs,
    reconnect: options["no-reconnect"] !== true,
    log: (line) => io.err(`usbvirt attach: ${line}\n`),
  });
  try {
    io.out(`attached ${busid}: ${describeEnumerated(att.device)}\n`);
    if (options.check === true) {
      const result = await Promise.race([
        loopbackCheck(att),
        att.lost.then((detail) => ({ ok: false, detail })),
      ]);
      io.out(`check ${result.ok ? "passed" : "FAILED"}: ${result.detail}\n`);
      return result.ok ? 0 : 1;
    }
    io.out("the device stays attached; press Ctrl-C to detach\n");
    const end = await Promise.race([
      (io.stopSignal ?? signals)().then((signal) => ({ signal })),
      att.lost.then((reason) => ({ reason })),
    ]);
    if ("reason" in end) {
      io.err(`usbvirt attach: lost ${busid} from ${host}:${port}: ${end.reason}; it is no longer attached\n`);
      return 1;
    }
    io.out(`${end.signal}: detaching\n`);
    return 0;
  } finally {
    await att.close();
  }
}

async function attachBySelectors(options: Options, io: CliIo): Promise<number> {
  if (options.check === true) throw new UsageError("attach", "--check needs HOST BUSID, not --device");
  const config = await commandConfig(ATTACH_SETTINGS, options);
  // A client certificate alone will do: a host that requires TLS announces its certificate's fingerprint.
  const entries = attachEntries(config);
  if (entries.length === 0) throw new UsageError("attach", "--config: the file lists no devices");
  const several = entries.length > 1;
  const followers = entries.map((entry) => {
    const say = several ? `${entry.selector}: ` : "";
    const follower = new DeviceFollower({
      selector: entry.selector,
      rule: parseDeviceSelector(entry.selector),
      discoverMs: millisecondsOf(config.discoverTimeout, DEFAULT_DISCOVER_S),
      timeoutMs: millisecondsOf(config.timeout, DEFAULT_TIMEOUT_S),
      keepaliveMs: millisecondsOf(config.keepalive, DEFAULT_KEEPALIVE_S),
      follow: config.noReconnect !== true,
      log: (line) => io.err(`usbvirt attach: ${say}${line}\n`),
      ...(entry.tls !== null ? { tls: entry.tls } : {}),
    });
    follower.events.on("attached", (att, c) =>
      io.out(
        `attached ${entry.selector} from ${c.server.name} (${c.server.host}:${c.server.port} ${c.device.busid}): ${describeEnumerated(att.device)}\n`,
      ),
    );
    // Each one's end is said as it comes; attach ends when every one has.
    const ended = follower.ended.then((e) => {
      if (e.reason !== "closed") io.err(`usbvirt attach: ${say}${e.reason}\n`);
    });
    return { follower, ended };
  });
  const end = await Promise.race([
    (io.stopSignal ?? signals)().then((signal) => ({ signal })),
    Promise.all(followers.map((f) => f.ended)).then(() => ({ signal: null })),
  ]);
  if (end.signal === null) return 1;
  io.out(`${end.signal}: detaching\n`);
  await Promise.all(followers.map((f) => f.follower.close()));
  return 0;
}
