/**
 * Finding a device by what it is among discovered servers: a selector in serve --device's words
 * ("VID:PID", "serial=S", "class=C", "BUS-ID", joined by ","; filter.ts parses it) is matched against each
 * announced device. The class is the device class the TXT record carries (a device whose class is 0x00 says
 * it per interface, which the record does not carry: "class=hid" finds only devices that say 0x03 whole).
 * A bus id in a selector is the server's bus id (1-1), not the host's port path.
 * resolve() picks the one free match: none, only held ones, and several are each their own verdict.
 * tlsFor() says how to connect to the one picked: a host that requires TLS gets the client's settings, with
 * the announced certificate fingerprint pinned when the client gave no CA and no pin of its own (trust on
 * first discovery); a host that announces no TLS is refused when the client asked for TLS (a downgrade).
 * pick() is both in one verdict, each failure a DeviceSelectionError whose code says which: `attach
 * --device` (src/cli/discover.ts) waits past all but an ambiguous one, the engine's usbip selector spec
 * (src/engine/find-announced.ts) fails the attempt and its reconnect rules try again.
 */
import { type FilterRule, parseSelectorRule } from "../devices/host/filter.js";
import type { TlsClientOptions } from "../tls/tls-settings.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { escapeControls } from "../util/escape.js";
import type { DiscoveredServer } from "./browser.js";
import type { AnnouncedDevice } from "./txt-record.js";

export interface Candidate {
  readonly server: DiscoveredServer;
  readonly device: AnnouncedDevice;
}

export type Resolution =
  | { readonly kind: "one"; readonly candidate: Candidate }
  | { readonly kind: "none" }
  | { readonly kind: "held"; readonly candidates: readonly Candidate[] }
  | { readonly kind: "ambiguous"; readonly candidates: readonly Candidate[] };

/** Parse a selector; throws InvalidOptionError with the reason. */
export function parseDeviceSelector(text: string): FilterRule {
  return parseSelectorRule("allow", text);
}

export function matchesAnnounced(rule: FilterRule, d: AnnouncedDevice): boolean {
  if (rule.vendorId !== undefined && rule.vendorId !== d.vendorId) return false;
  if (rule.productId !== undefined && rule.productId !== d.productId) return false;
  if (rule.class !== undefined && rule.class !== d.deviceClass) return false;
  if (rule.serial !== undefined && rule.serial !== d.serial) return false;
  if (rule.busPort !== undefined && rule.busPort !== d.busid) return false;
  if (rule.bcdDevice !== undefined) return false; // not announced: cannot be told
  return true;
}

export function candidates(servers: readonly DiscoveredServer[], rule: FilterRule): Candidate[] {
  const out: Candidate[] = [];
  for (const server of servers) {
    if (server.service !== "_usbip._tcp") continue;
    for (const device of server.txt.devices) if (matchesAnnounced(rule, device)) out.push({ server, device });
  }
  return out;
}

export function resolve(servers: readonly DiscoveredServer[], rule: FilterRule): Resolution {
  const all = candidates(servers, rule);
  const free = all.filter((c) => !c.device.held);
  if (free.length === 1) return { kind: "one", candidate: free[0]! };
  if (free.length > 1) return { kind: "ambiguous", candidates: free };
  if (all.length > 0) return { kind: "held", candidates: all };
  return { kind: "none" };
}

/** One candidate in words; the name and the serial are the announcing host's, escaped. */
export function describeCandidate(c: Candidate): string {
  const h = (n: number) => n.toString(16).padStart(4, "0");
  const s = c.device.serial;
  const serial = s === undefined ? "" : ` serial=${escapeControls(s)}`;
  return `${c.device.busid} ${h(c.device.vendorId)}:${h(c.device.productId)}${serial} on ${escapeControls(c.server.name)} (${c.server.host}:${c.server.port})${c.device.held ? ", held" : ""}`;
}

/** How to connect to a discovered server: with these TLS settings (none: plain TCP), or not at all, and why. */
export type TlsVerdict =
  | { readonly ok: true; readonly tls?: TlsClientOptions }
  | { readonly ok: false; readonly reason: string };

export function tlsFor(server: DiscoveredServer, given: TlsClientOptions | undefined): TlsVerdict {
  if (!server.txt.tls) {
    if (given === undefined) return { ok: true };
    return {
      ok: false,
      reason:
        "it announces no TLS and TLS settings were given: not used (anyone on the link can announce, so a host without TLS may be a downgrade)",
    };
  }
  if (given?.cert === undefined)
    return {
      ok: false,
      reason: "it requires mutual TLS: give a client certificate (--tls-cert, --tls-key; tls.cert, tls.key)",
    };
  if (given.ca !== undefined || (given.serverFingerprints ?? []).length > 0) return { ok: true, tls: given };
  const fp = server.txt.fingerprint;
  if (fp === undefined)
    return {
      ok: false,
      reason:
        "it requires TLS but announces no certificate fingerprint: give a CA or the server's fingerprint",
    };
  return { ok: true, tls: { ...given, serverFingerprints: [`SHA256:${fp}`] } };
}

export type DeviceSelectionCode =
  | "ERR_USBVIRT_DEVICE_NOT_ANNOUNCED"
  | "ERR_USBVIRT_DEVICE_HELD"
  | "ERR_USBVIRT_AMBIGUOUS_DEVICE"
  | "ERR_USBVIRT_DEVICE_UNREACHABLE";

/** No one device could be picked for a selector; the code says why, `candidates` what was seen. */
export class DeviceSelectionError extends UsbvirtError {
  declare readonly code: DeviceSelectionCode;
  constructor(
    code: DeviceSelectionCode,
    message: string,
    readonly candidates: readonly Candidate[] = [],
  ) {
    super(code, message);
  }
}
registerErrorClass(DeviceSelectionError);

export type Pick =
  | { readonly ok: true; readonly candidate: Candidate; readonly tls?: TlsClientOptions }
  | { readonly ok: false; readonly error: DeviceSelectionError };

/** The one free device `rule` (written `selector`) matches among `servers`, and how to reach it. */
export function pick(
  servers: readonly DiscoveredServer[],
  selector: string,
  rule: FilterRule,
  tls: TlsClientOptions | undefined,
): Pick {
  const fail = (code: DeviceSelectionCode, message: string, seen: readonly Candidate[] = []): Pick => ({
    ok: false,
    error: new DeviceSelectionError(code, message, seen),
  });
  const r = resolve(servers, rule);
  if (r.kind === "none")
    return fail("ERR_USBVIRT_DEVICE_NOT_ANNOUNCED", `no announced device matches "${selector}"`);
  if (r.kind === "held")
    return fail(
      "ERR_USBVIRT_DEVICE_HELD",
      `"${selector}" is announced but held by another client: ${r.candidates.map(describeCandidate).join("; ")}`,
      r.candidates,
    );
  if (r.kind === "ambiguous")
    return fail(
      "ERR_USBVIRT_AMBIGUOUS_DEVICE",
      `"${selector}" matches ${r.candidates.length} free devices; name one (add serial=, or a bus id with the host):\n${r.candidates
        .map((c) => `  ${describeCandidate(c)}`)
        .join("\n")}`,
      r.candidates,
    );
  const verdict = tlsFor(r.candidate.server, tls);
  if (!verdict.ok)
    return fail("ERR_USBVIRT_DEVICE_UNREACHABLE", `${describeCandidate(r.candidate)}: ${verdict.reason}`, [
      r.candidate,
    ]);
  return { ok: true, candidate: r.candidate, ...(verdict.tls !== undefined ? { tls: verdict.tls } : {}) };
}
