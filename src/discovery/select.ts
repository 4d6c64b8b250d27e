/**
 * Finding a device by what it is among discovered servers: a selector in serve --device's words
 * ("VID:PID", "serial=S", "class=C", "BUS-ID", joined by ","; filter.ts parses it) is matched against each
 * announced device. The class is the device class the TXT record carries (a device whose class is 0x00 says
 * it per interface, which the record does not carry: "class=hid" finds only devices that say 0x03 whole).
 * A bus id in a selector is the server's bus id (1-1), not the host's port path.
 * resolve() picks the one free match: none, only held ones, and several are each their own verdict.
 */
import { type FilterRule, parseSelectorRule } from "../devices/host/filter.js";
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

export function describeCandidate(c: Candidate): string {
  const h = (n: number) => n.toString(16).padStart(4, "0");
  const s = c.device.serial;
  const serial = s === undefined ? "" : ` serial=${/^[\x20-\x7e]*$/.test(s) ? s : JSON.stringify(s)}`;
  // JSON-quoted where a peer's text could hold control characters (the name and the serial).
  const name = /^[\x20-\x7e]*$/.test(c.server.name) ? c.server.name : JSON.stringify(c.server.name);
  return `${c.device.busid} ${h(c.device.vendorId)}:${h(c.device.productId)}${serial} on ${name} (${c.server.host}:${c.server.port})${c.device.held ? ", held" : ""}`;
}
