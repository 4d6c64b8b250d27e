/**
 * What a UsbredirServer is built from: its options, checked eagerly (before the engine starts) with
 * messages that name the option, and its error class.
 */
import type { DeviceSpec } from "../devices/spec.js";
import type { ConnectionOptions } from "../engine/connection.js";
import { checkPeerBounds, type PeerBounds, type PeerBoundsOptions } from "../network-face/bounds.js";
import type { FaceLogger } from "../network-face/log.js";
import { checkTlsServerOptions, type TlsServerOptions, type TlsServerSettings } from "../network-face/tls.js";
import { checkTlsClientOptions, type TlsClientOptions, type TlsClientSettings } from "../tls/tls-settings.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { buildAllowList } from "../util/ip-prefix.js";

export class UsbredirServerError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_USBREDIR_OPTIONS" | "ERR_USBVIRT_USBREDIR_DEVICE";
  constructor(code: UsbredirServerError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbredirServerError);

/** Where a VMM's chardev listens: a TCP host and port (maybe with TLS), or a Unix socket path. */
export type UsbredirEndpoint =
  | {
      readonly host: string;
      readonly port: number;
      /** Connect with TLS (verify the VMM's certificate, present ours). */
      readonly tls?: TlsClientOptions;
      readonly path?: undefined;
    }
  | { readonly path: string; readonly host?: undefined; readonly port?: undefined; readonly tls?: undefined };

/**
 * The server's options. The per-connection bounds are the ones both network servers share
 * (network-face/bounds.ts): `maxUrbsPerPeer` (default 128), `maxUnsentBytes`, `stalledPeerMs`,
 * `blockedRequestMs` (answered inval), `handshakeTimeoutMs` (the wait for the peer's hello),
 * `requestTimeoutMs`, `maxConnections`.
 */
export interface UsbredirServerOptions extends PeerBoundsOptions {
  /** The device to redirect (what `serve --device` takes). */
  readonly device: DeviceSpec;
  /**
   * Listen here for the VMM: a TCP port (host default 127.0.0.1), or a Unix-domain socket at `path`
   * (mode 0660, the process's group; QEMU `-chardev socket,path=…`). Exactly one of listen, listenFd and connect.
   */
  readonly listen?: { readonly host?: string; readonly port: number } | { readonly path: string };
  /** Listen on this already-listening socket (systemd socket activation). */
  readonly listenFd?: number;
  /** Connect to a VMM that listens (QEMU `-chardev socket,server=on`); reconnects with backoff. */
  readonly connect?: UsbredirEndpoint;
  /** First and longest wait between connection attempts in connect mode (default 250 ms, 10 s). */
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
  readonly logger?: FaceLogger;
  /** Listen mode: peer addresses or CIDR subnets allowed (absent or empty: any). */
  readonly allow?: readonly string[];
  /** Guest memory for URB buffers, MiB (default 16, at least 8). */
  readonly guestMemoryMiB?: number;
  /** Our hello's version string (default "usbvirt"). */
  readonly version?: string;
  /** Extra engine options (tests). */
  readonly connection?: Omit<ConnectionOptions, "ports" | "memory">;
  /**
   * Listen modes: mutual TLS (network-face/tls.ts) — the peer must complete a TLS handshake (within
   * handshakeTimeoutMs) with a client certificate the client CA signed and/or one pinned by its
   * fingerprint before our hello is sent or anything of its is read. Connect mode: `connect.tls`.
   */
  readonly tls?: TlsServerOptions;
}

/** URBs one connection may have in the engine by default. */
export const DEFAULT_MAX_URBS = 128;

/** Check `options` (throws UsbredirServerError naming the option); returns the guest memory's size in MiB and the bounds. */
export function checkOptions(options: UsbredirServerOptions): {
  readonly guestMemoryMiB: number;
  readonly bounds: PeerBounds;
  readonly tls: TlsServerSettings | null;
  readonly connectTls: TlsClientSettings | null;
} {
  const modes = [options.listen, options.listenFd, options.connect].filter((m) => m !== undefined).length;
  if (modes !== 1) {
    throw new UsbredirServerError(
      "ERR_USBVIRT_USBREDIR_OPTIONS",
      "give exactly one of listen, listenFd and connect",
    );
  }
  buildAllowList(options.allow, (reason) => new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", reason));
  if (options.listen !== undefined && "path" in options.listen) {
    if (typeof options.listen.path !== "string" || options.listen.path.length === 0) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        "options.listen.path must be a file path",
      );
    }
    if ((options.allow?.length ?? 0) > 0) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        "options.allow lists addresses: a Unix-domain socket has none (its file permissions decide)",
      );
    }
  }
  const mib = options.guestMemoryMiB ?? 16;
  if (!Number.isInteger(mib) || mib < 8 || mib > 1024) {
    throw new UsbredirServerError(
      "ERR_USBVIRT_USBREDIR_OPTIONS",
      `options.guestMemoryMiB must be an integer in [8, 1024], got ${mib}`,
    );
  }
  const bounds = checkPeerBounds(
    options,
    DEFAULT_MAX_URBS,
    (message) => new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", message),
  );
  for (const key of ["reconnectMinMs", "reconnectMaxMs"] as const) {
    const v = options[key];
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        `options.${key} must be a positive integer, got ${v}`,
      );
    }
  }
  if (options.tls !== undefined && options.connect !== undefined) {
    throw new UsbredirServerError(
      "ERR_USBVIRT_USBREDIR_OPTIONS",
      "options.tls applies to the listen modes; connect mode takes connect.tls",
    );
  }
  const fail = (key: string, err: unknown) =>
    new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", `options.${key}: ${(err as Error).message}`, {
      cause: err,
    });
  let tls: TlsServerSettings | null = null;
  let connectTls: TlsClientSettings | null = null;
  try {
    if (options.tls !== undefined) tls = checkTlsServerOptions(options.tls);
  } catch (err) {
    throw fail("tls", err);
  }
  try {
    if (options.connect?.tls !== undefined) connectTls = checkTlsClientOptions(options.connect.tls);
  } catch (err) {
    throw fail("connect.tls", err);
  }
  return { guestMemoryMiB: mib, bounds, tls, connectTls };
}
