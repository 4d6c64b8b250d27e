/**
 * The strict address/CIDR parser behind --allow-client, the config file's allowClients and UsbipServer's
 * `allow`: each input with its verdict. The first rows are the typos that once widened the list to /0 or /8.
 */
import { describe, expect, it } from "vitest";
import { isLoopbackHost, parseIpPrefix } from "../../src/util/ip-prefix.js";

const refused: readonly [string, RegExp][] = [
  ["127.0.0.2/", /no prefix length after "\/"/],
  ["10.9.8.7/", /no prefix length after "\/"/],
  ["127.0.0.2/ ", /character that is not part of an IP address/],
  ["127.0.0.2/8/32", /more than one "\/"/],
  [" 10.0.0.1", /character that is not part/],
  ["10.0.0.0/33", /0\.\.32 for IPv4, not "33"/],
  ["10.0.0.0/-1", /character that is not part/],
  ["10.0.0.0/+8", /character that is not part/],
  ["10.0.0.0/08", /not "08"/],
  ["10.0.0.0/1e1", /not "1e1"/],
  ["10.0.0.0/0x8", /character that is not part/],
  ["fd00::/129", /0\.\.128 for IPv6, not "129"/],
  ["fe80::1%eth0", /character that is not part/],
  ["10.0.0.256", /is not an IPv4 or IPv6 address/],
  ["010.0.0.1", /is not an IPv4 or IPv6 address/],
  ["/8", /"" is not an IPv4 or IPv6 address/],
  ["", /is empty/],
];

const accepted: readonly [string, { family: 4 | 6; bits: number | null }][] = [
  ["10.0.0.7", { family: 4, bits: null }],
  ["192.168.1.0/24", { family: 4, bits: 24 }],
  ["0.0.0.0/0", { family: 4, bits: 0 }],
  ["10.9.8.7/32", { family: 4, bits: 32 }],
  ["::1", { family: 6, bits: null }],
  ["fd00::/8", { family: 6, bits: 8 }],
  ["2001:db8::/128", { family: 6, bits: 128 }],
];

describe("parseIpPrefix", () => {
  it.each(refused)("refuses %j", (text, reason) => {
    const r = parseIpPrefix(text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(reason);
  });

  it.each(accepted)("accepts %j", (text, want) => {
    expect(parseIpPrefix(text)).toEqual({ ok: true, prefix: { address: text.split("/")[0], ...want } });
  });

  it("refuses what is not a string", () => {
    expect(parseIpPrefix(42)).toEqual({ ok: false, reason: "must be a string, not number" });
  });

  it("loopback hosts", () => {
    expect(["127.0.0.1", "127.1.2.3", "::1", "localhost"].every(isLoopbackHost)).toBe(true);
    expect(["0.0.0.0", "::", "10.0.0.1", "128.0.0.1"].some(isLoopbackHost)).toBe(false);
  });
});
