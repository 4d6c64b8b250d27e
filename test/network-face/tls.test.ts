/**
 * Mutual TLS on the USB/IP server (the core's TLS face): a client with a certificate the client CA signed
 * imports a device and moves verified data, named by its certificate in every log line and in stats; a
 * pinned self-signed client does too. Each refusal is one log line saying which check failed, and the
 * refused connection gets no USB/IP byte: no client certificate, an expired one, one another CA signed,
 * one not pinned, TLS 1.2 when 1.3 is required, a plain-TCP client, a handshake never begun; the
 * allowlist refuses before any handshake. The server keeps serving honest clients throughout. usbredir:
 * listen mode the same (our hello only after the handshake), connect mode against a TLS VMM that checks
 * our certificate, and a VMM whose certificate is not pinned refused.
 * Certificates are made by `openssl` for the run (test/support/tls-certs.ts).
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import {
  type AddressInfo,
  createServer as createNetServer,
  connect as netConnect,
  type Socket,
} from "node:net";
import {
  type ConnectionOptions,
  createServer as createTlsServer,
  type TLSSocket,
  connect as tlsConnect,
} from "node:tls";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CollectingLogger } from "../../src/network-face/log.js";
import type { TlsServerOptions } from "../../src/network-face/tls.js";
import { checkTlsClientOptions, connectTls, parseFingerprint } from "../../src/tls/tls-settings.js";
import { UsbipClient } from "../../src/usbip/client.js";
import { encodeDevlistRequest } from "../../src/usbip/management-pdus.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { RedirStatus } from "../../src/usbredir/protocol.js";
import { UsbredirServer } from "../../src/usbredir/server.js";
import { pattern } from "../support/data.js";
import { eventually } from "../support/eventually.js";
import { makeTestPki, opensslTool, type TestPki } from "../support/tls-certs.js";
import { skipWithout } from "../support/tools.js";
import { bulkIn, bulkOut, enumerate, startServer, type TestServer } from "../usbip/helpers.js";
import { echoRound, LOOPBACK, startRedirServer, type TestRedirServer } from "../usbredir/helpers.js";
import { RawConnection } from "./raw-connection.js";

// Every test here needs the certificates openssl makes (the hooks run only when a test does).
const openssl = opensslTool();

let pki: TestPki;
beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => pki.remove());

let t: TestServer | null = null;
const opened: UsbipClient[] = [];
afterEach(async () => {
  for (const c of opened.splice(0)) c.close();
  await t?.close();
  t = null;
});

function serverTls(over: Partial<TlsServerOptions> = {}): TlsServerOptions {
  return {
    cert: { file: pki.server.cert },
    key: { file: pki.server.key },
    clientCa: { file: pki.ca.cert },
    ...over,
  };
}

async function tlsServer(over: Partial<TlsServerOptions> = {}, extra: Record<string, unknown> = {}) {
  t = await startServer({ tls: serverTls(over), ...extra });
  return t;
}

async function client(port: number, who = pki.client): Promise<UsbipClient> {
  const c = await UsbipClient.connect({
    host: "127.0.0.1",
    port,
    tls: { ca: { file: pki.ca.cert }, cert: { file: who.cert }, key: { file: who.key } },
  });
  opened.push(c);
  return c;
}

/** An honest TLS client imports 1-1 and moves verified data both ways. */
async function serves(s: TestServer, who = pki.client): Promise<void> {
  const c = await client(s.port, who);
  await c.import("1-1");
  await enumerate(c);
  const data = pattern(70_000, 3);
  expect((await bulkOut(c, 1, data)).status).toBe(0);
  expect(Buffer.compare((await bulkIn(c, 1, data.length)).data, data)).toBe(0);
  c.close();
  await eventually(() => !s.server.stats().imported.includes("1-1"), 5000, "1-1 released");
}

/**
 * A raw TLS client that sends OP_REQ_DEVLIST once its side of the handshake is done: resolves with the
 * bytes it got back before the server closed the connection.
 */
function probe(
  port: number,
  options: ConnectionOptions,
): Promise<{ received: number; error: string | null }> {
  return new Promise((resolve) => {
    let received = 0;
    let error: string | null = null;
    const socket = tlsConnect({ host: "127.0.0.1", port, ca: readFileSync(pki.ca.cert), ...options });
    socket.on("secureConnect", () => socket.write(encodeDevlistRequest()));
    socket.on("data", (d: Buffer) => {
      received += d.length;
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.on("close", () => resolve({ received, error }));
  });
}

const pem = (f: string) => readFileSync(f);

/**
 * A TCP relay to the server at `port` on 127.0.0.1 that keeps what the server sends, to read its TLS
 * records' lengths (each record: content type, version, a 2-byte length, then that many bytes).
 */
async function recordTap(port: number): Promise<{ port: number; recordLengths(): number[]; close(): void }> {
  const chunks: Buffer[] = [];
  const sockets: Socket[] = [];
  const relay = createNetServer((down) => {
    const up = netConnect(port, "127.0.0.1");
    sockets.push(down, up);
    up.on("data", (d: Buffer) => chunks.push(d));
    down.pipe(up);
    up.pipe(down);
    for (const s of [down, up])
      s.on("error", () => undefined).on("close", () => (s === up ? down : up).destroy());
  });
  relay.listen(0, "127.0.0.1");
  await once(relay, "listening");
  return {
    port: (relay.address() as AddressInfo).port,
    recordLengths() {
      const stream = Buffer.concat(chunks);
      const lengths: number[] = [];
      for (let at = 0; at + 5 <= stream.length; at += 5 + stream.readUInt16BE(at + 3))
        lengths.push(stream.readUInt16BE(at + 3));
      return lengths;
    },
    close() {
      for (const s of sockets) s.destroy();
      relay.close();
    },
  };
}

/** The cipher suite a TLS client with alice's certificate (offering `ciphers`, else Node's) agrees on with the server. */
async function cipherAgreed(port: number, ciphers?: string): Promise<string> {
  const socket = tlsConnect({
    host: "127.0.0.1",
    port,
    ca: pem(pki.ca.cert),
    cert: pem(pki.client.cert),
    key: pem(pki.client.key),
    ...(ciphers === undefined ? {} : { ciphers }),
  });
  try {
    await once(socket, "secureConnect");
    return socket.getCipher().name;
  } finally {
    socket.destroy();
  }
}

/** The warn lines of the server's log that say a TLS connection was refused. */
const refusals = (s: TestServer) =>
  s.log.lines.filter((l) => l.startsWith("warn: ") && l.includes("TLS refused"));

describe.skipIf(skipWithout("USB/IP over mutual TLS", openssl))("USB/IP over mutual TLS", () => {
  it("a client with a certificate the client CA signed imports and moves data; its identity is in the log and stats", async () => {
    const s = await tlsServer();
    expect(s.server.tlsRequired).toBe(true);
    const c = await client(s.port);
    expect((await c.devlist()).map((d) => d.busid)).toEqual(["1-1", "1-2", "1-3"]);
    const d = await client(s.port);
    await d.import("1-2");
    await enumerate(d);
    const stats = s.server.stats().perDevice.find((p) => p.busid === "1-2")!;
    expect(stats.client).toMatch(/^127\.0\.0\.1:\d+ \(CN=alice\)$/);
    d.close();
    await eventually(() => s.log.matching("detached 1-2").length === 1, 5000, "detach line");
    const named = s.log.lines.filter((l) => l.includes("127.0.0.1:"));
    expect(named.length).toBeGreaterThanOrEqual(3); // device list, import, detach
    for (const line of named) expect(line).toContain("(CN=alice)");
    await serves(s);
    expect(refusals(s)).toEqual([]);
  });

  it("decrypted OUT data lands straight in its guest buffer, as on a plain connection, and comes back intact", async () => {
    const s = await tlsServer();
    const c = await client(s.port);
    await c.import("1-1");
    await enumerate(c);
    const payload = pattern(1024 * 1024, 43);
    expect((await bulkOut(c, 1, payload)).status).toBe(0);
    expect(Buffer.compare((await bulkIn(c, 1, payload.length)).data, payload)).toBe(0);
    // The records after the first of each submit decrypt into guest memory, not into a Buffer per record.
    const direct = s.server.stats().perDevice.find((d) => d.busid === "1-1")!.directBytes;
    expect(direct).toBeGreaterThan(payload.length / 2);
    expect(direct).toBeLessThanOrEqual(payload.length);
  });

  it("chooses AES-128-GCM for a client that offers Node's order (AES-256-GCM first); serves one that offers only AES-256-GCM", async () => {
    const s = await tlsServer();
    expect(await cipherAgreed(s.port)).toBe("TLS_AES_128_GCM_SHA256");
    expect(await cipherAgreed(s.port, "TLS_AES_256_GCM_SHA384")).toBe("TLS_AES_256_GCM_SHA384");
  });

  it("a pinned self-signed client is accepted without a CA; any other certificate is refused as not pinned", async () => {
    const s = await tlsServer({ clientCa: undefined, clientFingerprints: [pki.selfSigned.fingerprint] });
    await serves(s, pki.selfSigned);
    const r = await probe(s.port, { cert: pem(pki.client.cert), key: pem(pki.client.key) });
    expect(r.received).toBe(0);
    await eventually(() => refusals(s).length === 1, 5000, "the refusal line");
    expect(refusals(s)[0]).toMatch(
      new RegExp(
        `127\\.0\\.0\\.1:\\d+: TLS refused: client certificate CN=alice, ${pki.client.fingerprint}.* is not pinned`,
      ),
    );
  });

  it("CA and pins together: a certificate the CA signed but not pinned is refused", async () => {
    const s = await tlsServer({ clientFingerprints: [pki.selfSigned.fingerprint] });
    const r = await probe(s.port, { cert: pem(pki.client.cert), key: pem(pki.client.key) });
    expect(r.received).toBe(0);
    await eventually(() => refusals(s).length === 1, 5000, "the refusal line");
    expect(refusals(s)[0]).toContain("is not pinned");
  });

  const cases: {
    name: string;
    options: () => ConnectionOptions;
    line: RegExp;
  }[] = [
    { name: "no client certificate", options: () => ({}), line: /TLS refused: no client certificate$/ },
    {
      name: "an expired client certificate",
      options: () => ({ cert: pem(pki.expired.cert), key: pem(pki.expired.key) }),
      line: /TLS refused: client certificate CN=old, SHA256:[0-9A-F:]+ refused: it has expired \(CERT_HAS_EXPIRED\)$/,
    },
    {
      name: "a client certificate another CA signed",
      options: () => ({ cert: pem(pki.otherCa.cert), key: pem(pki.otherCa.key) }),
      line: /TLS refused: client certificate CN=mallory, SHA256:[0-9A-F:]+ refused: it is not signed by the client CA \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)$/,
    },
    {
      name: "TLS 1.2 when 1.3 is required",
      options: () => ({ cert: pem(pki.client.cert), key: pem(pki.client.key), maxVersion: "TLSv1.2" }),
      line: /TLS refused: the client offers no TLS version this server accepts \(TLSv1\.3 or later\) \(ERR_SSL_UNSUPPORTED_PROTOCOL\)$/,
    },
  ];
  for (const c of cases) {
    it(`refuses ${c.name} with one log line, answers no USB/IP byte, and keeps serving`, async () => {
      const s = await tlsServer();
      const r = await probe(s.port, c.options());
      expect(r.received).toBe(0);
      await eventually(() => refusals(s).length === 1, 5000, "the refusal line");
      expect(refusals(s)[0]).toMatch(c.line);
      expect(refusals(s)[0]).toMatch(/^warn: 127\.0\.0\.1:\d+: /);
      expect(s.log.matching("device list")).toEqual([]);
      await serves(s);
      expect(refusals(s)).toHaveLength(1);
    });
  }

  it("refuses a plain-TCP client at its first bytes, before any USB/IP byte is answered", async () => {
    const s = await tlsServer();
    const raw = await RawConnection.open(s.port);
    raw.write(encodeDevlistRequest());
    await raw.closedBy(5000, "the plain client dropped");
    expect(raw.received.length).toBe(0);
    await eventually(() => refusals(s).length === 1, 5000, "the refusal line");
    expect(refusals(s)[0]).toMatch(/TLS refused: not a TLS client \(plain TCP\?\) \(ERR_SSL_[A-Z_]+\)$/);
    await serves(s);
  });

  it("a TLS handshake never begun is ended at handshakeTimeoutMs", async () => {
    const s = await tlsServer({}, { handshakeTimeoutMs: 300 });
    const raw = await RawConnection.open(s.port);
    await raw.closedBy(5000, "the silent client dropped");
    await eventually(() => refusals(s).length === 1, 5000, "the refusal line");
    expect(refusals(s)[0]).toContain("TLS refused: TLS handshake not done within 300 ms");
    expect(s.server.stats().clients).toBe(0);
  });

  it("the allowlist refuses before the handshake", async () => {
    const s = await tlsServer({}, { allow: ["10.9.9.9"] });
    const r = await probe(s.port, { cert: pem(pki.client.cert), key: pem(pki.client.key) });
    expect(r.received).toBe(0);
    expect(r.error).not.toBeNull(); // no handshake: the client's own side fails
    await eventually(() => s.log.matching("not in the allowlist").length === 1, 5000, "allowlist line");
    expect(refusals(s)).toEqual([]);
  });

  it("the client refuses a server whose certificate is not pinned, and accepts a pinned one without a CA", async () => {
    const s = await tlsServer();
    await expect(
      UsbipClient.connect({
        host: "127.0.0.1",
        port: s.port,
        tls: {
          serverFingerprints: [pki.selfSigned.fingerprint],
          cert: { file: pki.client.cert },
          key: { file: pki.client.key },
        },
      }),
    ).rejects.toThrow(/server's certificate SHA256:[0-9A-F:]+ is not pinned/);
    const c = await UsbipClient.connect({
      host: "127.0.0.1",
      port: s.port,
      tls: {
        serverFingerprints: [
          pki.server.fingerprint.toLowerCase().replace(/:/g, "").replace("sha256", "SHA256:"),
        ],
        cert: { file: pki.client.cert },
        key: { file: pki.client.key },
      },
    });
    opened.push(c);
    expect((await c.devlist()).length).toBe(3);
  });
});

describe.skipIf(skipWithout("our TLS client", openssl))("our TLS client", () => {
  it("offers AES-128-GCM first: a server that follows the client's order (as GnuTLS's does by default) chooses it", async () => {
    const server = createTlsServer({
      cert: pem(pki.server.cert),
      key: pem(pki.server.key),
      honorCipherOrder: false,
      minVersion: "TLSv1.3",
    });
    const agreed = once(server, "secureConnection").then(([s]) => (s as TLSSocket).getCipher().name);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const socket = connectTls(
      { host: "127.0.0.1", port: (server.address() as AddressInfo).port },
      checkTlsClientOptions({ ca: { file: pki.ca.cert } }),
    );
    try {
      await once(socket, "verified");
      expect(socket.getCipher().name).toBe("TLS_AES_128_GCM_SHA256");
      expect(await agreed).toBe("TLS_AES_128_GCM_SHA256");
    } finally {
      socket.destroy();
      server.close();
    }
  });
});

describe.skipIf(skipWithout("fingerprints as users write them", openssl))(
  "fingerprints as users write them",
  () => {
    it("take colons or none, any case; refuse other lengths and algorithms", () => {
      const fp = pki.client.fingerprint;
      expect(parseFingerprint(fp)).toBe(fp);
      expect(parseFingerprint(`sha256:${fp.slice(7).replace(/:/g, "").toLowerCase()}`)).toBe(fp);
      expect(() => parseFingerprint(fp.slice(0, -3))).toThrow(/not a certificate fingerprint/);
      expect(() => parseFingerprint(`SHA1:${fp.slice(7)}`)).toThrow(/not a certificate fingerprint/);
    });
  },
);

describe.skipIf(skipWithout("usbredir over mutual TLS", openssl))("usbredir over mutual TLS", () => {
  let r: TestRedirServer | null = null;
  afterEach(async () => {
    await r?.close();
    r = null;
  });

  /** A usb-guest over TLS with `who`'s certificate, its hello naming it `version` (else the client's own). */
  async function guestOver(
    port: number,
    who = pki.client,
    waitForDevice = true,
    version?: string,
  ): Promise<UsbredirClient> {
    const socket = tlsConnect({
      host: "127.0.0.1",
      port,
      ca: pem(pki.ca.cert),
      cert: pem(who.cert),
      key: pem(who.key),
    });
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", resolve);
      socket.once("error", reject);
    });
    return UsbredirClient.over(socket, {
      waitForDevice,
      timeoutMs: 5000,
      ...(version === undefined ? {} : { version }),
    });
  }

  it("listen mode: a guest with a signed certificate gets the device; its identity is in the log and stats", async () => {
    r = await startRedirServer(LOOPBACK, { tls: serverTls() });
    const g = await guestOver(r.port);
    for (let i = 0; i < 5; i++) await echoRound(g)(i);
    expect(r.server.stats().peer).toMatch(/^127\.0\.0\.1:\d+ \(CN=alice\)$/);
    g.socket.destroy();
    await eventually(() => r!.log.matching("peer closed the connection").length === 1, 5000, "close line");
    for (const line of r.log.lines.filter((l) => l.includes("127.0.0.1:")))
      expect(line).toContain("(CN=alice)");
  });

  it("listen mode: records to a guest that is not QEMU carry TLS's 16 KiB; to QEMU's (its hello says so) 4096 bytes", async () => {
    r = await startRedirServer(LOOPBACK, { tls: serverTls() });
    const cases = [
      ["usbvirt test guest", 16384],
      ["qemu usb-redir guest 8.2.2", 4096],
    ] as const;
    for (const [i, [version, most]] of cases.entries()) {
      const tap = await recordTap(r.port);
      try {
        const g = await guestOver(tap.port, pki.client, true, version);
        const data = pattern(64 * 1024, i);
        expect((await g.bulk(0x01, data).reply).status).toBe(RedirStatus.SUCCESS);
        const back = await g.bulk(0x81, data.length).reply;
        expect(Buffer.compare(back.data, data)).toBe(0);
        // A TLS 1.3 record carries its plaintext, one content-type byte and a 16-byte tag.
        expect(Math.max(...tap.recordLengths()) - 17).toBe(most);
        g.socket.destroy();
      } finally {
        tap.close();
      }
      await eventually(
        () => r!.log.matching("peer closed the connection").length === i + 1,
        5000,
        "the guest gone, the slot free",
      );
    }
  });

  it("listen mode: a certificate another CA signed gets no hello and leaves the slot free", async () => {
    r = await startRedirServer(LOOPBACK, { tls: serverTls() });
    const refused = await guestOver(r.port, pki.otherCa, false);
    await eventually(() => refused.closed !== null, 5000, "the refused guest dropped");
    expect(refused.hostVersion).toBe("");
    const lines = r.log.lines.filter((l) => l.includes("TLS refused"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("CN=mallory");
    expect(lines[0]).toContain("it is not signed by the client CA");
    const g = await guestOver(r.port);
    await echoRound(g)(0);
  });

  it("listen mode: a plain usbredir guest is dropped before our hello", async () => {
    r = await startRedirServer(LOOPBACK, { tls: serverTls() });
    const raw = await RawConnection.open(r.port);
    raw.write(Buffer.alloc(16)); // a hello's header: not a TLS record
    await raw.closedBy(5000, "the plain guest dropped");
    expect(raw.received.length).toBe(0);
    await eventually(() => r!.log.matching("TLS refused: not a TLS client").length === 1, 5000, "line");
  });

  it("connect mode: dials a TLS VMM that verifies our certificate, and refuses a VMM whose certificate is not pinned", async () => {
    const guests: UsbredirClient[] = [];
    const vmm = createTlsServer({
      cert: pem(pki.server.cert),
      key: pem(pki.server.key),
      ca: pem(pki.ca.cert),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: "TLSv1.3",
    });
    vmm.on("secureConnection", (socket) => {
      void UsbredirClient.over(socket, { timeoutMs: 5000 }).then((g) => guests.push(g));
    });
    await new Promise<void>((resolve) => vmm.listen(0, "127.0.0.1", resolve));
    const port = (vmm.address() as { port: number }).port;
    try {
      const log = new CollectingLogger();
      const server = await UsbredirServer.start({
        device: LOOPBACK,
        logger: log,
        connect: {
          host: "127.0.0.1",
          port,
          tls: { ca: { file: pki.ca.cert }, cert: { file: pki.client.cert }, key: { file: pki.client.key } },
        },
      });
      try {
        await eventually(() => guests.length === 1, 10_000, "the VMM's guest got the device");
        await echoRound(guests[0]!)(1);
        await echoRound(guests[0]!)(2);
      } finally {
        for (const g of guests) g.socket.destroy();
        await server.close();
      }
      const log2 = new CollectingLogger();
      const pinned = await UsbredirServer.start({
        device: LOOPBACK,
        logger: log2,
        reconnectMinMs: 10_000,
        connect: {
          host: "127.0.0.1",
          port,
          tls: {
            serverFingerprints: [pki.selfSigned.fingerprint],
            cert: { file: pki.client.cert },
            key: { file: pki.client.key },
          },
        },
      });
      try {
        await eventually(() => log2.matching("is not pinned").length === 1, 5000, "the refusal line");
        expect(log2.matching("cannot connect to 127.0.0.1")[0]).toMatch(
          /server's certificate SHA256:[0-9A-F:]+ is not pinned/,
        );
        expect(guests).toHaveLength(1);
      } finally {
        await pinned.close();
      }
    } finally {
      vmm.close();
    }
  });
});
