/**
 * The announced TXT record: what encodeTxt writes decodeTxt reads back; many devices stay within the
 * 1300-byte budget with `more=N` for the rest; every string stays within 255 bytes; what another host sends
 * is checked (oversized records refused whole, bad device entries dropped and counted). The bounded cache of
 * the browser under a flood of instances, and selection among discovered servers.
 */
import { describe, expect, it } from "vitest";
import { MAX_INSTANCES, ServerCache } from "../../src/discovery/browser.js";
import {
  candidates,
  describeCandidate,
  parseDeviceSelector,
  resolve,
  tlsFor,
} from "../../src/discovery/select.js";
import {
  type AnnouncedDevice,
  decodeTxt,
  encodeTxt,
  MAX_TXT_BYTES,
  TXT_BUDGET,
  txtBytes,
} from "../../src/discovery/txt-record.js";

const bytes = (strings: readonly string[]) => strings.map((s) => Buffer.from(s));
const dev = (i: number, extra: Partial<AnnouncedDevice> = {}): AnnouncedDevice => ({
  busid: `1-${i}`,
  vendorId: 0x1209,
  productId: i,
  deviceClass: 0xff,
  serial: `SER-${i}`,
  held: i % 2 === 0,
  ...extra,
});

describe("TXT record", () => {
  it("round-trips version, TLS, fingerprint, status and devices (serials with any character)", () => {
    const info = {
      version: "0.1.0",
      tls: true,
      fingerprint: "ab".repeat(32),
      status: "127.0.0.1:9240",
      statusTls: true,
      devices: [dev(1), dev(2, { serial: "a,b=c%d é" }), dev(3, { serial: undefined })],
    };
    const v = decodeTxt(bytes(encodeTxt(info)));
    expect(v).toEqual({
      ok: true,
      txt: {
        ...info,
        devices: [dev(1), dev(2, { serial: "a,b=c%d é" }), { ...dev(3), serial: undefined }].map(
          ({ serial, ...d }) => (serial === undefined ? d : { ...d, serial }),
        ),
        more: 0,
        dropped: 0,
      },
    });
  });

  it("31 devices with 126-character serials: the record stays within the budget, every string within 255 bytes, the rest counted in more=N", () => {
    const devices = Array.from({ length: 31 }, (_, i) => dev(i + 1, { serial: "S".repeat(126) }));
    const strings = encodeTxt({ version: "0.1.0", tls: false, devices });
    expect(txtBytes(strings)).toBeLessThanOrEqual(TXT_BUDGET);
    for (const s of strings) expect(Buffer.byteLength(s)).toBeLessThanOrEqual(255);
    const v = decodeTxt(bytes(strings));
    if (!v.ok) throw new Error(v.reason);
    expect(v.txt.devices.length).toBeGreaterThan(0);
    expect(v.txt.devices.length + v.txt.more).toBe(31);
    expect(v.txt.devices.map((d) => d.busid)).toEqual(
      devices.slice(0, v.txt.devices.length).map((d) => d.busid),
    );
    // Short serials: all 31 fit.
    const small = encodeTxt({
      version: "0.1.0",
      tls: false,
      devices: Array.from({ length: 31 }, (_, i) => dev(i + 1)),
    });
    expect(small.some((s) => s.startsWith("more="))).toBe(false);
    expect(txtBytes(small)).toBeLessThanOrEqual(TXT_BUDGET);
  });

  it("a serial whose entry would pass 255 bytes (126 two-byte characters) is left out, not cut; the record stays readable", () => {
    const long = "é".repeat(126);
    const strings = encodeTxt({
      version: "0.1.0",
      tls: false,
      devices: [dev(1, { serial: long }), dev(2, { serial: "é".repeat(20) })],
    });
    for (const s of strings) expect(Buffer.byteLength(s)).toBeLessThanOrEqual(255);
    const v = decodeTxt(bytes(strings));
    if (!v.ok) throw new Error(v.reason);
    expect(v.txt.devices.map((d) => [d.busid, d.serial])).toEqual([
      ["1-1", undefined],
      ["1-2", "é".repeat(20)],
    ]);
  });

  it("a serial that holds U+FFFD or a lone surrogate round-trips as the UTF-8 it encodes to (no entry dropped)", () => {
    const strings = encodeTxt({
      version: "0.1.0",
      tls: false,
      devices: [dev(1, { serial: "A\uFFFDB" }), dev(2, { serial: "C\uD800D" })],
    });
    const v = decodeTxt(bytes(strings));
    if (!v.ok) throw new Error(v.reason);
    expect(v.txt.dropped).toBe(0);
    expect(v.txt.devices.map((d) => d.serial)).toEqual(["A\uFFFDB", "C\uFFFDD"]);
    // Bytes that are not UTF-8 are refused: the entry is dropped.
    const bad = decodeTxt(
      bytes([...encodeTxt({ version: "1", tls: false, devices: [] }), "d=1-1,1209:0001,ff,%C3%28,F"]),
    );
    expect(bad).toMatchObject({ ok: true, txt: { dropped: 1, devices: [] } });
  });

  it("refuses hostile records whole and drops bad device entries", () => {
    const ok = encodeTxt({ version: "0.1.0", tls: false, devices: [dev(1)] });
    const huge = [...ok, ...Array.from({ length: 20 }, () => `x=${"y".repeat(250)}`)];
    expect(txtBytes(huge)).toBeGreaterThan(MAX_TXT_BYTES);
    expect(decodeTxt(bytes(huge))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/bytes \(at most 4096\)/),
    });
    expect(decodeTxt(bytes([...ok, ...Array.from({ length: 70 }, () => "a=b")]))).toMatchObject({
      ok: false,
    });
    expect(decodeTxt([Buffer.alloc(300, 0x61)])).toMatchObject({ ok: false });
    expect(decodeTxt(bytes(["txtvers=2", "v=1", "tls=0"]))).toMatchObject({ ok: false });
    expect(decodeTxt(bytes(["txtvers=1", "v=<script>", "tls=0"]))).toMatchObject({ ok: false });
    const bad = decodeTxt(
      bytes([
        ...ok,
        "d=1-1,1209:0001,ff,,F", // the same bus id again
        "d=1-2,12090:1,ff,,F",
        "d=1-3,1209:0001,ff,%ZZ,F",
        "d=1-4,1209:0001,ff,x,Q",
        "d=../../etc,1209:0001,ff,x,F",
        "d=1-5,1209:0001,ff,x,F,extra",
      ]),
    );
    expect(bad).toMatchObject({ ok: true, txt: { dropped: 6, devices: [dev(1)] } });
  });
});

describe("the browser's cache", () => {
  it("a flood of distinct instances keeps at most MAX_INSTANCES, the rest counted", () => {
    const cache = new ServerCache();
    for (let i = 0; i < 5000; i++) {
      const name = `flood-${i}._usbip._tcp.local`;
      cache.feed(
        [
          { type: "PTR", name: "_usbip._tcp.local", ttl: 120, data: name },
          { type: "SRV", name, ttl: 120, data: { port: 3240, target: `h${i}.local` } },
          {
            type: "TXT",
            name,
            ttl: 120,
            data: bytes(encodeTxt({ version: "1", tls: false, devices: [dev(1)] })),
          },
          { type: "A", name: `h${i}.local`, ttl: 120, data: "10.9.8.7" },
        ],
        "127.0.0.1",
      );
    }
    expect(cache.instances.size).toBe(MAX_INSTANCES);
    expect(cache.targets.size).toBeLessThanOrEqual(256);
    expect(cache.ignored.overLimit).toBeGreaterThan(0);
    expect(cache.servers()).toHaveLength(MAX_INSTANCES);
  });

  it("two hosts that announce the same host name are each reached at the address their answer came from", () => {
    const cache = new ServerCache();
    const txt = bytes(encodeTxt({ version: "1", tls: false, devices: [] }));
    for (const [name, from] of [
      ["a._usbip._tcp.local", "10.77.0.1"],
      ["b._usbip._tcp.local", "10.77.0.2"],
    ] as const) {
      cache.feed(
        [
          { type: "PTR", name: "_usbip._tcp.local", ttl: 120, data: name },
          { type: "SRV", name, ttl: 120, data: { port: 3240, target: "clone.local" } },
          { type: "TXT", name, ttl: 120, data: txt },
          { type: "A", name: "clone.local", ttl: 120, data: from },
        ],
        from,
      );
    }
    expect(cache.servers().map((s) => [s.name, s.host])).toEqual([
      ["a", "10.77.0.1"],
      ["b", "10.77.0.2"],
    ]);
  });

  it("ignores SRV records with impossible ports, other services, and forgets an instance that says goodbye", () => {
    const cache = new ServerCache();
    const name = "a._usbip._tcp.local";
    cache.feed(
      [
        { type: "PTR", name: "_usbip._tcp.local", ttl: 120, data: name },
        { type: "PTR", name: "_http._tcp.local", ttl: 120, data: "x._http._tcp.local" },
        { type: "SRV", name, ttl: 120, data: { port: 0, target: "h.local" } },
        { type: "TXT", name, ttl: 120, data: bytes(encodeTxt({ version: "1", tls: false, devices: [] })) },
      ],
      "127.0.0.1",
    );
    expect(cache.ignored.badSrv).toBe(1);
    expect(cache.servers()).toEqual([]);
    cache.feed([{ type: "SRV", name, ttl: 120, data: { port: 3240, target: "h.local" } }], "127.0.0.2");
    expect(cache.servers()).toMatchObject([{ name: "a", host: "127.0.0.2", port: 3240 }]);
    cache.feed([{ type: "PTR", name: "_usbip._tcp.local", ttl: 0, data: name }], "127.0.0.2");
    expect(cache.servers()).toEqual([]);
  });
});

describe("finding a device among discovered servers", () => {
  const server = (name: string, devices: AnnouncedDevice[]) => ({
    service: "_usbip._tcp" as const,
    instance: `${name}._usbip._tcp.local`,
    name,
    host: "127.0.0.1",
    port: 3240,
    txt: { version: "1", tls: false, devices, more: 0, dropped: 0 },
  });
  const servers = [
    server("a", [dev(1), dev(2)]),
    server("b", [dev(3), dev(5, { serial: "SER-1", held: true })]),
  ];

  it("one free match; several are ambiguous; only held ones say so; none is none", () => {
    expect(resolve(servers, parseDeviceSelector("serial=SER-1"))).toMatchObject({
      kind: "one",
      candidate: { server: { name: "a" }, device: { busid: "1-1" } },
    });
    expect(resolve(servers, parseDeviceSelector("1209:*"))).toMatchObject({ kind: "ambiguous" });
    expect(candidates(servers, parseDeviceSelector("class=0xff"))).toHaveLength(4);
    expect(resolve(servers, parseDeviceSelector("serial=SER-2"))).toMatchObject({ kind: "held" });
    expect(resolve(servers, parseDeviceSelector("serial=NOPE"))).toEqual({ kind: "none" });
    expect(() => parseDeviceSelector("frob=1")).toThrow(/unknown key/);
  });

  it("a candidate in words: the host's name and the device's serial with their control characters escaped", () => {
    const evil = "A\x1b]0;owned\x07\x9b2J\u202eB\nforged";
    const hostile = { ...server(evil, []), name: evil };
    const text = describeCandidate({ server: hostile, device: dev(1, { serial: evil }) });
    // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
    expect(text).not.toMatch(/[\x00-\x1f\x7f-\x9f\u202a-\u202e]/);
    expect(text).toContain("serial=A\\x1b]0;owned\\x07\\x9b2J\\u202eB\\x0aforged");
  });

  it("how a picked host is reached: plain, its announced fingerprint pinned, the client's own CA or pins, or refused", () => {
    const plain = server("p", []);
    const secure = { ...plain, txt: { ...plain.txt, tls: true, fingerprint: "ab".repeat(32) } };
    const client = { cert: { file: "c.pem" }, key: { file: "c.key" } };
    expect(tlsFor(plain, undefined)).toEqual({ ok: true });
    // A host without TLS when the client asked for TLS: a downgrade, refused.
    expect(tlsFor(plain, client)).toMatchObject({ ok: false, reason: expect.stringMatching(/downgrade/) });
    expect(tlsFor(secure, undefined)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/--tls-cert/),
    });
    expect(tlsFor(secure, client)).toEqual({
      ok: true,
      tls: { ...client, serverFingerprints: [`SHA256:${"ab".repeat(32)}`] },
    });
    const ca = { ...client, ca: { file: "ca.pem" } };
    expect(tlsFor(secure, ca)).toEqual({ ok: true, tls: ca });
    const pinned = { ...client, serverFingerprints: [`SHA256:${"cd".repeat(32)}`] };
    expect(tlsFor(secure, pinned)).toEqual({ ok: true, tls: pinned });
    const { fingerprint: _, ...noFp } = secure.txt;
    expect(tlsFor({ ...secure, txt: noFp }, client)).toMatchObject({ ok: false });
  });
});
