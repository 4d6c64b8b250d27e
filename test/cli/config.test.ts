/**
 * The daemon commands' settings, checked by one schema per command (src/cli/config.ts, redirect-config.ts)
 * for flags and config file alike (the real process meets each typo in serve-settings.test.ts and
 * redirect-daemon.test.ts), the per-peer bounds both commands take (bound-settings.ts; the running servers
 * held to them in peer-bounds.test.ts), and the warning about listening beyond loopback, which an allowlist
 * does not hide.
 */
import { describe, expect, it } from "vitest";
import {
  PEER_BOUND_FLAGS,
  PEER_BOUND_KEYS,
  peerBoundsOf,
  RENAMED_BOUND_FLAGS,
} from "../../src/cli/bound-settings.js";
import { type CommandSettings, checkConfig, configFromFlags, SERVE_SETTINGS } from "../../src/cli/config.js";
import { dialWarning, exposureWarning, USBREDIR_EXPOSURE } from "../../src/cli/daemon-run.js";
import { parseListenAddress, REDIRECT_SETTINGS } from "../../src/cli/redirect-config.js";
import { run } from "../../src/cli/run.js";
import {
  checkPeerBounds,
  MAX_TIMER_MS,
  PEER_BOUND_RULES,
  type PeerBoundsOptions,
  RENAMED_OPTIONS,
} from "../../src/network-face/bounds.js";
import { capture } from "./helpers.js";

describe("the settings schema", () => {
  it("flags and file go through the same schema; a digit port becomes a number", () => {
    expect(
      configFromFlags(SERVE_SETTINGS, {
        port: "3240",
        device: ["loopback"],
        "allow-client": ["10.0.0.0/8"],
        quiet: true,
      }),
    ).toEqual({ port: 3240, devices: ["loopback"], allowClients: ["10.0.0.0/8"], quiet: true });
    const file = { $schema: "./usbvirt.schema.json", port: 3240, devices: ["loopback"], storageSize: 65536 };
    expect(checkConfig(SERVE_SETTINGS, file, "f")).toEqual(file);
  });

  it("every problem is reported at once, each with its key", () => {
    expect(() =>
      checkConfig(SERVE_SETTINGS, { port: -1, deny: ["zz"], quiet: "yes" }, "config file f"),
    ).toThrow(/^config file f: port: must be an integer 0\.\.65535, not -1; deny\[0\]: "zz": .+; quiet: .+$/);
  });
});

describe("redirect's settings schema", () => {
  it("takes the same shared keys as serve, one device, and listen or connect", () => {
    const file = {
      $schema: "./usbvirt-redirect.schema.json",
      device: { kind: "emulated", name: "storage", options: { sizeBytes: 1 << 20 } },
      listen: "0.0.0.0:4000",
      allowClients: ["10.0.0.0/8"],
      storageFile: "disk.img",
      quiet: true,
      logFormat: "json",
      metrics: "9241",
    };
    expect(checkConfig(REDIRECT_SETTINGS, file, "f")).toEqual(file);
    expect(
      configFromFlags(REDIRECT_SETTINGS, { device: "usbip://10.0.0.2/1-1", connect: "127.0.0.1:4000" }),
    ).toEqual({ device: "usbip://10.0.0.2/1-1", connect: "127.0.0.1:4000" });
  });

  it("names the key or the flag of each bad value", () => {
    expect(() =>
      checkConfig(
        REDIRECT_SETTINGS,
        { device: "usbip://host/x", listen: 4000, connect: "10.0.0.1", port: 1 },
        "config file f",
      ),
    ).toThrow(
      /^config file f: device: "usbip:\/\/host\/x" is not usbip:\/\/HOST\[:PORT\]\/BUSID .+; listen: must be a string, not 4000; connect: must be HOST:PORT .+, not "10\.0\.0\.1"; unknown key "port"$/,
    );
    expect(() => configFromFlags(REDIRECT_SETTINGS, { listen: "4000x", device: [] as string[] })).toThrow(
      /^--device: .+; --listen: must be \[HOST:\]PORT with a port in 0\.\.65535 .+, not "4000x"$/,
    );
  });

  it("reads --listen [HOST:]PORT with a host name, an IPv4 or a bracketed IPv6 address", () => {
    expect(parseListenAddress("4000")).toEqual({ host: "127.0.0.1", port: 4000 });
    expect(parseListenAddress("0.0.0.0:0")).toEqual({ host: "0.0.0.0", port: 0 });
    expect(parseListenAddress("[::1]:4000")).toEqual({ host: "::1", port: 4000 });
    expect(parseListenAddress("localhost:4000")).toEqual({ host: "localhost", port: 4000 });
    for (const bad of ["", "65536", ":4000", "a b:4000", "::1:4000", "[::1]", "host:"]) {
      expect(() => parseListenAddress(bad), bad).toThrow(/is not \[HOST:\]PORT/);
    }
  });
});

/** Every bound set, in flags and in a config file; none at its default. */
const FLAGS = {
  "max-urbs-per-peer": "7",
  "max-unsent-bytes": "1048576",
  "stalled-peer-ms": "4000",
  "blocked-request-ms": "500",
  "handshake-timeout-ms": "0",
  "request-timeout-ms": "2500",
  "max-connections": "1",
};
const BOUNDS: Required<PeerBoundsOptions> = {
  maxUrbsPerPeer: 7,
  maxUnsentBytes: 1048576,
  stalledPeerMs: 4000,
  blockedRequestMs: 500,
  handshakeTimeoutMs: 0,
  requestTimeoutMs: 2500,
  maxConnections: 1,
};
const COMMANDS: readonly [string, CommandSettings<object>][] = [
  ["serve", SERVE_SETTINGS],
  ["redirect", REDIRECT_SETTINGS],
];

describe.each(COMMANDS)("%s: the per-peer bounds as flags and config keys", (command, settings) => {
  it("one flag per bound (its name in kebab-case) and one key (its name), for every bound bounds.ts has", () => {
    expect(Object.keys(FLAGS).sort()).toEqual(Object.values(PEER_BOUND_FLAGS).sort());
    expect(Object.keys(BOUNDS).sort()).toEqual([...PEER_BOUND_KEYS].sort());
    for (const key of PEER_BOUND_KEYS) {
      expect((settings.flagOfKey as Record<string, string>)[key]).toBe(PEER_BOUND_FLAGS[key]);
    }
  });

  it("flags and keys read the same bounds, and the server's options get exactly those", () => {
    const fromFlags = configFromFlags(settings, FLAGS);
    expect(fromFlags).toEqual(BOUNDS);
    expect(checkConfig(settings, { ...BOUNDS }, "f")).toEqual(BOUNDS);
    // What serve and redirect spread into UsbipServer / UsbredirServer's options.
    expect(peerBoundsOf({ ...fromFlags, quiet: true } as PeerBoundsOptions)).toEqual(BOUNDS);
    expect(peerBoundsOf({})).toEqual({});
    expect(checkPeerBounds(peerBoundsOf(BOUNDS), 62, (m) => new Error(m))).toEqual({
      maxUrbs: 7,
      maxUnsent: 1048576,
      stalledMs: 4000,
      blockedMs: 500,
      handshakeMs: 0,
      requestMs: 2500,
      maxConnections: 1,
    });
  });

  it("a bad value is refused naming the flag or the key, in the words checkPeerBounds uses", () => {
    expect(() => configFromFlags(settings, { "max-connections": "0" })).toThrow(
      /^--max-connections: must be a positive integer, not 0$/,
    );
    expect(() => configFromFlags(settings, { "max-unsent-bytes": "1.5" })).toThrow(
      /^--max-unsent-bytes: must be a positive integer, not 1\.5$/,
    );
    expect(() => configFromFlags(settings, { "request-timeout-ms": "-1" })).toThrow(
      /^--request-timeout-ms: must be a non-negative integer \(0: no limit\), not -1$/,
    );
    expect(() => configFromFlags(settings, { "stalled-peer-ms": "30s" })).toThrow(
      /^--stalled-peer-ms: must be a positive integer, not "30s"$/,
    );
    expect(() => configFromFlags(settings, { "handshake-timeout-ms": String(MAX_TIMER_MS + 1) })).toThrow(
      /^--handshake-timeout-ms: must be at most 2147483647 \(the longest timer Node keeps\), not 2147483648$/,
    );
    expect(() =>
      checkConfig(
        settings,
        { maxConnections: "4", blockedRequestMs: 0, maxUrbsPerPeer: 2.5 },
        "config file f",
      ),
    ).toThrow(
      /^config file f: maxUrbsPerPeer: must be a positive integer, not 2\.5; blockedRequestMs: must be a positive integer, not 0; maxConnections: must be a positive integer, not "4"$/,
    );
  });

  it("accepts and refuses what checkPeerBounds accepts and refuses, for every bound", () => {
    const values = [-1, 0, 1, 2.5, 1000, MAX_TIMER_MS, MAX_TIMER_MS + 1, Number.MAX_SAFE_INTEGER + 2];
    for (const key of PEER_BOUND_KEYS) {
      for (const value of values) {
        const server = (() => {
          try {
            checkPeerBounds({ [key]: value }, 1, (m) => new Error(m));
            return "ok";
          } catch (err) {
            return (err as Error).message.replace(`options.${key} `, "").replace(/, got .*$/, "");
          }
        })();
        const cli = (() => {
          try {
            checkConfig(settings, { [key]: value }, "f");
            return "ok";
          } catch (err) {
            return (err as Error).message.replace(`f: ${key}: `, "").replace(/, not .*$/, "");
          }
        })();
        expect(cli, `${command} ${key} = ${value}`).toBe(server);
      }
    }
  });

  it("an old name is refused naming the new one: as a config key, and as a flag", async () => {
    expect(() => checkConfig(settings, { stalledClientMs: 5, maxConnections: 0 }, "config file f")).toThrow(
      /^config file f: stalledClientMs: was renamed stalledPeerMs; maxConnections: must be a positive integer, not 0$/,
    );
    for (const [old, now] of Object.entries(RENAMED_OPTIONS)) {
      expect(() => checkConfig(settings, { [old]: 5 }, "f")).toThrow(`f: ${old}: was renamed ${now}`);
    }
    expect(RENAMED_BOUND_FLAGS).toMatchObject({
      "max-urbs-per-client": "max-urbs-per-peer",
      "stalled-client-ms": "stalled-peer-ms",
    });
    for (const [old, now] of Object.entries(RENAMED_BOUND_FLAGS)) {
      const c = capture();
      expect(await run([command, `--${old}`, "5"], c.io)).toBe(2);
      expect(c.err).toContain(`usbvirt ${command}: --${old} was renamed --${now}`);
    }
  });

  it("--help lists every bound's flag with its default", async () => {
    const c = capture();
    expect(await run([command, "--help"], c.io)).toBe(0);
    for (const key of PEER_BOUND_KEYS) {
      const fallback = PEER_BOUND_RULES[key].fallback;
      const line = c.out.split("\n").find((l) => l.trimStart().startsWith(`--${PEER_BOUND_FLAGS[key]} `));
      expect(line, `--${PEER_BOUND_FLAGS[key]} in ${command} --help`).toBeDefined();
      expect(line).toMatch(
        fallback !== null
          ? new RegExp(`\\(default ${fallback}\\b`)
          : command === "serve"
            ? /\(default its device's share of the engine's ring slots/
            : /\(default 128\)/,
      );
    }
  });
});

describe("the warning about listening beyond loopback", () => {
  it("under mutual TLS says what protects the port", () => {
    const tls = { cert: "c", key: "k", clientCa: { file: "ca.pem" }, clientFingerprints: ["SHA256:00"] };
    expect(exposureWarning("0.0.0.0", [], USBREDIR_EXPOSURE, tls)).toBe(
      "listening on 0.0.0.0 with mutual TLS: a client must present a client certificate the --tls-client-ca " +
        "signed and a client certificate pinned by --tls-client-fingerprint (1); whoever holds such a " +
        "certificate's key can take the device",
    );
    expect(
      exposureWarning("0.0.0.0", ["10.0.0.0/8"], undefined, { cert: "c", key: "k", clientCa: "x" }),
    ).toMatch(/signed from an address in --allow-client \(10\.0\.0\.0\/8\);/);
    expect(exposureWarning("127.0.0.1", [], undefined, tls)).toBeNull();
  });

  it("says what an allowlist does not do", () => {
    expect(exposureWarning("127.0.0.1", [])).toBeNull();
    expect(exposureWarning("::1", ["::1"])).toBeNull();
    expect(exposureWarning("0.0.0.0", [])).toMatch(/no --allow-client list: any host that reaches this port/);
    const listed = exposureWarning("0.0.0.0", ["10.0.0.0/8"]);
    expect(listed).toMatch(
      /USB\/IP has no authentication or encryption; only the --allow-client list \(10\.0\.0\.0\/8\)/,
    );
    expect(exposureWarning("::", ["0.0.0.0/0"])).toMatch(
      /traffic; 0\.0\.0\.0\/0 lets in every client of its address family$/,
    );
  });

  it("words usbredir's: one device, taken by whoever connects", () => {
    expect(exposureWarning("127.0.0.1", [], USBREDIR_EXPOSURE)).toBeNull();
    expect(exposureWarning("0.0.0.0", [], USBREDIR_EXPOSURE)).toBe(
      "listening on 0.0.0.0 with no --allow-client list: any host that reaches this port can take the device",
    );
    expect(exposureWarning("::", ["10.0.0.7"], USBREDIR_EXPOSURE)).toBe(
      "listening on [::]: usbredir has no authentication or encryption; only the --allow-client list (10.0.0.7)" +
        " decides who can take the device, and any host that has or spoofs an allowed address can take it" +
        " and read its traffic",
    );
  });

  it("redirect --connect beyond loopback: the device's traffic crosses the network in clear", () => {
    expect(dialWarning("127.0.0.1", USBREDIR_EXPOSURE)).toBeNull();
    expect(dialWarning("localhost", USBREDIR_EXPOSURE)).toBeNull();
    expect(dialWarning("10.0.0.2", USBREDIR_EXPOSURE)).toBe(
      "connecting to 10.0.0.2: usbredir has no authentication or encryption; the device's traffic crosses the network in clear",
    );
  });
});
