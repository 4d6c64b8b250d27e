/**
 * Choosing host devices: a selector names a device by vid:pid, bus-port path
 * ("1-1.2") or serial (every criterion given must hold), and a filter is an
 * allow list and a deny list of selectors (deny wins; an empty allow list
 * allows everything). Pure functions over HostDeviceInfo: no libusb here.
 *
 * Text form (for the CLI and config files): "1209:7301", "1209:7301@1-1.2",
 * "1-1.2", "serial=ABC123", or the parts joined with "," ("1209:*,serial=X").
 */
import { InvalidOptionError } from "../../util/errors.js";
import type { HostDeviceSpec } from "../spec.js";

export interface HostSelector {
  readonly vendorId?: number;
  readonly productId?: number;
  /** Bus number and port path, as Linux names it in sysfs: "1-1.2". */
  readonly busPort?: string;
  readonly serial?: string;
}

export interface HostFilter {
  readonly allow?: readonly HostSelector[];
  readonly deny?: readonly HostSelector[];
}

/** What a selector is matched against (a subset of HostDeviceInfo). */
export interface SelectableDevice {
  readonly vendorId: number;
  readonly productId: number;
  readonly portPath: string;
  readonly serial?: string;
}

const BUS_PORT = /^\d+-\d+(\.\d+)*$/;

export function isEmptySelector(s: HostSelector): boolean {
  return (
    s.vendorId === undefined && s.productId === undefined && s.busPort === undefined && s.serial === undefined
  );
}

/** True when `device` meets every criterion of `selector`. An empty selector matches nothing. */
export function matchesSelector(device: SelectableDevice, selector: HostSelector): boolean {
  if (isEmptySelector(selector)) return false;
  if (selector.vendorId !== undefined && device.vendorId !== selector.vendorId) return false;
  if (selector.productId !== undefined && device.productId !== selector.productId) return false;
  if (selector.busPort !== undefined && device.portPath !== selector.busPort) return false;
  if (selector.serial !== undefined && device.serial !== selector.serial) return false;
  return true;
}

/** Deny wins; with no allow list everything not denied passes. */
export function passesFilter(device: SelectableDevice, filter: HostFilter): boolean {
  if ((filter.deny ?? []).some((s) => matchesSelector(device, s))) return false;
  const allow = filter.allow ?? [];
  return allow.length === 0 || allow.some((s) => matchesSelector(device, s));
}

export function selectorFromSpec(spec: HostDeviceSpec): HostSelector {
  const s: { -readonly [K in keyof HostSelector]: HostSelector[K] } = {};
  if (spec.vendorId !== undefined) s.vendorId = spec.vendorId;
  if (spec.productId !== undefined) s.productId = spec.productId;
  if (spec.busPort !== undefined) s.busPort = spec.busPort;
  if (spec.serial !== undefined) s.serial = spec.serial;
  return checkSelector(s);
}

export function specFromSelector(s: HostSelector): HostDeviceSpec {
  return { kind: "host", ...s };
}

function checkSelector(s: HostSelector): HostSelector {
  for (const key of ["vendorId", "productId"] as const) {
    const v = s[key];
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 0xffff)) {
      throw new InvalidOptionError(`selector.${key} must be an integer in 0..0xffff, not ${v}`);
    }
  }
  if (s.busPort !== undefined && !BUS_PORT.test(s.busPort)) {
    throw new InvalidOptionError(`selector.busPort must look like "1-1.2", not "${s.busPort}"`);
  }
  if (isEmptySelector(s))
    throw new InvalidOptionError("a host device selector needs vid:pid, a bus-port path or a serial");
  return s;
}

const hex16 = (t: string, what: string): number | undefined => {
  if (t === "*" || t === "") return undefined;
  if (!/^[0-9a-fA-F]{1,4}$/.test(t))
    throw new InvalidOptionError(`${what} must be 1-4 hex digits, not "${t}"`);
  return Number.parseInt(t, 16);
};

/** Parse the text form (see the header). */
export function parseSelector(text: string): HostSelector {
  const s: { -readonly [K in keyof HostSelector]: HostSelector[K] } = {};
  for (const raw of text.split(",")) {
    const part = raw.trim();
    if (part === "") continue;
    if (part.startsWith("serial=")) {
      s.serial = part.slice("serial=".length);
      continue;
    }
    const [ids, at] = part.split("@", 2) as [string, string | undefined];
    if (at !== undefined) s.busPort = at;
    if (ids.includes(":")) {
      const [v, p] = ids.split(":", 2) as [string, string];
      const vid = hex16(v, "vendor id");
      const pid = hex16(p, "product id");
      if (vid !== undefined) s.vendorId = vid;
      if (pid !== undefined) s.productId = pid;
    } else if (BUS_PORT.test(ids)) {
      s.busPort = ids;
    } else if (ids !== "") {
      throw new InvalidOptionError(
        `cannot read "${part}" as vid:pid, a bus-port path like 1-1.2, or serial=...`,
      );
    }
  }
  return checkSelector(s);
}

export function formatSelector(s: HostSelector): string {
  const h = (n: number | undefined) => (n === undefined ? "*" : n.toString(16).padStart(4, "0"));
  const parts: string[] = [];
  if (s.vendorId !== undefined || s.productId !== undefined) parts.push(`${h(s.vendorId)}:${h(s.productId)}`);
  if (s.busPort !== undefined) parts.push(s.busPort);
  if (s.serial !== undefined) parts.push(`serial=${s.serial}`);
  return parts.join(",");
}
