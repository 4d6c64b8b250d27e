/**
 * The TXT record a usbvirt server announces (DNS-SD, RFC 6763 §6): what a client needs before it connects.
 * One "key=value" string each, every string at most 255 bytes (§6.1), the whole record kept under
 * TXT_BUDGET bytes so the announcement fits one Ethernet-sized packet with its PTR, SRV and A records:
 *
 *   txtvers=1            this layout
 *   v=0.1.0              usbvirt's version
 *   tls=0 | tls=1        whether the server requires TLS
 *   fp=HEX               the server certificate's SHA-256 fingerprint (only with tls=1, when known)
 *   status=HOST:PORT     where its metrics and status page are (only when it serves them)
 *   stls=1               the status page speaks HTTPS with mutual TLS (only with status=)
 *   d=BUSID,VID:PID,CC,SERIAL,F|H
 *                        one string per exported device, in bus-id order: bus id, ids in hex, device
 *                        class in hex, serial (percent-encoded, may be empty; left out when the
 *                        entry would pass 255 bytes), free or held
 *   more=N               N devices did not fit the budget (a client lists them with `list --remote`;
 *                        their serials are not announced, so a serial selector cannot find them)
 *
 * decodeTxt is the trust boundary for what another host sends: every string and field is checked, a
 * record over MAX_TXT_BYTES or with more than MAX_TXT_STRINGS strings is refused whole, a bad device
 * entry is dropped and counted. It never throws.
 */

/** The whole record's byte budget (the strings plus their length bytes). */
export const TXT_BUDGET = 1300;
/** What a decoder accepts at most: anything larger is hostile or not ours. */
export const MAX_TXT_BYTES = 4096;
export const MAX_TXT_STRINGS = 64;
/** A serial longer than this is cut before it is announced (a USB string descriptor holds 126 characters). */
export const MAX_SERIAL_CHARS = 126;

export interface AnnouncedDevice {
  readonly busid: string;
  readonly vendorId: number;
  readonly productId: number;
  readonly deviceClass: number;
  readonly serial?: string;
  readonly held: boolean;
}

export interface AnnouncedInfo {
  readonly version: string;
  readonly tls: boolean;
  readonly fingerprint?: string;
  readonly status?: string;
  /** The status page needs (mutual) TLS. */
  readonly statusTls?: boolean;
  readonly devices: readonly AnnouncedDevice[];
}

export interface DecodedTxt extends AnnouncedInfo {
  /** Devices the server has that did not fit its record. */
  readonly more: number;
  /** Device entries that were malformed and dropped. */
  readonly dropped: number;
}

export type TxtVerdict =
  | { readonly ok: true; readonly txt: DecodedTxt }
  | { readonly ok: false; readonly reason: string };

const BUSID = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;
const HEX4 = /^[0-9a-f]{4}$/;
const HEX2 = /^[0-9a-f]{2}$/;
const VERSION = /^[0-9A-Za-z.+-]{1,32}$/;
const FINGERPRINT = /^[0-9a-f]{64}$/;
const STATUS = /^[0-9A-Za-z.:[\]-]{1,64}:\d{1,5}$/;

const hex = (n: number, width: number) => n.toString(16).padStart(width, "0");

/** Serial characters kept as they are; every other byte of its UTF-8 is %XX. */
function encodeSerial(serial: string): string {
  const cut = [...serial].slice(0, MAX_SERIAL_CHARS).join("");
  let out = "";
  for (const byte of Buffer.from(cut, "utf8")) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._~-]/.test(c) ? c : `%${hex(byte, 2).toUpperCase()}`;
  }
  return out;
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function decodeSerial(text: string): string | null {
  if (!/^([A-Za-z0-9._~-]|%[0-9A-F]{2})*$/.test(text)) return null;
  const bytes = Buffer.from(
    text.replace(/%([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(Number.parseInt(h, 16))),
    "latin1",
  );
  let serial: string;
  try {
    serial = STRICT_UTF8.decode(bytes);
  } catch {
    return null; // not UTF-8
  }
  return [...serial].length > MAX_SERIAL_CHARS ? null : serial;
}

/** A TXT string holds at most this many bytes (RFC 6763 §6.1: one length byte). */
const TXT_STRING_MAX = 255;

/**
 * A device's string. A serial whose entry would pass TXT_STRING_MAX bytes (percent-encoding triples every
 * byte that is not a plain letter or digit) is left out rather than cut: a cut serial is another device's.
 */
export function deviceEntry(d: AnnouncedDevice): string {
  const entry = (serial: string) =>
    `d=${d.busid},${hex(d.vendorId, 4)}:${hex(d.productId, 4)},${hex(d.deviceClass, 2)},${serial},${d.held ? "H" : "F"}`;
  const full = entry(encodeSerial(d.serial ?? ""));
  return full.length <= TXT_STRING_MAX ? full : entry("");
}

/** The record's strings: the fixed fields, then as many devices as fit TXT_BUDGET, then `more=N`. */
export function encodeTxt(info: AnnouncedInfo): string[] {
  const strings = ["txtvers=1", `v=${info.version}`, `tls=${info.tls ? 1 : 0}`];
  if (info.tls && info.fingerprint !== undefined) strings.push(`fp=${info.fingerprint}`);
  if (info.status !== undefined) strings.push(`status=${info.status}`);
  if (info.status !== undefined && info.statusTls === true) strings.push("stls=1");
  let used = strings.reduce((n, s) => n + 1 + Buffer.byteLength(s), 0);
  // Room kept for the `more=NN` string should any device not fit.
  const reserve = 1 + "more=31".length;
  let shown = 0;
  for (const d of info.devices) {
    const s = deviceEntry(d);
    const cost = 1 + Buffer.byteLength(s);
    const last = shown === info.devices.length - 1;
    if (used + cost + (last ? 0 : reserve) > TXT_BUDGET) break;
    strings.push(s);
    used += cost;
    shown++;
  }
  if (shown < info.devices.length) strings.push(`more=${info.devices.length - shown}`);
  return strings;
}

/** Total wire size of a record's strings (each with its length byte). */
export function txtBytes(strings: readonly (string | Uint8Array)[]): number {
  return strings.reduce((n, s) => n + 1 + (typeof s === "string" ? Buffer.byteLength(s) : s.length), 0);
}

function parseDevice(value: string): AnnouncedDevice | null {
  const parts = value.split(",");
  if (parts.length !== 5) return null;
  const [busid, ids, cls, serialText, state] = parts as [string, string, string, string, string];
  if (!BUSID.test(busid)) return null;
  const [vid, pid] = ids.split(":");
  if (vid === undefined || pid === undefined || !HEX4.test(vid) || !HEX4.test(pid) || !HEX2.test(cls))
    return null;
  if (state !== "F" && state !== "H") return null;
  const serial = decodeSerial(serialText);
  if (serial === null) return null;
  return {
    busid,
    vendorId: Number.parseInt(vid, 16),
    productId: Number.parseInt(pid, 16),
    deviceClass: Number.parseInt(cls, 16),
    ...(serial !== "" ? { serial } : {}),
    held: state === "H",
  };
}

/** Check and read a TXT record from the network (see the header). */
export function decodeTxt(strings: readonly Uint8Array[]): TxtVerdict {
  if (strings.length > MAX_TXT_STRINGS)
    return { ok: false, reason: `${strings.length} strings (at most ${MAX_TXT_STRINGS})` };
  const total = txtBytes(strings);
  if (total > MAX_TXT_BYTES) return { ok: false, reason: `${total} bytes (at most ${MAX_TXT_BYTES})` };
  const fields = new Map<string, string>();
  const devices: AnnouncedDevice[] = [];
  const seen = new Set<string>();
  let dropped = 0;
  for (const raw of strings) {
    if (raw.length > 255) return { ok: false, reason: "a string over 255 bytes" };
    const text = Buffer.from(raw).toString("utf8");
    const eq = text.indexOf("=");
    if (eq <= 0) continue; // RFC 6763 §6.4: no key, ignored
    const key = text.slice(0, eq).toLowerCase();
    const value = text.slice(eq + 1);
    if (key === "d") {
      const d = parseDevice(value);
      if (d === null || seen.has(d.busid)) dropped++;
      else {
        seen.add(d.busid);
        devices.push(d);
      }
      continue;
    }
    if (!fields.has(key)) fields.set(key, value); // §6.4: the first of a repeated key counts
  }
  if (fields.get("txtvers") !== "1")
    return { ok: false, reason: `txtvers is ${JSON.stringify(fields.get("txtvers") ?? null)}, not "1"` };
  const version = fields.get("v");
  if (version === undefined || !VERSION.test(version)) return { ok: false, reason: "no usable version (v=)" };
  const tls = fields.get("tls");
  if (tls !== "0" && tls !== "1") return { ok: false, reason: "tls= is neither 0 nor 1" };
  const fp = fields.get("fp");
  const status = fields.get("status");
  const moreText = fields.get("more") ?? "0";
  const more = /^\d{1,3}$/.test(moreText) ? Number(moreText) : 0;
  return {
    ok: true,
    txt: {
      version,
      tls: tls === "1",
      ...(fp !== undefined && FINGERPRINT.test(fp) ? { fingerprint: fp } : {}),
      ...(status !== undefined && STATUS.test(status)
        ? { status, ...(fields.get("stls") === "1" ? { statusTls: true } : {}) }
        : {}),
      devices,
      more,
      dropped,
    },
  };
}
