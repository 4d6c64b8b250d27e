/**
 * What to put on a port, as plain data (it crosses threads by structured
 * clone): a built-in emulated device by name, or a host device (libusb).
 */
import type { TlsClientOptions } from "../tls/tls-settings.js";
export type EmulatedDeviceName = "loopback" | "keyboard" | "storage";

export interface EmulatedDeviceSpec {
  readonly kind: "emulated";
  readonly name: EmulatedDeviceName;
  /** Device-specific options (speed, storage size or backing file, …). */
  readonly options?: Readonly<Record<string, unknown>>;
  /**
   * Where it runs: on the backend worker's thread (default: the fast path,
   * no thread hand-off per URB) or on a port worker of its own (isolation,
   * as host devices always have).
   */
  readonly placement?: "backend" | "worker";
}

export interface HostDeviceSpec {
  readonly kind: "host";
  /** Select by vid:pid, bus-port path or serial. */
  readonly vendorId?: number;
  readonly productId?: number;
  readonly busPort?: string;
  readonly serial?: string;
}

/** A device imported from a USB/IP server (Linux usbipd or `usbvirt serve`), see src/devices/remote/usbip-remote.ts. */
export interface UsbipDeviceSpec {
  readonly kind: "usbip";
  /** Absent: this spec names its server (UsbipSelectorSpec finds one). */
  readonly select?: undefined;
  readonly host: string;
  /** TCP port (default 3240). */
  readonly port?: number;
  /** The device's bus id on the server, e.g. "1-1". */
  readonly busid: string;
  /** Bound on connecting and importing (open as a whole) and on a keepalive probe's answer (default 5000 ms). */
  readonly timeoutMs?: number;
  /** Quiet time after which the server is probed (default 5000 ms); see src/usbip/client.ts startKeepalive. */
  readonly keepaliveMs?: number;
  /**
   * Reconnect and re-import the same bus id when the link is lost (default true); see
   * src/engine/reconnect.ts. The guest sees a disconnect, then the device again.
   */
  readonly reconnect?: boolean;
  /** First backoff step (default 500 ms); each failed attempt doubles it, with jitter. */
  readonly retryMinMs?: number;
  /** Largest backoff step (default 30000 ms). */
  readonly retryMaxMs?: number;
  /** Attempts before giving up (default: no limit). */
  readonly retryAttempts?: number;
  /** Connect with TLS (src/tls/tls-settings.ts): the server verified by a CA or a pinned fingerprint, our certificate presented. */
  readonly tls?: TlsClientOptions;
}

/**
 * A device imported over USB/IP from whichever server announces it on the network (`serve --announce`,
 * DNS-SD; src/discovery): `select` is what serve --device takes ("serial=ABC", "VID:PID", "class=C"). The
 * engine resolves it each time it attaches the device — at first, and on every reconnect after a loss —
 * so the port holds "serial=ABC anywhere" and follows the device to the server that announces it next;
 * the port's worker only ever gets the resolved UsbipDeviceSpec. TLS as UsbipDeviceSpec's, with the
 * announced certificate fingerprint pinned when `tls` gives a client certificate and no CA or pin.
 */
export interface UsbipSelectorSpec extends Omit<UsbipDeviceSpec, "select" | "host" | "port" | "busid"> {
  readonly select: string;
  readonly host?: undefined;
  readonly port?: undefined;
  readonly busid?: undefined;
  /** How long each look at the network listens for announcements (default 2000 ms). */
  readonly discoverMs?: number;
}

/** Which device to put on a port (not `DescriptorSpec`, what an emulated device describes itself as). */
export type DeviceSpec = EmulatedDeviceSpec | HostDeviceSpec | UsbipDeviceSpec | UsbipSelectorSpec;

export function describeSpec(spec: DeviceSpec): string {
  if (spec.kind === "emulated") return `emulated ${spec.name}`;
  if (spec.kind === "usbip")
    return spec.select !== undefined
      ? `USB/IP device "${spec.select}" wherever it is announced`
      : `USB/IP device ${spec.busid} on ${spec.host}:${spec.port ?? 3240}`;
  const parts = [
    spec.vendorId !== undefined ? `vid 0x${spec.vendorId.toString(16).padStart(4, "0")}` : "",
    spec.productId !== undefined ? `pid 0x${spec.productId.toString(16).padStart(4, "0")}` : "",
    spec.busPort ?? "",
    spec.serial !== undefined ? `serial ${spec.serial}` : "",
  ].filter((p) => p !== "");
  return `host device ${parts.join(" ")}`;
}
