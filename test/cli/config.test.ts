/**
 * The daemon commands' settings, checked by one schema per command (src/cli/config.ts, redirect-config.ts)
 * for flags and config file alike (the real process meets each typo in serve-settings.test.ts and
 * redirect-daemon.test.ts), and the warning about listening beyond loopback, which an allowlist does not hide.
 */
import { describe, expect, it } from "vitest";
import { checkConfig, configFromFlags, SERVE_SETTINGS } from "../../src/cli/config.js";
import { dialWarning, exposureWarning, USBREDIR_EXPOSURE } from "../../src/cli/daemon-run.js";
import { parseListenAddress, REDIRECT_SETTINGS } from "../../src/cli/redirect-config.js";

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
