/**
 * Device filters: which host devices may be exported (issue #14, item 2). A filter is an ordered list of
 * allow / deny rules; the first rule that matches decides. The model is usbredir's filter
 * (spice/usbredir usbredirfilter.c, used by QEMU's usb-redir `filter=` and spice-gtk), extended with a
 * device's serial number and bus-port path:
 *
 *   rule    = class, vendor id, product id, bcdDevice, serial, port path (each absent = any) + allow | deny
 *   judged  = per "view" of the device: its device class (unless 0x00 "per interface" or 0xef "misc",
 *             which say nothing), then each interface's class. A view takes the verdict of the first rule
 *             that matches it (the rule's class must equal the view's class, the other fields the device's);
 *             a view no rule matches takes the default. The device passes only if every view passes — so
 *             "deny class=hid" refuses a composite device that has a HID interface, as usbredir does.
 *   hubs    = a class 9 view (a hub) is judged only by the rules that name class 9, then by the built-in
 *             "deny hubs": so "allow *" never exports a hub, "allow class=hub" (or "9,-1,-1,-1,1") can.
 *   default = a view no rule matches is denied when any allow rule was given (an allow list), else
 *             allowed (a deny list).
 *
 * Text forms, both accepted wherever rules are:
 *   usbredir  "class,vendor,product,bcd,allow" rules joined by "|": numbers as C reads them (0x.. hex,
 *             else decimal), -1 = any, allow 1 / deny 0; e.g. "0x03,-1,-1,-1,0|-1,-1,-1,-1,1".
 *   readable  "allow SEL" / "deny SEL" joined by "|", SEL = parts joined by ",": "VID:PID" (hex, * = any),
 *             "BUS-PORT" (1-1.2), "serial=S", "class=C" (a number, or a name: hub, hid, storage, …),
 *             "bcd=0x0100"; e.g. "deny class=hid|allow 1209:*". `--allow SEL` / `--deny SEL` are the same
 *             with the action given by the flag.
 * Pure functions over plain data: no libusb here.
 */
import { InvalidOptionError } from "../../util/errors.js";

export type FilterAction = "allow" | "deny";

export interface FilterRule {
  readonly action: FilterAction;
  /** Device or interface class (usbredir's "class"). */
  readonly class?: number;
  readonly vendorId?: number;
  readonly productId?: number;
  /** bcdDevice, the device's release number (usbredir's "version"). */
  readonly bcdDevice?: number;
  readonly serial?: string;
  /** Bus and port path as sysfs names it, "1-1.2". */
  readonly busPort?: string;
}

/** What a rule is matched against (HostDeviceInfo has all of it). */
export interface FilterableDevice {
  readonly vendorId: number;
  readonly productId: number;
  readonly deviceClass: number;
  readonly portPath: string;
  readonly bcdDevice?: number;
  readonly serial?: string;
  /** bInterfaceClass of each interface of the active configuration (absent: not known). */
  readonly interfaceClasses?: readonly number[];
}

export interface DeviceFilter {
  readonly rules: readonly FilterRule[];
}

export interface FilterVerdict {
  readonly allowed: boolean;
  /** Which rule decided, in words ("rule 2: deny class=hid", "the default: no allow rule matched"). */
  readonly why: string;
}

export const HUB_CLASS = 9;

/** Class names accepted in the readable form (USB-IF base class codes). */
export const CLASS_NAMES: Readonly<Record<string, number>> = {
  audio: 0x01,
  comm: 0x02,
  cdc: 0x02,
  hid: 0x03,
  physical: 0x05,
  image: 0x06,
  printer: 0x07,
  storage: 0x08,
  hub: 0x09,
  "cdc-data": 0x0a,
  smartcard: 0x0b,
  security: 0x0d,
  video: 0x0e,
  healthcare: 0x0f,
  "audio-video": 0x10,
  billboard: 0x11,
  "type-c-bridge": 0x12,
  diagnostic: 0xdc,
  wireless: 0xe0,
  misc: 0xef,
  application: 0xfe,
  vendor: 0xff,
};

/**
 * The class a name stands for, or undefined. Only CLASS_NAMES's own keys count: a name such as
 * "constructor" or "__proto__" is no class, not something found on Object.prototype.
 */
function classNamed(name: string): number | undefined {
  const key = name.toLowerCase();
  return Object.hasOwn(CLASS_NAMES, key) ? CLASS_NAMES[key] : undefined;
}

const BUS_PORT = /^\d+-\d+(\.\d+)*$/;

function fail(text: string, why: string): never {
  throw new InvalidOptionError(`filter rule "${text}": ${why}`);
}

/** A number as C's strtol(…, 0) reads it (0x.. hex, else decimal), or -1; null when it is neither. */
function cNumber(t: string): number | null {
  const s = t.trim();
  if (s === "-1") return -1;
  if (/^0x[0-9a-f]+$/i.test(s)) return Number.parseInt(s.slice(2), 16);
  if (/^\d+$/.test(s)) return Number.parseInt(s, 10);
  return null;
}

const USBREDIR_RULE = /^\s*[^,]+(,[^,]+){4}\s*$/;

/** True when `text` is one usbredir rule ("class,vendor,product,bcd,allow", numbers or -1). */
export function isUsbredirRule(text: string): boolean {
  return USBREDIR_RULE.test(text) && text.split(",").every((p) => cNumber(p) !== null);
}

function ranged(text: string, what: string, n: number, max: number): number | undefined {
  if (n === -1) return undefined;
  if (n < 0 || n > max) fail(text, `${what} must be -1 or 0..0x${max.toString(16)}, not ${n}`);
  return n;
}

/** One usbredir rule. */
export function parseUsbredirRule(text: string): FilterRule {
  const parts = text.split(",").map((p) => cNumber(p));
  if (parts.length !== 5 || parts.some((p) => p === null)) {
    fail(text, "a usbredir rule is class,vendor,product,bcd,allow (numbers, -1 = any)");
  }
  const [cls, vid, pid, bcd, allow] = parts as number[];
  if (allow !== 0 && allow !== 1) fail(text, `the last field is 1 (allow) or 0 (deny), not ${allow}`);
  return withoutUndefined({
    action: allow === 1 ? "allow" : "deny",
    class: ranged(text, "class", cls!, 0xff),
    vendorId: ranged(text, "vendor id", vid!, 0xffff),
    productId: ranged(text, "product id", pid!, 0xffff),
    bcdDevice: ranged(text, "bcd", bcd!, 0xffff),
  });
}

function withoutUndefined(r: { [K in keyof FilterRule]: FilterRule[K] | undefined }): FilterRule {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r)) if (v !== undefined) out[k] = v;
  return out as unknown as FilterRule;
}

const hex16 = (text: string, t: string, what: string): number | undefined => {
  if (t === "*" || t === "") return undefined;
  if (!/^[0-9a-fA-F]{1,4}$/.test(t)) fail(text, `${what} must be 1-4 hex digits or *, not "${t}"`);
  return Number.parseInt(t, 16);
};

/** The selector part of a readable rule ("1209:*,class=hid,serial=X") with `action`. */
export function parseSelectorRule(action: FilterAction, selector: string): FilterRule {
  const text = `${action} ${selector}`;
  const r: { -readonly [K in keyof FilterRule]: FilterRule[K] } = { action };
  for (const raw of selector.split(",")) {
    const part = raw.trim();
    if (part === "") continue;
    const eq = part.indexOf("=");
    if (eq > 0) {
      const key = part.slice(0, eq).trim().toLowerCase();
      const value = part.slice(eq + 1).trim();
      if (key === "serial") {
        if (value === "" || value.length > 126) fail(text, "serial must be 1..126 characters");
        r.serial = value;
      } else if (key === "class") {
        const n = classNamed(value) ?? cNumber(value);
        if (n === null || n === undefined || n < 0 || n > 0xff) {
          fail(
            text,
            `class must be 0..0xff or one of ${Object.keys(CLASS_NAMES).join(", ")}, not "${value}"`,
          );
        }
        r.class = n;
      } else if (key === "bcd") {
        const n = cNumber(value);
        if (n === null || n < 0 || n > 0xffff)
          fail(text, `bcd must be 0..0xffff (e.g. 0x0100), not "${value}"`);
        r.bcdDevice = n;
      } else if (key === "path" || key === "port") {
        if (!BUS_PORT.test(value)) fail(text, `path must look like 1-1.2, not "${value}"`);
        r.busPort = value;
      } else {
        fail(text, `unknown key "${key}" (known: class, serial, bcd, path)`);
      }
      continue;
    }
    const [ids, at] = part.split("@", 2) as [string, string | undefined];
    if (at !== undefined) {
      if (!BUS_PORT.test(at)) fail(text, `path must look like 1-1.2, not "${at}"`);
      r.busPort = at;
    }
    if (ids.includes(":")) {
      const [v, p, extra] = ids.split(":");
      if (extra !== undefined) fail(text, `"${ids}" is not VID:PID`);
      const vid = hex16(text, v!, "vendor id");
      const pid = hex16(text, p!, "product id");
      if (vid !== undefined) r.vendorId = vid;
      if (pid !== undefined) r.productId = pid;
    } else if (BUS_PORT.test(ids)) {
      r.busPort = ids;
    } else if (ids === "*") {
      // matches everything: "allow *"
    } else if (ids !== "") {
      fail(text, `cannot read "${part}" as VID:PID, a path like 1-1.2, *, or key=value`);
    }
  }
  if (Object.keys(r).length === 1 && !/^\s*\*(:\*)?\s*$/.test(selector)) {
    fail(text, 'a rule needs something to match (use "*" to match every device)');
  }
  return r;
}

/** One rule in either text form ("0x03,-1,-1,-1,0" or "deny class=hid"). */
export function parseRule(text: string): FilterRule {
  const t = text.trim();
  if (isUsbredirRule(t)) return parseUsbredirRule(t);
  const m = /^(allow|deny)\s+(.+)$/i.exec(t);
  if (m === null) {
    fail(text, 'expected "allow SEL", "deny SEL" or a usbredir rule "class,vendor,product,bcd,allow"');
  }
  return parseSelectorRule(m[1]!.toLowerCase() as FilterAction, m[2]!);
}

/** Rules joined by "|" (usbredir's separator), in either text form; empty parts are skipped. */
export function parseRules(text: string): FilterRule[] {
  return text
    .split("|")
    .map((p) => p.trim())
    .filter((p) => p !== "")
    .map((p) => parseRule(p));
}

const hex = (n: number, w: number) => `0x${n.toString(16).padStart(w, "0")}`;

/** The usbredir form of a rule (null when it has a serial or a path, which usbredir cannot say). */
export function formatUsbredirRule(r: FilterRule): string | null {
  if (r.serial !== undefined || r.busPort !== undefined) return null;
  const f = (n: number | undefined, w: number) => (n === undefined ? "-1" : hex(n, w));
  return `${f(r.class, 2)},${f(r.vendorId, 4)},${f(r.productId, 4)},${f(r.bcdDevice, 4)},${r.action === "allow" ? 1 : 0}`;
}

/** The readable form of a rule ("deny class=0x03,1209:*"). */
export function formatRule(r: FilterRule): string {
  const parts: string[] = [];
  const h = (n: number | undefined) => (n === undefined ? "*" : n.toString(16).padStart(4, "0"));
  if (r.vendorId !== undefined || r.productId !== undefined) parts.push(`${h(r.vendorId)}:${h(r.productId)}`);
  if (r.class !== undefined) parts.push(`class=${hex(r.class, 2)}`);
  if (r.bcdDevice !== undefined) parts.push(`bcd=${hex(r.bcdDevice, 4)}`);
  if (r.busPort !== undefined) parts.push(`path=${r.busPort}`);
  if (r.serial !== undefined) parts.push(`serial=${r.serial}`);
  return `${r.action} ${parts.length === 0 ? "*" : parts.join(",")}`;
}

/** The classes a device is judged under (see the header). */
export function viewsOf(d: FilterableDevice): number[] {
  const views: number[] = [];
  const interfaces = d.interfaceClasses ?? [];
  if ((d.deviceClass !== 0x00 && d.deviceClass !== 0xef) || interfaces.length === 0)
    views.push(d.deviceClass);
  views.push(...interfaces);
  return views;
}

/** True when `r` matches `d` seen under class `cls`. */
export function ruleMatches(r: FilterRule, d: FilterableDevice, cls: number): boolean {
  if (r.class !== undefined && r.class !== cls) return false;
  if (r.vendorId !== undefined && r.vendorId !== d.vendorId) return false;
  if (r.productId !== undefined && r.productId !== d.productId) return false;
  if (r.bcdDevice !== undefined && r.bcdDevice !== d.bcdDevice) return false;
  if (r.serial !== undefined && r.serial !== d.serial) return false;
  if (r.busPort !== undefined && r.busPort !== d.portPath) return false;
  return true;
}

/** Judge `d`: every view must be allowed; the first view refused says why. */
export function judge(filter: DeviceFilter, d: FilterableDevice): FilterVerdict {
  const rules = filter.rules;
  const fallback: FilterAction = rules.some((r) => r.action === "allow") ? "deny" : "allow";
  let allowedWhy = "";
  for (const cls of viewsOf(d)) {
    const i = rules.findIndex((r) => (cls !== HUB_CLASS || r.class === HUB_CLASS) && ruleMatches(r, d, cls));
    const view = `class ${hex(cls, 2)}`;
    if (i < 0) {
      if (cls === HUB_CLASS) return { allowed: false, why: `the built-in rule: deny hubs (${view})` };
      if (fallback === "deny") return { allowed: false, why: `no allow rule matched (${view})` };
      allowedWhy ||= "no rule matched";
      continue;
    }
    const rule = rules[i]!;
    const name = `rule ${i + 1}: ${formatRule(rule)}`;
    if (rule.action === "deny") return { allowed: false, why: `${name} (${view})` };
    allowedWhy ||= name;
  }
  return { allowed: true, why: allowedWhy };
}

export function allows(filter: DeviceFilter, d: FilterableDevice): boolean {
  return judge(filter, d).allowed;
}

/**
 * The filter of `usbvirt serve`: the `filter` rules in their order (each entry one rule or several joined
 * by "|", in either text form), then each `--deny SEL`, then each `--allow SEL` (so a deny given as a flag
 * wins over an allow given as a flag, as before).
 */
export function filterFromLists(lists: {
  readonly filter?: readonly string[];
  readonly deny?: readonly string[];
  readonly allow?: readonly string[];
}): DeviceFilter {
  return {
    rules: [
      ...(lists.filter ?? []).flatMap((t) => parseRules(t)),
      ...(lists.deny ?? []).map((t) => parseSelectorRule("deny", t)),
      ...(lists.allow ?? []).map((t) => parseSelectorRule("allow", t)),
    ],
  };
}

/** Whether any rule needs the device's serial (reading it means opening the device). */
export function needsSerial(filter: DeviceFilter): boolean {
  return filter.rules.some((r) => r.serial !== undefined);
}
