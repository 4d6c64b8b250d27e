/**
 * What a UsbipServer is built from: its options, checked eagerly (before any worker starts) with messages
 * that name the option, and its error class.
 */
import { URB_RING_GEOMETRY } from "../connection/handles.js";
import type { DeviceSpec } from "../devices/spec.js";
import type { ConnectionOptions } from "../engine/connection.js";
import { UNLINK_RESERVED_SLOTS } from "../frontend/controller.js";
import { checkPeerBounds, type PeerBounds, type PeerBoundsOptions } from "../network-face/bounds.js";
import type { FaceLogger } from "../network-face/log.js";
import { checkTlsServerOptions, type TlsServerOptions, type TlsServerSettings } from "../network-face/tls.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { buildAllowList } from "../util/ip-prefix.js";

export class UsbipServerError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_USBIP_OPTIONS" | "ERR_USBVIRT_USBIP_DEVICE";
  constructor(code: UsbipServerError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbipServerError);

/**
 * The server's options. The per-client bounds are the ones both network servers share
 * (network-face/bounds.ts): `maxUrbsPerPeer` (default and most: its device's share of the engine's 248
 * ring slots, 248 / devices), `maxUnsentBytes`, `stalledPeerMs`, `blockedRequestMs` (answered -ENOMEM),
 * `handshakeTimeoutMs` (the management phase, up to a completed import), `requestTimeoutMs`, `maxConnections`.
 */
export interface UsbipServerOptions extends PeerBoundsOptions {
  /**
   * What to export, in port order (at most 31). A null entry keeps its port free for a device exported
   * later (exportDevice: a device that is not plugged in yet, or one `serve --match-new` finds).
   */
  readonly devices: readonly (DeviceSpec | null)[];
  /** Address to bind (default 127.0.0.1). */
  readonly host?: string;
  /** TCP port (default 3240; 0 picks a free one). */
  readonly port?: number;
  /**
   * Listen on this already-bound, listening socket (a file descriptor, e.g. 3 from systemd socket
   * activation) instead of binding `host`:`port`.
   */
  readonly listenFd?: number;
  readonly logger?: FaceLogger;
  /** Client addresses or CIDR subnets allowed to connect; absent or empty allows every client. */
  readonly allow?: readonly string[];
  /**
   * Guest memory that holds URB buffers, MiB (default 64, at least 8 MiB per device); each device gets
   * an equal region of it, which bounds what its client's requests and unsent replies hold.
   */
  readonly guestMemoryMiB?: number;
  /** Extra options for the engine connection (tests; `backendThread: "worker"` puts the backend on a worker). */
  readonly connection?: Omit<ConnectionOptions, "ports" | "memory">;
  /**
   * A client's SET_FEATURE(PORT_RESET): reset the device in the engine (default, as Linux's stub does), or
   * stall it, as a server that hands the request to the device does (tests of clients that must cope).
   */
  readonly portReset?: "reset" | "stall";
  /**
   * Mutual TLS (network-face/tls.ts): every connection must complete a TLS handshake (within
   * handshakeTimeoutMs) and present a client certificate the client CA signed and/or one pinned by its
   * fingerprint before any USB/IP byte is read or answered.
   */
  readonly tls?: TlsServerOptions;
}

/** URB ring slots the exported devices share (the controller keeps the rest for unlinks). */
const SHARED_RING_SLOTS = URB_RING_GEOMETRY.slots - UNLINK_RESERVED_SLOTS;

/** What start() derives from sound options. */
export interface CheckedOptions {
  /** Ports the server serves (exported devices and ports kept free). */
  readonly devices: number;
  readonly guestMemoryMiB: number;
  /** Each client's bounds; maxUrbs is at most its share of the URB ring's slots. */
  readonly bounds: PeerBounds;
  /** TLS settings, files read (null: plain TCP). */
  readonly tls: TlsServerSettings | null;
}

/** Check `options` (throws UsbipServerError naming the option) and derive the sizes start() needs. */
export function checkOptions(options: UsbipServerOptions): CheckedOptions {
  const specs = options.devices;
  if (!Array.isArray(specs) || specs.length < 1 || specs.length > 31) {
    throw new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", "options.devices must list 1 to 31 devices");
  }
  buildAllowList(options.allow, (reason) => new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", reason));
  if (options.listenFd !== undefined && (!Number.isInteger(options.listenFd) || options.listenFd < 0)) {
    throw new UsbipServerError(
      "ERR_USBVIRT_USBIP_OPTIONS",
      `options.listenFd must be a file descriptor number, got ${options.listenFd}`,
    );
  }
  const devices = specs.length;
  const mib = options.guestMemoryMiB ?? Math.max(64, 8 * devices);
  if (!Number.isInteger(mib) || mib < 8 * devices || mib > 1024) {
    throw new UsbipServerError(
      "ERR_USBVIRT_USBIP_OPTIONS",
      `options.guestMemoryMiB must be an integer in [${8 * devices}, 1024] (8 MiB per device), got ${mib}`,
    );
  }
  const ringShare = Math.floor(SHARED_RING_SLOTS / devices);
  const bounds = checkPeerBounds(
    options,
    ringShare,
    (message) => new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", message),
  );
  let tls: TlsServerSettings | null = null;
  try {
    if (options.tls !== undefined) tls = checkTlsServerOptions(options.tls);
  } catch (err) {
    throw new UsbipServerError("ERR_USBVIRT_USBIP_OPTIONS", `options.tls: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return {
    tls,
    devices,
    guestMemoryMiB: mib,
    bounds: { ...bounds, maxUrbs: Math.min(bounds.maxUrbs, ringShare) },
  };
}
