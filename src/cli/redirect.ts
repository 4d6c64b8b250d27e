/**
 * `usbvirt redirect`: one device to a QEMU virtual machine over usbredir, in the manner of usbredir's
 * own `usbredirect` tool. usbvirt listens (QEMU's usb-redir chardev connects, and reconnects with
 * `reconnect=N`) or connects to a chardev that listens (`server=on`), again with backoff whenever the
 * link drops. The device is any that `serve --device` takes, or one imported from a USB/IP server.
 */

import { filterFromLists } from "../devices/host/filter.js";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import type { FaceLogger } from "../network-face/log.js";
import type { HostRow } from "../toolstack/toolstack.js";
import { DEFAULT_MAX_URBS } from "../usbredir/options.js";
import { UsbredirServer } from "../usbredir/server.js";
import { announceDaemon, announcedTls, type ServerAnnouncement } from "./announce.js";
import {
  ANNOUNCE_OPTION,
  CONFIG_OPTION,
  CONTROL_OPTION,
  type CommandSpec,
  LOG_FORMAT_OPTION,
  METRICS_OPTION,
  NAME_OPTION,
  QUIET_OPTION,
  STATE_DIR_OPTION,
  STORAGE_FILE_OPTION,
  STORAGE_SIZE_OPTION,
  STORAGE_SPEED_OPTION,
} from "./args.js";
import { peerBoundOptions, peerBoundsOf, RENAMED_BOUND_FLAGS } from "./bound-settings.js";
import { commandConfig, storageBytes, storageSpeedOption } from "./config.js";
import { packageVersion, socketActivationFd, storageFileWarnings } from "./daemon.js";
import {
  Daemon,
  daemonLog,
  dialWarning,
  hostForPeers,
  logListenerNotes,
  USBREDIR_EXPOSURE,
} from "./daemon-run.js";
import { UsageError } from "./errors.js";
import type { ExportEvent, ExportingServer, ExportListener } from "./exporting-server.js";
import {
  parseConnectAddress,
  parseListenAddress,
  REDIRECT_SETTINGS,
  usbipSpecFromUrl,
} from "./redirect-config.js";
import { type Steering, startSteering } from "./steering.js";
import {
  METRICS_TLS_OPTIONS,
  metricsTlsOptions,
  TLS_CLIENT_OPTIONS,
  TLS_SERVER_OPTIONS,
  tlsClientOptions,
  tlsServerOptions,
} from "./tls-flags.js";

export { usbipSpecFromUrl } from "./redirect-config.js";

export const REDIRECT: CommandSpec = {
  name: "redirect",
  summary:
    "Redirect one device to a QEMU virtual machine over usbredir (QEMU's usb-redir device).\n" +
    "Give the device (--device) and where QEMU is (--listen or --connect), as flags or in a --config file.",
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
      value: "[HOST:]PORT|unix:PATH",
      help: "listen for QEMU's chardev to connect (host 127.0.0.1 unless given; port 0 picks a free one; unix:PATH: a socket file, mode 0660)",
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
    STORAGE_SPEED_OPTION,
    STORAGE_FILE_OPTION,
    CONFIG_OPTION,
    QUIET_OPTION,
    LOG_FORMAT_OPTION,
    METRICS_OPTION,
    ...METRICS_TLS_OPTIONS,
    ANNOUNCE_OPTION,
    NAME_OPTION,
    // --tls-cert/--tls-key: our certificate, in both modes.
    ...TLS_SERVER_OPTIONS,
    ...TLS_CLIENT_OPTIONS,
    CONTROL_OPTION,
    STATE_DIR_OPTION,
    ...peerBoundOptions(String(DEFAULT_MAX_URBS)),
  ],
  renamed: RENAMED_BOUND_FLAGS,
  details: `One device per connection, as usbredir defines. In listen mode the device goes to one VM at a
time; when the VM disconnects its transfers are cancelled, the device is released and the next
connection gets it. SIGINT/SIGTERM: transfers cancelled, device released, exit 0. If the engine dies
for good, redirect logs it and exits 1 (for a supervisor to restart it). Listening beyond loopback without
mutual TLS logs a warning: usbredir has no authentication or encryption. Under systemd socket activation
(LISTEN_FDS/LISTEN_PID) redirect listens on the passed socket (a TCP port, judged by its own address, or a
socket file), not --listen. --metrics-tls-cert/-key/-client-ca give the metrics endpoint mutual TLS.
With --announce (listen mode on a TCP port) redirect publishes _usbredir._tcp on multicast DNS with its
device (usbvirt list --discover shows it), as serve --announce does.
With --control, 'usbvirt ctl' lists the devices and assigns others to VMs (assign / release) while redirect
runs; bind, unbind and detach need serve. Assignments are kept in --state-dir and restored.

QEMU, usbvirt listening (usbvirt redirect --device storage --listen 4000):
  qemu-system-x86_64 ... -device qemu-xhci,id=xhci \\
    -chardev socket,id=usbredir0,host=127.0.0.1,port=4000,reconnect=2 \\
    -device usb-redir,chardev=usbredir0,bus=xhci.0
QEMU listening (usbvirt redirect --device storage --connect 127.0.0.1:4000):
  ... -chardev socket,id=usbredir0,host=127.0.0.1,port=4000,server=on,wait=off ...

Config file (JSON; schema/usbvirt-redirect.schema.json): {"device": "storage", "listen": "127.0.0.1:4000",
  "storageFile": "disk.img", "storageSize": "64M", "allowClients": ["127.0.0.1"], "metrics": "9241"}
A --listen or --connect flag replaces the file's listen or connect. Each per-connection bound's key is its
flag in camelCase ("handshakeTimeoutMs": 5000 for --handshake-timeout-ms 5000), as serve's are.`,
};

export interface RedirectIo {
  out(text: string): void;
  stopSignal(): Promise<string>;
  logger?: FaceLogger;
  /** Called once the server is up (tests learn the port here). */
  onRedirecting?: (server: UsbredirServer) => void;
  /** The host's devices (libusb), for the control socket's list. */
  listHostDevices?: () => Promise<readonly HostRow[]>;
}

export async function redirectCommand(
  options: Readonly<Record<string, string | boolean | string[] | undefined>>,
  io: RedirectIo,
  deviceFromSelector: (text: string, storage: Record<string, unknown>) => DeviceSpec,
): Promise<number> {
  // One schema for both sources (redirect-config.ts); a mode given by a flag replaces the file's.
  const config = await commandConfig(REDIRECT_SETTINGS, options);
  const fromFile = typeof options.config === "string";
  const named = (flag: string, key: string) => (fromFile ? `--${flag} (${key})` : `--${flag}`);
  if (config.device === undefined) {
    throw new UsageError("redirect", `${named("device", "device")} SPEC is required`);
  }
  const { listen, connect } = config;
  const activated = socketActivationFd();
  if (listen !== undefined && connect !== undefined) {
    throw new UsageError("redirect", `${named("listen", "listen")} and --connect exclude each other`);
  }
  if (connect !== undefined && activated !== null) {
    throw new UsageError(
      "redirect",
      "systemd passed a listening socket (LISTEN_FDS), which --connect does not use: drop the socket unit or --connect",
    );
  }
  if (listen === undefined && connect === undefined && activated === null) {
    throw new UsageError("redirect", "give one of --listen [HOST:]PORT and --connect HOST:PORT");
  }
  const allow = config.allowClients ?? [];
  if (connect !== undefined && allow.length > 0) {
    throw new UsageError(
      "redirect",
      `${named("allow-client", "allowClients")} applies to --listen only: with --connect usbvirt chooses the peer`,
    );
  }
  const listenAt = listen !== undefined ? parseListenAddress(listen) : null;
  if (config.name !== undefined && config.announce !== true)
    throw new UsageError("redirect", `${named("name", "name")} names the announcement: it needs --announce`);
  if (config.announce === true && (connect !== undefined || (listenAt !== null && "path" in listenAt)))
    throw new UsageError(
      "redirect",
      `${named("announce", "announce")} tells the network where to connect: it needs --listen on a TCP port (not --connect, not unix:)`,
    );
  if (listenAt !== null && "path" in listenAt && allow.length > 0) {
    throw new UsageError(
      "redirect",
      `${named("allow-client", "allowClients")} lists addresses: a unix: socket has none (its file mode 0660 and group decide)`,
    );
  }
  // Listen: mutual TLS as serve has it; connect: the VMM verified, our certificate presented.
  const serverTls = connect === undefined ? tlsServerOptions("redirect", config) : null;
  const clientTls =
    connect !== undefined
      ? tlsClientOptions("redirect", { ...options, "tls-cert": config.tlsCert, "tls-key": config.tlsKey })
      : null;
  const wrongMode =
    connect === undefined
      ? (["tls-ca", "tls-server-fingerprint"] as const)
      : (["tls-client-ca", "tls-client-fingerprint", "tls-min-version"] as const);
  for (const flag of wrongMode) {
    const v = options[flag];
    if (v !== undefined && !(Array.isArray(v) && v.length === 0)) {
      throw new UsageError(
        "redirect",
        `--${flag} applies to ${connect === undefined ? "--connect" : "--listen"} only`,
      );
    }
  }
  if (
    connect !== undefined &&
    (config.tlsClientCa !== undefined || config.tlsClientFingerprints !== undefined)
  ) {
    throw new UsageError("redirect", "tlsClientCa and tlsClientFingerprints apply to --listen only");
  }
  const metricsTls = metricsTlsOptions("redirect", config);
  const storage: Record<string, unknown> = {
    sizeBytes: storageBytes(config.storageSize),
    ...storageSpeedOption(config.storageSpeed),
    ...(config.storageFile !== undefined ? { file: config.storageFile } : {}),
  };
  const spec =
    typeof config.device === "string"
      ? (usbipSpecFromUrl(config.device) ?? deviceFromSelector(config.device, storage))
      : config.device;

  // Every line the server logs is about its one device: the status page keeps them under its bus id.
  const log = daemonLog(config, io.logger, { busid: REDIRECT_BUSID });
  const { logger } = log;
  for (const w of storageFileWarnings([spec], config.storageSize !== undefined)) logger.warn(w);

  const where = connect !== undefined ? parseConnectAddress(connect) : null;
  const server = await UsbredirServer.start({
    device: spec,
    logger,
    allow,
    version: `usbvirt ${packageVersion()}`,
    ...peerBoundsOf(config),
    ...(serverTls !== null ? { tls: serverTls } : {}),
    ...(where !== null
      ? { connect: clientTls !== null ? { ...where, tls: clientTls } : where }
      : activated !== null
        ? { listenFd: activated }
        : { listen: listenAt! }),
  });
  let steering: Steering | null = null;
  let announcement: ServerAnnouncement | null = null;
  try {
    steering = await startSteering(
      config,
      {
        usbip: null,
        hotplug: null,
        sparePorts: [],
        filter: filterFromLists({ filter: [], deny: [], allow: [] }),
        specOf: (text) => usbipSpecFromUrl(text) ?? deviceFromSelector(text, storage),
        listHost: io.listHostDevices ?? (async () => []),
        fixed: [{ spec, holder: "this usbvirt redirect's VM" }],
      },
      logger,
    );
  } catch (err) {
    await server.close();
    throw err;
  }
  const view = redirectStatusView(server);
  const daemon = await Daemon.start({
    view,
    log,
    settings: config,
    control: steering?.source ?? null,
    metricsTls,
    close: async () => {
      await announcement?.stop();
      await steering?.close();
      await server.close();
    },
  });
  if (config.announce === true) {
    if (server.address === null) {
      await daemon.stopNow();
      throw new Error(
        "--announce: the socket systemd passed is not a TCP port; there is nothing to announce",
      );
    }
    announcement = await announceDaemon(daemon, log, {
      service: "_usbredir._tcp",
      server: view,
      port: server.address.port,
      name: config.name,
      tls: announcedTls(serverTls),
    });
  }
  const bound = server.address;
  const socketPath = server.socketPath;
  io.out(`usbvirt: redirecting ${server.name} (${describeSpec(spec)}) over usbredir\n`);
  const qemuDevice = "-device usb-redir,chardev=usbredir0,bus=xhci.0";
  if (socketPath !== null) {
    // A socket systemd passed has the mode and group its unit gives (SocketMode=, SocketGroup=).
    const mode =
      activated !== null ? "the socket systemd passed" : `mode 0660, group ${process.getgid?.() ?? "?"}`;
    io.out(
      `listening on ${socketPath || "an unnamed socket"} (${mode}); in QEMU:  -device qemu-xhci,id=xhci ` +
        `-chardev socket,id=usbredir0,path=${socketPath || "PATH"},reconnect=2 ${qemuDevice}\n`,
    );
  } else if (bound !== null) {
    const host = bound.host.includes(":") ? `[${bound.host}]` : bound.host;
    io.out(
      `listening on ${host}:${bound.port}; in QEMU:  -device qemu-xhci,id=xhci ` +
        `-chardev socket,id=usbredir0,host=${hostForPeers(bound.host)},port=${bound.port},reconnect=2 ${qemuDevice}\n`,
    );
  }
  if (socketPath !== null || bound !== null) {
    logListenerNotes(logger, {
      bound: socketPath !== null ? { path: socketPath } : { host: bound!.host },
      allowClients: allow,
      face: USBREDIR_EXPOSURE,
      tls: serverTls,
      activated,
      replaces: "--listen",
    });
  } else {
    io.out(`connecting to ${where!.host}:${where!.port} (QEMU: -chardev socket,...,server=on,wait=off)\n`);
    const exposure = clientTls === null ? dialWarning(where!.host, USBREDIR_EXPOSURE) : null;
    if (exposure !== null) logger.warn(exposure);
  }
  io.out(daemon.addresses());
  io.onRedirecting?.(server);
  return await daemon.run(io.stopSignal);
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
      const { vendorId, productId, deviceClass, serial } = server.identity;
      return [
        {
          busid: REDIRECT_BUSID,
          port: 1,
          name: server.name,
          record: { idVendor: vendorId, idProduct: productId, bDeviceClass: deviceClass },
          ...(serial !== undefined ? { serial } : {}),
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
