/**
 * What a UsbredirServer is built from: its options, checked eagerly (before the engine starts) with
 * messages that name the option, and its error class. Split from server.ts so the server reads as what it does.
 */
import type { DeviceSpec } from "../devices/spec.js";
import type { ConnectionOptions } from "../engine/connection.js";
import type { FaceLogger } from "../network-face/log.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { buildAllowList } from "../util/ip-prefix.js";

export class UsbredirServerError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_USBREDIR_OPTIONS" | "ERR_USBVIRT_USBREDIR_DEVICE";
  constructor(code: UsbredirServerError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(UsbredirServerError);

export interface UsbredirEndpoint {
  readonly host: string;
  readonly port: number;
}

export interface UsbredirServerOptions {
  /** The device to redirect (what `serve --device` takes). */
  readonly device: DeviceSpec;
  /** Listen here for the VMM (host default 127.0.0.1). Exactly one of listen, listenFd and connect. */
  readonly listen?: { readonly host?: string; readonly port: number };
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
  /** URBs one connection may have in the engine at once (default 128). */
  readonly maxUrbsInFlight?: number;
  /** Unsent reply bytes above which no new packet is started (default 16 MiB). */
  readonly maxSendQueueBytes?: number;
  /** ... and the peer is dropped if it does not read for this long (default 30 s). */
  readonly stalledPeerMs?: number;
  /** A peer that has not sent its hello this long after connecting is dropped (default 30 s; 0: never). */
  readonly helloTimeoutMs?: number;
  /** A packet that waits this long for its share of the engine while nothing completes is answered inval (default 2 s). */
  readonly blockedRequestMs?: number;
  /** Guest memory for URB buffers, MiB (default 16, at least 8). */
  readonly guestMemoryMiB?: number;
  /** Our hello's version string (default "usbvirt"). */
  readonly version?: string;
  /** Extra engine options (tests). */
  readonly connection?: Omit<ConnectionOptions, "ports" | "memory">;
}

/** Check `options` (throws UsbredirServerError naming the option); returns the guest memory's size in MiB. */
export function checkOptions(options: UsbredirServerOptions): { readonly guestMemoryMiB: number } {
  const modes = [options.listen, options.listenFd, options.connect].filter((m) => m !== undefined).length;
  if (modes !== 1) {
    throw new UsbredirServerError(
      "ERR_USBVIRT_USBREDIR_OPTIONS",
      "give exactly one of listen, listenFd and connect",
    );
  }
  buildAllowList(options.allow, (reason) => new UsbredirServerError("ERR_USBVIRT_USBREDIR_OPTIONS", reason));
  const mib = options.guestMemoryMiB ?? 16;
  if (!Number.isInteger(mib) || mib < 8 || mib > 1024) {
    throw new UsbredirServerError(
      "ERR_USBVIRT_USBREDIR_OPTIONS",
      `options.guestMemoryMiB must be an integer in [8, 1024], got ${mib}`,
    );
  }
  for (const key of [
    "maxUrbsInFlight",
    "maxSendQueueBytes",
    "stalledPeerMs",
    "blockedRequestMs",
    "reconnectMinMs",
    "reconnectMaxMs",
  ] as const) {
    const v = options[key];
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) {
      throw new UsbredirServerError(
        "ERR_USBVIRT_USBREDIR_OPTIONS",
        `options.${key} must be a positive integer, got ${v}`,
      );
    }
  }
  const hello = options.helloTimeoutMs;
  if (hello !== undefined && (!Number.isInteger(hello) || hello < 0)) {
    throw new UsbredirServerError(
      "ERR_USBVIRT_USBREDIR_OPTIONS",
      `options.helloTimeoutMs must be a non-negative integer, got ${hello}`,
    );
  }
  return { guestMemoryMiB: mib };
}
