/**
 * The TLS flags the commands share: a listening face's (`serve`, `redirect --listen`: --tls-cert, --tls-key,
 * --tls-client-ca, --tls-client-fingerprint, --tls-min-version) and a dialling side's (`attach`,
 * `redirect --connect`, `status`: --tls-ca, --tls-server-fingerprint, --tls-cert, --tls-key), and the
 * listening face's again under "metrics-" for the metrics endpoint, turned into the servers' and clients'
 * TLS options; a flag given without the ones it needs is a usage error.
 */
import type { TlsServerOptions } from "../network-face/tls.js";
import type { TlsClientOptions } from "../tls/tls-settings.js";
import type { OptionSpec } from "./args.js";
import { UsageError } from "./errors.js";

export const TLS_CERT_OPTION: OptionSpec = {
  name: "tls-cert",
  kind: "string",
  value: "FILE",
  help: "TLS: this side's certificate (PEM); with --tls-key",
};
export const TLS_KEY_OPTION: OptionSpec = {
  name: "tls-key",
  kind: "string",
  value: "FILE",
  help: "TLS: this side's private key (PEM)",
};

/** How clients are checked, under `prefix` ("" for the USB/IP and usbredir faces, "metrics-"). */
function clientCheckOptions(prefix: string): OptionSpec[] {
  return [
    {
      name: `${prefix}tls-client-ca`,
      kind: "string",
      value: "FILE",
      help: "mutual TLS: accept clients whose certificate this CA signed (and is in date)",
    },
    {
      name: `${prefix}tls-client-fingerprint`,
      kind: "string",
      multiple: true,
      value: "SHA256:..",
      help: "mutual TLS: accept the client certificate with this SHA-256 fingerprint (repeatable)",
    },
    {
      name: `${prefix}tls-min-version`,
      kind: "string",
      value: "1.2|1.3",
      help: "lowest TLS version accepted (default 1.3)",
    },
  ];
}

/** A listening face's flags (with --tls-cert/--tls-key). */
export const TLS_SERVER_OPTIONS: readonly OptionSpec[] = [
  TLS_CERT_OPTION,
  TLS_KEY_OPTION,
  ...clientCheckOptions(""),
];

/** The metrics endpoint's flags: the listening face's, each under "metrics-" (HTTPS with mutual TLS). */
export const METRICS_TLS_PREFIX = "metrics-";
export const METRICS_TLS_OPTIONS: readonly OptionSpec[] = [
  {
    name: `${METRICS_TLS_PREFIX}tls-cert`,
    kind: "string",
    value: "FILE",
    help: "the metrics endpoint over HTTPS: its certificate (PEM); with --metrics-tls-key and a client check",
  },
  {
    name: `${METRICS_TLS_PREFIX}tls-key`,
    kind: "string",
    value: "FILE",
    help: "the metrics endpoint's private key (PEM)",
  },
  ...clientCheckOptions(METRICS_TLS_PREFIX).map((o) => ({ ...o, help: `metrics endpoint: ${o.help}` })),
];

/** A dialling side's flags (with --tls-cert/--tls-key for its client certificate). */
export const TLS_CLIENT_OPTIONS: readonly OptionSpec[] = [
  {
    name: "tls-ca",
    kind: "string",
    value: "FILE",
    help: "connect with TLS: verify the server's certificate with this CA (and its host name)",
  },
  {
    name: "tls-server-fingerprint",
    kind: "string",
    multiple: true,
    value: "SHA256:..",
    help: "connect with TLS: accept the server certificate with this SHA-256 fingerprint (repeatable)",
  },
];

/** What the server flags (or the config keys of the same names) say. */
export interface TlsServerFlags {
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsClientCa?: string;
  readonly tlsClientFingerprints?: readonly string[];
  readonly tlsMinVersion?: "1.2" | "1.3";
}

/**
 * The server's TLS options, or null when no TLS flag is given; a partial set is a UsageError naming the
 * flags under `prefix` (METRICS_TLS_PREFIX for the metrics endpoint's).
 */
export function tlsServerOptions(command: string, f: TlsServerFlags, prefix = ""): TlsServerOptions | null {
  const flag = (name: string) => `--${prefix}tls-${name}`;
  const pins = f.tlsClientFingerprints ?? [];
  const any =
    f.tlsCert !== undefined ||
    f.tlsKey !== undefined ||
    f.tlsClientCa !== undefined ||
    pins.length > 0 ||
    f.tlsMinVersion !== undefined;
  if (!any) return null;
  if (f.tlsCert === undefined || f.tlsKey === undefined) {
    throw new UsageError(command, `TLS needs both ${flag("cert")} and ${flag("key")}`);
  }
  if (f.tlsClientCa === undefined && pins.length === 0) {
    throw new UsageError(
      command,
      `TLS here is mutual: give ${flag("client-ca")} and/or ${flag("client-fingerprint")} (which clients may connect)`,
    );
  }
  if (f.tlsMinVersion !== undefined && f.tlsMinVersion !== "1.2" && f.tlsMinVersion !== "1.3") {
    throw new UsageError(
      command,
      `${flag("min-version")} must be 1.2 or 1.3, not ${JSON.stringify(f.tlsMinVersion)}`,
    );
  }
  return {
    cert: { file: f.tlsCert },
    key: { file: f.tlsKey },
    ...(f.tlsClientCa !== undefined ? { clientCa: { file: f.tlsClientCa } } : {}),
    ...(pins.length > 0 ? { clientFingerprints: pins } : {}),
    minVersion: f.tlsMinVersion === "1.2" ? "TLSv1.2" : "TLSv1.3",
  };
}

/** The metrics endpoint's TLS settings (config keys metricsTls…, flags --metrics-tls-…). */
export interface MetricsTlsFlags {
  readonly metrics?: string;
  readonly metricsTlsCert?: string;
  readonly metricsTlsKey?: string;
  readonly metricsTlsClientCa?: string;
  readonly metricsTlsClientFingerprints?: readonly string[];
  readonly metricsTlsMinVersion?: "1.2" | "1.3";
}

/**
 * The metrics endpoint's TLS options, or null for plain HTTP. A UsageError when they are partial, given
 * without --metrics, or with a unix: endpoint (its file mode decides who connects; status reads it without TLS).
 */
export function metricsTlsOptions(command: string, f: MetricsTlsFlags): TlsServerOptions | null {
  const tls = tlsServerOptions(
    command,
    {
      tlsCert: f.metricsTlsCert,
      tlsKey: f.metricsTlsKey,
      tlsClientCa: f.metricsTlsClientCa,
      tlsClientFingerprints: f.metricsTlsClientFingerprints,
      tlsMinVersion: f.metricsTlsMinVersion,
    },
    METRICS_TLS_PREFIX,
  );
  if (tls === null) return null;
  if (f.metrics === undefined) {
    throw new UsageError(
      command,
      "--metrics-tls-* secures the metrics endpoint: it needs --metrics [HOST:]PORT",
    );
  }
  if (f.metrics.startsWith("unix:")) {
    throw new UsageError(
      command,
      "--metrics-tls-* is for a TCP endpoint: a unix: socket's file mode and group decide who may connect",
    );
  }
  return tls;
}

/**
 * A dialling side's TLS options from its flags, or null when none is given. `announced`: the server is
 * found by discovery, whose record may carry its certificate's fingerprint, so a client certificate alone
 * is enough (the fingerprint is pinned at connect time; src/discovery/select.ts tlsFor).
 */
export function tlsClientOptions(
  command: string,
  options: Readonly<Record<string, unknown>>,
  announced = false,
): TlsClientOptions | null {
  const str = (k: string) => (typeof options[k] === "string" ? (options[k] as string) : undefined);
  const pins = Array.isArray(options["tls-server-fingerprint"])
    ? (options["tls-server-fingerprint"] as string[])
    : [];
  const ca = str("tls-ca");
  const cert = str("tls-cert");
  const key = str("tls-key");
  if (ca === undefined && pins.length === 0 && cert === undefined && key === undefined) return null;
  if ((cert === undefined) !== (key === undefined)) {
    throw new UsageError(command, "a TLS client certificate needs both --tls-cert and --tls-key");
  }
  if (ca === undefined && pins.length === 0 && !announced) {
    throw new UsageError(
      command,
      "TLS needs a way to verify the server: --tls-ca and/or --tls-server-fingerprint",
    );
  }
  return {
    ...(ca !== undefined ? { ca: { file: ca } } : {}),
    ...(pins.length > 0 ? { serverFingerprints: pins } : {}),
    ...(cert !== undefined && key !== undefined ? { cert: { file: cert }, key: { file: key } } : {}),
  };
}
