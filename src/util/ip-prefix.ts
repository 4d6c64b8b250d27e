/**
 * Strict parsing of an address or CIDR subnet ("192.168.1.0/24", "10.0.0.7", "fd00::/8", "::1"), the one
 * parser behind `--allow-client`, the config file's `allowClients` and UsbipServer's `allow` option.
 *
 * Why strict: an allowlist entry that is read loosely opens the server. `Number("")` is 0, so "10.0.0.7/"
 * once meant "/0" (every IPv4 client), and "10.0.0.7/8/32" meant "/8". Here the text is exactly an IPv4 or
 * IPv6 address (no zone id, no spaces), optionally followed by one "/" and a prefix length written in
 * decimal digits (no sign, no leading zero) in 0..32 (IPv4) or 0..128 (IPv6). Anything else is refused with
 * the reason; a value, never an exception, so callers word the error for their own boundary.
 */
import { BlockList, isIP } from "node:net";

export interface IpPrefix {
  /** The address as written (BlockList masks host bits of a subnet itself). */
  readonly address: string;
  readonly family: 4 | 6;
  /** Prefix length; null for a single address. */
  readonly bits: number | null;
}

export type IpPrefixResult =
  | { readonly ok: true; readonly prefix: IpPrefix }
  | { readonly ok: false; readonly reason: string };

const PREFIX_DIGITS = /^(0|[1-9][0-9]{0,2})$/;
/** Characters an IPv4 or IPv6 address (with an optional /N) can hold; spaces and zone ids ("%eth0") are not among them. */
const ADDRESS_CHARS = /^[0-9A-Fa-f:./]+$/;

export function parseIpPrefix(text: unknown): IpPrefixResult {
  if (typeof text !== "string") return { ok: false, reason: `must be a string, not ${typeof text}` };
  const shown = JSON.stringify(text);
  if (text.length === 0) return { ok: false, reason: "is empty" };
  if (text.length > 64) return { ok: false, reason: `${shown.slice(0, 40)}… is too long for an address` };
  if (!ADDRESS_CHARS.test(text)) {
    return { ok: false, reason: `${shown} has a character that is not part of an IP address or "/N" prefix` };
  }
  const parts = text.split("/");
  if (parts.length > 2) return { ok: false, reason: `${shown} has more than one "/"` };
  const [address, prefix] = parts as [string, string | undefined];
  const family = isIP(address);
  if (family !== 4 && family !== 6)
    return { ok: false, reason: `${shown}: "${address}" is not an IPv4 or IPv6 address` };
  if (prefix === undefined) return { ok: true, prefix: { address, family, bits: null } };
  const max = family === 4 ? 32 : 128;
  if (prefix === "")
    return { ok: false, reason: `${shown} has no prefix length after "/" (write /0..${max} or no "/")` };
  if (!PREFIX_DIGITS.test(prefix) || Number(prefix) > max) {
    return {
      ok: false,
      reason: `${shown}: the prefix length must be a number 0..${max} for IPv${family}, not "${prefix}"`,
    };
  }
  return { ok: true, prefix: { address, family, bits: Number(prefix) } };
}

/** True for an address only this machine can reach: 127.0.0.0/8, ::1, "localhost". */
export function isLoopbackHost(host: string): boolean {
  if (host === "localhost" || host === "::1") return true;
  return isIP(host) === 4 && host.startsWith("127.");
}

/**
 * The servers' client allowlist: null when `entries` is absent or empty (every client allowed). An entry
 * that does not parse is reported through `fail`, which words the error for the caller's boundary.
 */
export function buildAllowList(
  entries: readonly string[] | undefined,
  fail: (reason: string) => Error,
): BlockList | null {
  if (entries === undefined || entries.length === 0) return null;
  const list = new BlockList();
  for (const entry of entries) {
    const parsed = parseIpPrefix(entry); // strict: "10.0.0.7/" or "a/8/32" is an error, never a wider subnet
    if (!parsed.ok) throw fail(`allowlist entry ${parsed.reason}`);
    const { address, family, bits } = parsed.prefix;
    const type = family === 4 ? "ipv4" : "ipv6";
    if (bits === null) list.addAddress(address, type);
    else list.addSubnet(address, bits, type);
  }
  return list;
}

/** Whether a connection from `remote` (as net reports it; IPv4-mapped IPv6 included) passes `list`. */
export function allowedBy(list: BlockList, remote: string | undefined): boolean {
  if (remote === undefined) return false;
  const mapped = remote.startsWith("::ffff:") ? remote.slice(7) : remote;
  const family = isIP(mapped);
  if (family === 0) return false;
  return list.check(mapped, family === 4 ? "ipv4" : "ipv6");
}
