/**
 * Which host devices `usbvirt serve` exports at start, under its filter (src/devices/host/filter.ts):
 * every explicit host `--device` entry is judged like any other device (a denied one is an error that says
 * which rule refused it), and each `--allow SEL` also exports every plugged-in host device it matches that
 * the whole filter allows (root hubs never; hubs only if a rule allows class 9). Pure over the listing, so
 * the CLI tests can hand it a fake one. planPorts gives every device its port (its bus id), keeping the
 * ports of devices not plugged in yet, and --match-new's spare ones, free (src/usbip-server/host-exports.ts
 * fills them as devices come and go).
 */
import {
  type DeviceFilter,
  type FilterableDevice,
  judge,
  parseSelectorRule,
  ruleMatches,
} from "../devices/host/filter.js";
import { type HostSelector, matchesSelector, selectorFromSpec } from "../devices/host/select.js";
import type { DeviceSpec, HostDeviceSpec } from "../devices/spec.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

/** A listed host device as the filter needs it (HostDeviceInfo has all of it; a fake listing may lack classes). */
export interface ListedDevice {
  readonly vendorId: number;
  readonly productId: number;
  readonly portPath: string;
  readonly serial?: string;
  readonly deviceClass?: number;
  readonly bcdDevice?: number;
  readonly interfaceClasses?: readonly number[];
}

export function filterable(d: ListedDevice): FilterableDevice {
  return { ...d, deviceClass: d.deviceClass ?? 0 };
}

/** A host `--device` entry refused by the filter. */
export class DeniedDeviceError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_DEVICE_DENIED";
  constructor(message: string) {
    super("ERR_USBVIRT_DEVICE_DENIED", message);
  }
}
registerErrorClass(DeniedDeviceError);

/**
 * Judge each explicit host spec against the listing: when the device it names is plugged in and the
 * filter denies it, throw, naming the rule. (One that is not plugged in is judged when it appears.)
 */
export function checkExplicitDevices(
  specs: readonly DeviceSpec[],
  filter: DeviceFilter,
  rows: readonly ListedDevice[],
): void {
  for (const spec of specs) {
    if (spec.kind !== "host") continue;
    const selector = selectorFromSpec(spec);
    const match = rows.find((r) => !r.portPath.startsWith("usb") && matchesSelector(r, selector));
    if (match === undefined) continue;
    const verdict = judge(filter, filterable(match));
    if (!verdict.allowed) {
      throw new DeniedDeviceError(
        `host device ${describe(spec)} (${match.portPath}, ${hex4(match.vendorId)}:${hex4(match.productId)}) is denied by the filter: ${verdict.why}`,
      );
    }
  }
}

/** The host devices each `--allow SEL` exports at start: plugged in, matched by SEL, allowed by the filter. */
export function allowedExports(
  allow: readonly string[],
  filter: DeviceFilter,
  rows: readonly ListedDevice[],
  already: readonly DeviceSpec[],
): HostDeviceSpec[] {
  const rules = allow.map((t) => parseSelectorRule("allow", t));
  const taken = new Set(
    already.flatMap((s) => (s.kind === "host" && s.busPort !== undefined ? [s.busPort] : [])),
  );
  const out: HostDeviceSpec[] = [];
  for (const d of rows) {
    if (d.portPath.startsWith("usb") || taken.has(d.portPath)) continue; // root hubs; already exported
    const f = filterable(d);
    const selected = rules.some((r) =>
      [f.deviceClass, ...(f.interfaceClasses ?? [])].some((c) => ruleMatches(r, f, c)),
    );
    if (selected && judge(filter, f).allowed) out.push({ kind: "host", busPort: d.portPath });
  }
  return out;
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

function describe(spec: HostDeviceSpec): string {
  const parts: string[] = [];
  if (spec.vendorId !== undefined || spec.productId !== undefined) {
    parts.push(
      `${spec.vendorId === undefined ? "*" : hex4(spec.vendorId)}:${spec.productId === undefined ? "*" : hex4(spec.productId)}`,
    );
  }
  if (spec.busPort !== undefined) parts.push(spec.busPort);
  if (spec.serial !== undefined) parts.push(`serial=${spec.serial}`);
  return parts.join(",");
}

/** Extra ports `--match-new` keeps free for devices plugged in later (each holds 8 MiB of guest memory). */
export const MATCH_NEW_PORTS = 8;

export interface PortPlan {
  /** The server's devices, by port: null keeps a port free for a device exported later. */
  readonly devices: readonly (DeviceSpec | null)[];
  /** Each host selector, the port it owns, and the path of the device exported there now (if any). */
  readonly wants: readonly { selector: HostSelector; port: number; exportedPath?: string }[];
  /** Ports for --match-new. */
  readonly freePorts: readonly number[];
}

/**
 * Give every device a port: a host selector that matches a plugged-in device is exported at start; one
 * that matches nothing yet keeps its port (its bus id) empty until the device appears. Without a listing
 * (`rows` null: no libusb) the specs are exported as given, as before.
 */
export function planPorts(
  specs: readonly DeviceSpec[],
  rows: readonly ListedDevice[] | null,
  matchNew: boolean,
): PortPlan {
  const devices: (DeviceSpec | null)[] = [];
  const wants: { selector: HostSelector; port: number; exportedPath?: string }[] = [];
  specs.forEach((spec, i) => {
    const port = i + 1;
    if (spec.kind !== "host" || rows === null) {
      devices.push(spec);
      return;
    }
    const selector = selectorFromSpec(spec);
    const match = rows.find((r) => !r.portPath.startsWith("usb") && matchesSelector(r, selector));
    if (match === undefined) {
      devices.push(null);
      wants.push({ selector, port });
    } else {
      devices.push(spec);
      wants.push({ selector, port, exportedPath: match.portPath });
    }
  });
  const freePorts: number[] = [];
  if (matchNew) {
    for (let p = devices.length + 1; p <= Math.min(31, specs.length + MATCH_NEW_PORTS); p++) {
      devices.push(null);
      freePorts.push(p);
    }
  }
  return { devices, wants, freePorts };
}
