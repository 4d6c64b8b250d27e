/**
 * The settings of the daemon commands (`usbvirt serve` here, `usbvirt redirect` in redirect-config.ts), one
 * schema per command for both of their sources: the command-line flags and the JSON config file (`--config
 * FILE`). Each source is checked whole against it, so every wrong key, type or value is an error naming the
 * key (and the file, or the flag); the CLI turns it into exit status 2. Flags win over the file, key by key.
 * Each schema is published as JSON Schema (schema/usbvirt.schema.json for serve,
 * schema/usbvirt-redirect.schema.json for redirect, written by scripts/gen-config-schema.ts; a test fails
 * when a checked-in file is stale), so an editor can check a config file that says `"$schema": "…"`.
 * This file: the machinery (CommandSettings), the fields both commands share, and serve's schema.
 *
 * Why valibot: it is small and tree-shaken (the CLI and the device-spec gate pull in a few KB of it, no
 * code generation, no dependencies), its issues carry the path of the offending value (`devices[0].name`),
 * `variant` reports the field of the one matching branch instead of "no union member matched", and its own
 * @valibot/to-json-schema writes the JSON Schema (a dev dependency: only the generator needs it). Checks
 * JSON Schema cannot say (CIDR ranges, selector syntax) are valibot checks; the JSON Schema keeps their
 * shape as a pattern.
 */

import { readFile } from "node:fs/promises";
import * as v from "valibot";
import { parseRules, parseSelectorRule } from "../devices/host/filter.js";
import { DeviceSpecSchema, describeIssue, describeIssues } from "../devices/spec-schema.js";
import { RENAMED_OPTIONS } from "../network-face/bounds.js";
import { parseIpPrefix } from "../util/ip-prefix.js";
import { parseSize } from "./args.js";
import { PEER_BOUND_FLAGS, peerBoundFields } from "./bound-settings.js";
import { UsageError } from "./errors.js";
import { parseMetricsAddress } from "./metrics.js";

const SIZE_PATTERN = /^\d+\s*[kmgtKMGT]?(i?[bB])?$/;
const HOST_NAME =
  /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
/** The shape of an address or subnet, for editors; parseIpPrefix decides. */
const IP_PREFIX_SHAPE = /^[0-9A-Fa-f:.]+(\/[0-9]{1,3})?$/;

/** An IP address (no prefix) or a host name. */
export function isHostText(text: string): boolean {
  return HOST_NAME.test(text) || (parseIpPrefix(text).ok && !text.includes("/"));
}

/** A --device selector: an emulated device name, "emulated:NAME", or a host selector (VID:PID, BUS-PORT, serial=S). */
export const DeviceSelectorSchema = v.pipe(
  v.string(),
  v.minLength(1, "must not be empty"),
  v.description(
    'an emulated device ("loopback", "keyboard", "storage") or a host device: "VID:PID", "BUS-PORT" (1-1.2) or "serial=S"',
  ),
);

/**
 * What each lazy schema below says as JSON Schema: a device entry is chosen by its JSON type at run time
 * (for errors that name the field), but one JSON Schema says it as a union. scripts/gen-config-schema.ts reads it.
 */
export const JSON_SHAPES = new Map<v.GenericSchema, v.GenericSchema>();

/**
 * A device entry: a selector string (checked by `selector`), or an object (checked field by field by
 * `object`, a device spec unless given); `shape` words both for the error when it is neither.
 */
export function deviceEntrySchema<O extends v.GenericSchema = typeof DeviceSpecSchema>(
  selector: v.GenericSchema<string, string>,
  object: O = DeviceSpecSchema as unknown as O,
  shape = 'a selector string ("loopback", "1209:0001", "1-1.2", "serial=S") or a device spec object',
) {
  const entry = v.lazy((input) =>
    typeof input === "string"
      ? selector
      : typeof input === "object" && input !== null && !Array.isArray(input)
        ? object
        : v.never(
            `must be ${shape}, not ${Array.isArray(input) ? "an array" : (JSON.stringify(input) ?? typeof input)}`,
          ),
  );
  JSON_SHAPES.set(entry, v.union([selector, object]));
  return entry;
}

/** A `devices` entry of serve: a selector string, or a device spec object. */
export const DeviceEntrySchema = deviceEntrySchema(DeviceSelectorSchema);

/** A host selector (VID:PID, 1-1.2, serial=S, class=C, joined by ","), checked by filter.ts's parser. */
export const HostSelectorText = v.pipe(
  v.string(),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    try {
      parseSelectorRule("allow", dataset.value);
    } catch (err) {
      addIssue({ message: `${JSON.stringify(dataset.value)}: ${(err as Error).message}` });
    }
  }),
);

/** Filter rules (src/devices/host/filter.ts): one or more joined by "|", usbredir's form or "allow|deny SEL". */
const FilterRulesText = v.pipe(
  v.string(),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    try {
      parseRules(dataset.value);
    } catch (err) {
      addIssue({ message: (err as Error).message });
    }
  }),
  v.description(
    'filter rules joined by "|", first match wins: usbredir\'s "class,vendor,product,bcd,allow" (-1 = any, e.g. "0x03,-1,-1,-1,0") or "allow SEL" / "deny SEL" (SEL: VID:PID, 1-1.2, serial=S, class=hid, bcd=0x0100)',
  ),
);

const ClientAddress = v.pipe(
  v.string(),
  v.regex(IP_PREFIX_SHAPE, (i) => parseReason(i.input)),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed || dataset.issues !== undefined) return; // the pattern above already said why
    const parsed = parseIpPrefix(dataset.value);
    if (!parsed.ok) addIssue({ message: parsed.reason });
  }),
);
function parseReason(input: unknown): string {
  const parsed = parseIpPrefix(input);
  return parsed.ok ? "is not an address or subnet" : parsed.reason;
}

const portMessage = (i: v.BaseIssue<unknown>) =>
  `must be an integer 0..65535, not ${JSON.stringify(i.input)}`;

/** A string that `parse` accepts; the message names the shape (`[HOST:]PORT (e.g. …)`). */
export function parsedBy(parse: (text: string) => unknown, shape: string) {
  return v.pipe(
    v.string((i) => `must be a string, not ${JSON.stringify(i.input)}`),
    v.check(
      (text) => {
        try {
          parse(text);
          return true;
        } catch {
          return false;
        }
      },
      (i) => `must be ${shape}, not ${JSON.stringify(i.input)}`,
    ),
  );
}

/** The key a config file names its JSON Schema with (for editors; the CLI ignores it). */
export const SchemaKey = v.optional(
  v.pipe(v.string(), v.description("the JSON Schema this file follows (for editors)")),
);

/**
 * The settings both daemon commands have, under the same keys and flags: who may connect (`peers` names
 * them in the description), the emulated storage device, logging and the metrics endpoint, and mutual TLS
 * for the network face (tls…) and for the metrics endpoint (metricsTls…).
 */
export function daemonFields(peers: string) {
  const face = tlsServerFields(peers, "tls");
  const faceTls = {
    tlsCert: face.cert,
    tlsKey: face.key,
    tlsClientCa: face.clientCa,
    tlsClientFingerprints: face.clientFingerprints,
    tlsMinVersion: face.minVersion,
  };
  const metricsTls = tlsServerFields("scrapers of the metrics endpoint", "metricsTls");
  return {
    allowClients: v.optional(
      v.pipe(
        v.array(ClientAddress, "must be a list of addresses or subnets"),
        v.description(`accept ${peers} only from these addresses or subnets ("10.0.0.7", "192.168.1.0/24")`),
      ),
    ),
    storageSize: v.optional(
      v.pipe(
        v.union(
          [
            v.pipe(
              v.string(),
              v.regex(SIZE_PATTERN, (i) => `must be a size like "64M", not ${JSON.stringify(i.input)}`),
            ),
            v.pipe(v.number(), v.safeInteger("must be a whole number of bytes"), v.minValue(32 * 1024)),
          ],
          (i) => `must be a size like "64M" or a number of bytes, not ${JSON.stringify(i.input)}`,
        ),
        v.check(
          (s) => {
            const n = typeof s === "number" ? s : parseSize(s);
            return n !== null && n >= 32 * 1024 && n % 512 === 0;
          },
          (i) => `must be a multiple of 512 bytes, at least 32K (e.g. "64M"), not ${JSON.stringify(i.input)}`,
        ),
        v.description('size of the emulated storage device (default "64M")'),
      ),
    ),
    storageSpeed: v.optional(
      v.pipe(
        v.picklist(
          ["full", "high", "super"],
          (i) => `must be "full", "high" or "super", not ${JSON.stringify(i.input)}`,
        ),
        v.description('the emulated storage device\'s USB speed (default "high")'),
      ),
    ),
    storageFile: v.optional(
      v.pipe(
        v.string((i) => `must be a file path, not ${JSON.stringify(i.input)}`),
        v.minLength(1, "must not be empty"),
        v.description("back the emulated storage device by this file"),
      ),
    ),
    quiet: v.optional(v.pipe(v.boolean(), v.description("log only warnings and errors"))),
    logFormat: v.optional(
      v.pipe(
        v.picklist(["text", "json"], (i) => `must be "text" or "json", not ${JSON.stringify(i.input)}`),
        v.description("log lines as text or as one JSON object per line"),
      ),
    ),
    metrics: v.optional(
      v.pipe(
        parsedBy(parseMetricsAddress, '[HOST:]PORT (e.g. "9240", "127.0.0.1:9240") or unix:PATH'),
        v.description(
          "serve Prometheus metrics over HTTP at [HOST:]PORT (host 127.0.0.1 by default) or on a Unix-domain socket, unix:PATH (mode 0660)",
        ),
      ),
    ),
    ...faceTls,
    metricsTlsCert: metricsTls.cert,
    metricsTlsKey: metricsTls.key,
    metricsTlsClientCa: metricsTls.clientCa,
    metricsTlsClientFingerprints: metricsTls.clientFingerprints,
    metricsTlsMinVersion: metricsTls.minVersion,
  };
}

/**
 * A listening face's mutual TLS settings, under keys that start with `key` ("tls" for the USB/IP or usbredir
 * face, "metricsTls" for the metrics endpoint; the descriptions name them), checking `peers`' certificates.
 */
function tlsServerFields(peers: string, key: "tls" | "metricsTls") {
  const what = key === "tls" ? "mutual TLS" : "the metrics endpoint over HTTPS with mutual TLS";
  return {
    cert: v.optional(
      v.pipe(
        FilePath,
        v.description(
          `${what}: this side's certificate (PEM; a listener needs ${key}Key and ${key}ClientCa or ${key}ClientFingerprints)`,
        ),
      ),
    ),
    key: v.optional(v.pipe(FilePath, v.description(`${what}: this side's private key (PEM)`))),
    clientCa: v.optional(
      v.pipe(
        FilePath,
        v.description(`${what}: accept ${peers} whose certificate this CA (PEM) signed and is in date`),
      ),
    ),
    clientFingerprints: v.optional(
      v.pipe(
        v.array(Fingerprint, "must be a list of fingerprints"),
        v.description(
          `${what}: accept ${peers} only with a certificate of these SHA-256 fingerprints ("SHA256:AB:CD:…")`,
        ),
      ),
    ),
    minVersion: v.optional(
      v.pipe(
        v.picklist(["1.2", "1.3"], (i) => `must be "1.2" or "1.3", not ${JSON.stringify(i.input)}`),
        v.description('lowest TLS version accepted (default "1.3")'),
      ),
    ),
  };
}

/** Announcing the server on multicast DNS (DNS-SD), off unless asked: both daemon commands have it. */
export function announceFields(service: string) {
  return {
    announce: v.optional(
      v.pipe(
        v.boolean(),
        v.description(
          `announce this server and its devices on the local network over multicast DNS (DNS-SD ${service}); off by default`,
        ),
      ),
    ),
    name: v.optional(
      v.pipe(
        v.string(),
        v.minLength(1, "must not be empty"),
        v.maxLength(40, "must be at most 40 characters"),
        v.regex(/^[A-Za-z0-9 _+@()-]+$/, "may hold only letters, digits, spaces and _+@()-"),
        v.description("added to the host's name in the announcement (to tell two servers of one host apart)"),
      ),
    ),
  };
}

/** The control socket and the state it keeps (src/toolstack): both daemon commands take them. */
export function steeringFields() {
  return {
    control: v.optional(
      v.pipe(
        v.union(
          [
            v.boolean(),
            v.pipe(
              v.string(),
              v.minLength(1, "must not be empty"),
              v.maxLength(107, "is longer than a Unix socket path may be (107 bytes)"),
            ),
          ],
          (i) => `must be a socket path or true, not ${JSON.stringify(i.input)}`,
        ),
        v.description(
          "open a control socket (usbvirt ctl) at this path (true: $RUNTIME_DIRECTORY/control.sock or $XDG_RUNTIME_DIR/usbvirt/control.sock)",
        ),
      ),
    ),
    stateDir: v.optional(
      v.pipe(
        v.string((i) => `must be a folder path, not ${JSON.stringify(i.input)}`),
        v.minLength(1, "must not be empty"),
        v.description(
          "keep the bindings and assignments made through the control socket here (default $STATE_DIRECTORY or $XDG_STATE_HOME/usbvirt)",
        ),
      ),
    ),
  };
}

export const STEERING_FLAGS = { control: "control", stateDir: "state-dir" } as const;

/** The flags of announceFields' settings. */
export const ANNOUNCE_FLAGS = { announce: "announce", name: "name" } as const;

export const FilePath = v.pipe(
  v.string((i) => `must be a file path, not ${JSON.stringify(i.input)}`),
  v.minLength(1, "must not be empty"),
);

/** A certificate's SHA-256 fingerprint, as `openssl x509 -noout -fingerprint -sha256` prints it after "SHA256:". */
export const Fingerprint = v.pipe(
  v.string(),
  v.regex(
    /^[Ss][Hh][Aa]256:([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$/,
    (i) => `${JSON.stringify(i.input)} is not "SHA256:" and 32 bytes in hex`,
  ),
);

/** The flags of the settings daemonFields gives (one name per setting; the flag wins). */
export const DAEMON_FLAGS = {
  allowClients: "allow-client",
  storageSize: "storage-size",
  storageFile: "storage-file",
  storageSpeed: "storage-speed",
  quiet: "quiet",
  logFormat: "log-format",
  metrics: "metrics",
  tlsCert: "tls-cert",
  tlsKey: "tls-key",
  tlsClientCa: "tls-client-ca",
  tlsClientFingerprints: "tls-client-fingerprint",
  tlsMinVersion: "tls-min-version",
  metricsTlsCert: "metrics-tls-cert",
  metricsTlsKey: "metrics-tls-key",
  metricsTlsClientCa: "metrics-tls-client-ca",
  metricsTlsClientFingerprints: "metrics-tls-client-fingerprint",
  metricsTlsMinVersion: "metrics-tls-min-version",
} as const;

/** The storage's speed option (UsbSpeed numbers) from a checked `storageSpeed` setting; {} for the default. */
export function storageSpeedOption(speed: "full" | "high" | "super" | undefined): { speed?: number } {
  return speed === undefined ? {} : { speed: { full: 2, high: 3, super: 4 }[speed] };
}

/** Storage size in bytes from a checked `storageSize` setting (default 64 MiB). */
export function storageBytes(size: string | number | undefined): number {
  if (size === undefined) return 64 * 1024 * 1024;
  return typeof size === "number" ? size : parseSize(size)!;
}

/** serve's default for maxUrbsPerPeer (src/usbip-server/options.ts), as --help and the schema say it. */
export const SERVE_MAX_URBS_DEFAULT = "its device's share of the engine's ring slots, also the most";

export const ServeConfigSchema = v.pipe(
  v.strictObject({
    $schema: SchemaKey,
    bind: v.optional(
      v.pipe(
        v.string(portlessMessage),
        v.check(isHostText, (i) => `must be an IP address or host name, not ${JSON.stringify(i.input)}`),
        v.description("address to listen on (default 127.0.0.1)"),
      ),
    ),
    port: v.optional(
      v.pipe(
        v.number(portMessage),
        v.integer(portMessage),
        v.minValue(0, portMessage),
        v.maxValue(65535, portMessage),
        v.description("TCP port (default 3240; 0 picks a free one)"),
      ),
    ),
    devices: v.optional(
      v.pipe(
        v.array(DeviceEntrySchema, (i) => `must be a list of devices, not ${JSON.stringify(i.input)}`),
        v.maxLength(31, "lists more than 31 devices"),
        v.description("devices to export, in bus-id order (default: loopback, keyboard, storage)"),
      ),
    ),
    filter: v.optional(
      v.pipe(
        v.union(
          [FilterRulesText, v.array(FilterRulesText)],
          (i) => `must be filter rules (a string or a list of strings), not ${JSON.stringify(i.input)}`,
        ),
        v.description(
          "which host devices may be exported: rules checked in order before deny and allow (see filter rules in the README)",
        ),
      ),
    ),
    allow: v.optional(
      v.pipe(
        v.array(HostSelectorText, "must be a list of host selectors"),
        v.description(
          "allow host devices matching these selectors, and export every one plugged in at start",
        ),
      ),
    ),
    deny: v.optional(
      v.pipe(
        v.array(HostSelectorText, "must be a list of host selectors"),
        v.description("never export host devices matching these selectors (explicit devices included)"),
      ),
    ),
    matchNew: v.optional(
      v.pipe(
        v.boolean(),
        v.description("also export every host device plugged in later that passes the filter"),
      ),
    ),
    ...daemonFields("USB/IP clients"),
    ...peerBoundFields(SERVE_MAX_URBS_DEFAULT),
    ...announceFields("_usbip._tcp"),
    ...steeringFields(),
  }),
  v.title("usbvirt serve configuration"),
  v.description("Settings of `usbvirt serve --config FILE`; command-line flags win over them."),
);
function portlessMessage(i: v.BaseIssue<unknown>): string {
  return `must be a string, not ${JSON.stringify(i.input)}`;
}

export type ServeConfig = v.InferOutput<typeof ServeConfigSchema>;

// ---------------------------------------------------------------- the machinery

/**
 * A command's settings: its schema, each key's flag, the flags whose number text becomes a number, and
 * keys the file may no longer use (old name → new name, refused with a message naming the new one).
 */
export interface CommandSettings<T> {
  readonly command: string;
  readonly schema: v.GenericSchema<unknown, T>;
  readonly flagOfKey: Readonly<Record<Exclude<keyof T, "$schema">, string>>;
  readonly numericFlags?: readonly string[];
  readonly renamedKeys?: Readonly<Record<string, string>>;
  /** Keys that say one thing between them (redirect's listen / connect): a flag for one drops the file's others. */
  readonly oneOf?: readonly (keyof T)[];
}

export const SERVE_SETTINGS: CommandSettings<ServeConfig> = {
  command: "serve",
  schema: ServeConfigSchema,
  flagOfKey: {
    bind: "bind",
    port: "port",
    devices: "device",
    filter: "filter",
    allow: "allow",
    deny: "deny",
    matchNew: "match-new",
    ...DAEMON_FLAGS,
    ...PEER_BOUND_FLAGS,
    ...ANNOUNCE_FLAGS,
    ...STEERING_FLAGS,
  },
  numericFlags: ["port", ...Object.values(PEER_BOUND_FLAGS)],
  renamedKeys: RENAMED_OPTIONS,
};

/** Each serve flag and the config key it sets (one name per setting; the flag wins). */
export const FLAG_OF_KEY = SERVE_SETTINGS.flagOfKey;

/** Read and check a config file; a UsageError names the file and the key. */
export async function readConfig<T>(settings: CommandSettings<T>, path: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new UsageError(settings.command, `cannot read config file ${path}: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UsageError(settings.command, `config file ${path} is not JSON: ${(err as Error).message}`);
  }
  return checkConfig(settings, value, `config file ${path}`);
}

export function checkConfig<T>(settings: CommandSettings<T>, value: unknown, source: string): T {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new UsageError(settings.command, `${source} must hold a JSON object`);
  }
  // An old key is said with its new name, beside whatever else is wrong.
  const renamed = Object.entries(settings.renamedKeys ?? {}).filter(([old]) => Object.hasOwn(value, old));
  const rest: Record<string, unknown> = { ...value };
  for (const [old] of renamed) delete rest[old];
  const result = v.safeParse(settings.schema, rest, { abortPipeEarly: true });
  const problems = [
    ...renamed.map(([old, now]) => `${old}: was renamed ${now}`),
    ...(result.success ? [] : [describeIssues(result.issues, "")]),
  ];
  if (!result.success || renamed.length > 0) {
    throw new UsageError(settings.command, `${source}: ${problems.join("; ")}`);
  }
  return result.output;
}

const NUMBER_TEXT = /^-?\d{1,20}(\.\d{1,20})?$/;

/**
 * A command's flags, as the config file's keys, checked by the same schema; an error names the flag
 * (`--port: must be an integer 0..65535, not "3253x"`). A numeric flag written as a decimal number becomes a
 * number (so "-1" and "1.5" are refused as numbers, by the schema's own rule).
 */
export function configFromFlags<T>(
  settings: CommandSettings<T>,
  options: Readonly<Record<string, unknown>>,
): T {
  const flagOf = settings.flagOfKey as Readonly<Record<string, string>>;
  const input: Record<string, unknown> = {};
  for (const [key, flag] of Object.entries(flagOf)) {
    const value = options[flag];
    if (value === undefined) continue;
    const numeric = settings.numericFlags?.includes(flag) === true;
    input[key] = numeric && typeof value === "string" && NUMBER_TEXT.test(value) ? Number(value) : value;
  }
  const result = v.safeParse(settings.schema, input, { abortPipeEarly: true });
  if (result.success) return result.output;
  const messages = result.issues.map((issue) => {
    const [head, ...rest] = issue.path ?? [];
    const flag = `--${flagOf[String(head?.key)] ?? String(head?.key)}`;
    // Repeatable flags: name the flag, not its index; the message quotes the value.
    const inner = describeIssue(
      issue,
      "",
      rest.filter((p) => typeof p.key !== "number"),
    );
    return `${flag}: ${inner}`;
  });
  throw new UsageError(settings.command, messages.join("; "));
}

/** The file (`--config`), then the flags over it key by key: both checked whole first. */
export async function commandConfig<T extends object>(
  settings: CommandSettings<T>,
  options: Readonly<Record<string, unknown>>,
): Promise<T> {
  const file: Partial<T> =
    typeof options.config === "string" ? await readConfig(settings, options.config) : {};
  const flags = configFromFlags(settings, options);
  const group = settings.oneOf ?? [];
  if (group.some((key) => flags[key] !== undefined)) for (const key of group) delete file[key];
  return { ...file, ...flags };
}
