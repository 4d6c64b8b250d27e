/**
 * One holder per device across everything the process serves: a bind or an assignment asks `holderOf`
 * who holds the device it names, and is refused with an "in use by …" error naming the holder. The
 * holders are what the process itself serves (USB/IP exports and their importers, usbredir VMs), then
 * whoever holds a plugged-in host device's claim (src/devices/host/device-claim.ts: another connection or
 * another usbvirt process); the same claim refuses the open itself, so this only says it sooner and better.
 */

import { claimHolder } from "../devices/host/device-claim.js";
import { matchesSelector, selectorFromSpec } from "../devices/host/select.js";
import type { DeviceSpec } from "../devices/spec.js";
import { ControlError } from "./protocol.js";

/** A host device as listed (the fields a selector matches). */
export interface ListedHost {
  readonly vendorId: number;
  readonly productId: number;
  readonly portPath: string;
  readonly serial?: string;
  /** The kernel's name for this enumeration (device-claim's key); absent in a fake listing. */
  readonly busNumber?: number;
  readonly deviceAddress?: number;
}

/** Who holds this plugged-in host device's claim (another connection or process), or null. */
export function claimedBy(row: ListedHost): string | null {
  if (row.busNumber === undefined || row.deviceAddress === undefined) return null;
  return claimHolder({ busNumber: row.busNumber, deviceAddress: row.deviceAddress });
}

/** Something that holds a device, and how it is named in a refusal. */
export interface Holding {
  readonly spec: DeviceSpec;
  readonly holder: string;
}

/**
 * Do `a` and `b` name the same device? Emulated devices by name; host devices when they select the same
 * plugged-in device, or (not plugged in) when their selectors are the same.
 */
export function sameDevice(a: DeviceSpec, b: DeviceSpec, rows: readonly ListedHost[]): boolean {
  if (a.kind === "emulated" || b.kind === "emulated") {
    return a.kind === "emulated" && b.kind === "emulated" && a.name === b.name;
  }
  if (a.kind !== "host" || b.kind !== "host") return false;
  const sa = selectorFromSpec(a);
  const sb = selectorFromSpec(b);
  const plugged = rows.filter((r) => !r.portPath.startsWith("usb"));
  const da = plugged.find((r) => matchesSelector(r, sa));
  const db = plugged.find((r) => matchesSelector(r, sb));
  if (da !== undefined || db !== undefined) return da?.portPath === db?.portPath;
  return JSON.stringify(sa) === JSON.stringify(sb);
}

/** The holder of the device `spec` names among `holdings`, or null. */
export function holderOf(
  spec: DeviceSpec,
  holdings: readonly Holding[],
  rows: readonly ListedHost[],
): string | null {
  const own = holdings.find((h) => sameDevice(spec, h.spec, rows))?.holder;
  if (own !== undefined) return own;
  if (spec.kind !== "host") return null;
  const selector = selectorFromSpec(spec);
  const plugged = rows.find((r) => !r.portPath.startsWith("usb") && matchesSelector(r, selector));
  return plugged !== undefined ? claimedBy(plugged) : null;
}

/** Refuse a second claim on a held device. */
export function claimDevice(
  what: string,
  spec: DeviceSpec,
  holdings: readonly Holding[],
  rows: readonly ListedHost[],
): void {
  const holder = holderOf(spec, holdings, rows);
  if (holder !== null) throw new ControlError("in-use", `${what} is in use by ${holder}`);
}
