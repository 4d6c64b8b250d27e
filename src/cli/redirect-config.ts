/**
 * The settings of `usbvirt redirect`, flags and config file alike, through the machinery of config.ts
 * (one schema, errors naming the key or the flag, flags winning key by key; published as
 * schema/usbvirt-redirect.schema.json). The device is one entry (a selector, `usbip://HOST[:PORT]/BUSID`
 * or a device spec object); `listen` and `connect` say where the VMM is. Which of them may be combined
 * (one mode, and a mode flag replaces the file's; an allowlist only when listening) is decided once both
 * sources are merged (redirect.ts).
 */
import * as v from "valibot";
import type { DeviceSpec } from "../devices/spec.js";
import { RENAMED_OPTIONS } from "../network-face/bounds.js";
import { parseHostPort } from "../usbip-attach/attach.js";
import { DEFAULT_MAX_URBS } from "../usbredir/options.js";
import { PEER_BOUND_FLAGS, peerBoundFields } from "./bound-settings.js";
import {
  ANNOUNCE_FLAGS,
  announceFields,
  type CommandSettings,
  DAEMON_FLAGS,
  daemonFields,
  deviceEntrySchema,
  isHostText,
  parsedBy,
  SchemaKey,
  STEERING_FLAGS,
  steeringFields,
} from "./config.js";
import { UsageError } from "./errors.js";

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

/** `[HOST:]PORT` to listen at (host 127.0.0.1 unless given; port 0 picks a free one). */
export function parseListenAddress(text: string): { host: string; port: number } | { path: string } {
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (path.length === 0 || path.includes("\0")) {
      throw new UsageError("redirect", `"${text}": unix: needs a file path`);
    }
    return { path };
  }
  const m = /^(?:(\[[0-9A-Fa-f:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(text);
  const host = m?.[1] === undefined ? "127.0.0.1" : m[1].replace(/^\[(.*)\]$/, "$1");
  const port = m === null ? -1 : Number(m[2]);
  if (m === null || port > 65535 || !isHostText(host)) {
    throw new UsageError("redirect", `"${text}" is not [HOST:]PORT with a port in 0..65535`);
  }
  return { host, port };
}

/** `HOST:PORT` of a VMM that listens (a port is required). */
export function parseConnectAddress(text: string): { host: string; port: number } {
  return parseHostPort(text, -1);
}

/** A redirect --device: what serve's --device takes, or `usbip://HOST[:PORT]/BUSID`. */
const RedirectSelectorSchema = v.pipe(
  v.string(),
  v.minLength(1, "must not be empty"),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    try {
      usbipSpecFromUrl(dataset.value);
    } catch (err) {
      addIssue({ message: (err as Error).message });
    }
  }),
  v.description(
    'an emulated device ("loopback", "keyboard", "storage"), a host device ("VID:PID", "BUS-PORT" like 1-1.2, "serial=S") or one imported over USB/IP ("usbip://HOST[:PORT]/BUSID")',
  ),
);

export const RedirectConfigSchema = v.pipe(
  v.strictObject({
    $schema: SchemaKey,
    device: v.optional(
      v.pipe(deviceEntrySchema(RedirectSelectorSchema), v.description("the one device to redirect")),
    ),
    listen: v.optional(
      v.pipe(
        parsedBy(
          parseListenAddress,
          '[HOST:]PORT with a port in 0..65535 (e.g. "4000", "0.0.0.0:4000"), or unix:PATH',
        ),
        v.description(
          "listen for the VMM's chardev at [HOST:]PORT (host 127.0.0.1 unless given), or on a Unix-domain socket unix:PATH (mode 0660); excludes connect",
        ),
      ),
    ),
    connect: v.optional(
      v.pipe(
        parsedBy(parseConnectAddress, 'HOST:PORT with a port in 1..65535 (e.g. "127.0.0.1:4000")'),
        v.description("connect to a VMM's chardev that listens (server=on), again whenever the link drops"),
      ),
    ),
    ...daemonFields("VMM connections (listen mode)"),
    ...peerBoundFields(String(DEFAULT_MAX_URBS)),
    ...announceFields("_usbredir._tcp; listen mode on a TCP port only"),
    ...steeringFields(),
  }),
  v.title("usbvirt redirect configuration"),
  v.description("Settings of `usbvirt redirect --config FILE`; command-line flags win over them."),
);

export type RedirectConfig = v.InferOutput<typeof RedirectConfigSchema>;

export const REDIRECT_SETTINGS: CommandSettings<RedirectConfig> = {
  command: "redirect",
  schema: RedirectConfigSchema,
  flagOfKey: {
    device: "device",
    listen: "listen",
    connect: "connect",
    ...DAEMON_FLAGS,
    ...PEER_BOUND_FLAGS,
    ...ANNOUNCE_FLAGS,
    ...STEERING_FLAGS,
  },
  numericFlags: Object.values(PEER_BOUND_FLAGS),
  renamedKeys: RENAMED_OPTIONS,
  oneOf: ["listen", "connect"],
};
