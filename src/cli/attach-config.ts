/**
 * The settings of `usbvirt attach` when it attaches devices by what they are (`--device SEL`, repeatable,
 * or a `--config FILE`), through the machinery of config.ts: one schema for both sources, errors naming the
 * key or the flag, flags winning key by key, published as schema/usbvirt-attach.schema.json. The file is a
 * list of devices, each a selector (as serve --device takes it) or an object with its own TLS settings;
 * the top-level TLS keys are every device's defaults. `attach HOST BUSID` takes flags only.
 *
 *   {"devices": ["serial=ABC", {"device": "1050:0407", "tlsCert": "c.pem", "tlsKey": "c.key",
 *    "tlsCa": "ca.pem"}], "discoverTimeout": 2}
 */
import * as v from "valibot";
import type { TlsClientOptions } from "../tls/tls-settings.js";
import {
  type CommandSettings,
  deviceEntrySchema,
  FilePath,
  Fingerprint,
  HostSelectorText,
  SchemaKey,
} from "./config.js";
import { UsageError } from "./errors.js";
import { tlsClientOptions } from "./tls-flags.js";

/** A number of seconds above 0, at most a day: a JSON number, or the flag's text ("5", "0.5"). */
const secondsMessage = (i: v.BaseIssue<unknown>) =>
  `must be a number of seconds above 0, at most 86400 (e.g. 5 or 0.5), not ${JSON.stringify(i.input)}`;
const Seconds = (what: string) =>
  v.pipe(
    v.union(
      [
        v.pipe(v.number(), v.minValue(0.001, secondsMessage), v.maxValue(86_400, secondsMessage)),
        v.pipe(
          v.string(),
          v.regex(/^\d+(\.\d+)?$/, secondsMessage),
          v.check((t) => Number(t) > 0 && Number(t) <= 86_400, secondsMessage),
        ),
      ],
      secondsMessage,
    ),
    v.description(what),
  );

/** How one device (or, at the top, every device) connects to a server that requires TLS. */
function tlsClientFields(scope: string) {
  return {
    tlsCert: v.optional(
      v.pipe(
        FilePath,
        v.description(`mutual TLS: the client certificate (PEM) presented ${scope}; with tlsKey`),
      ),
    ),
    tlsKey: v.optional(
      v.pipe(FilePath, v.description("mutual TLS: the client certificate's private key (PEM)")),
    ),
    tlsCa: v.optional(
      v.pipe(
        FilePath,
        v.description(
          `verify the server ${scope} with this CA (PEM). Without it (and without tlsServerFingerprints) the certificate fingerprint the server announces is pinned: trust on first discovery`,
        ),
      ),
    ),
    tlsServerFingerprints: v.optional(
      v.pipe(
        v.array(Fingerprint, "must be a list of fingerprints"),
        v.description(
          `accept only a server certificate of these SHA-256 fingerprints ${scope} ("SHA256:AB:…")`,
        ),
      ),
    ),
  };
}

const DeviceSelector = v.pipe(
  HostSelectorText,
  v.description('the device by what it is: "VID:PID", "serial=S", "class=C", a bus id, joined by ","'),
);

const DeviceObject = v.strictObject({
  device: DeviceSelector,
  ...tlsClientFields("for this device"),
});

/** A device entry: a selector string, or an object with the selector and its own TLS settings. */
const DeviceEntry = deviceEntrySchema(
  DeviceSelector,
  DeviceObject,
  'a selector string ("serial=ABC") or an object {"device": "serial=ABC", …}',
);

export const AttachConfigSchema = v.pipe(
  v.strictObject({
    $schema: SchemaKey,
    devices: v.optional(
      v.pipe(
        v.array(DeviceEntry, (i) => `must be a list of devices, not ${JSON.stringify(i.input)}`),
        v.minLength(1, "lists no device"),
        v.maxLength(31, "lists more than 31 devices"),
        v.description(
          "the devices to attach, each found among the servers announcing on the network and followed to whichever announces it next",
        ),
      ),
    ),
    ...tlsClientFields("for every device (a device's own keys win)"),
    timeout: v.optional(
      Seconds("give up when a server does not answer within this many seconds (default 5)"),
    ),
    keepalive: v.optional(Seconds("check on a quiet server after this many seconds (default 5)")),
    discoverTimeout: v.optional(
      Seconds("how long each look at the network listens for announcements, in seconds (default 2)"),
    ),
    noReconnect: v.optional(
      v.pipe(v.boolean(), v.description("give a device up when it is lost instead of following it")),
    ),
  }),
  v.title("usbvirt attach configuration"),
  v.description("Settings of `usbvirt attach --config FILE`; command-line flags win over them."),
);

export type AttachConfig = v.InferOutput<typeof AttachConfigSchema>;

export const ATTACH_SETTINGS: CommandSettings<AttachConfig> = {
  command: "attach",
  schema: AttachConfigSchema,
  flagOfKey: {
    devices: "device",
    tlsCert: "tls-cert",
    tlsKey: "tls-key",
    tlsCa: "tls-ca",
    tlsServerFingerprints: "tls-server-fingerprint",
    timeout: "timeout",
    keepalive: "keepalive",
    discoverTimeout: "discover-timeout",
    noReconnect: "no-reconnect",
  },
};

/** One device to attach: its selector and how it connects. */
export interface AttachEntry {
  readonly selector: string;
  readonly tls: TlsClientOptions | null;
}

/** The config's devices, each with its TLS settings (its own keys over the top-level ones). */
export function attachEntries(config: AttachConfig): AttachEntry[] {
  return (config.devices ?? []).map((d) => {
    const own = typeof d === "string" ? { device: d } : d;
    const pick = <K extends "tlsCert" | "tlsKey" | "tlsCa" | "tlsServerFingerprints">(k: K) =>
      own[k as keyof typeof own] ?? config[k];
    try {
      const tls = tlsClientOptions(
        "attach",
        {
          "tls-cert": pick("tlsCert"),
          "tls-key": pick("tlsKey"),
          "tls-ca": pick("tlsCa"),
          "tls-server-fingerprint": pick("tlsServerFingerprints") ?? [],
        },
        true,
      );
      return { selector: own.device, tls };
    } catch (err) {
      if (err instanceof UsageError) throw new UsageError("attach", `"${own.device}": ${err.message}`);
      throw err;
    }
  });
}

/** A checked seconds setting in milliseconds, or `fallbackS` seconds. */
export function millisecondsOf(seconds: number | string | undefined, fallbackS: number): number {
  return Math.max(1, Math.round((seconds === undefined ? fallbackS : Number(seconds)) * 1000));
}
