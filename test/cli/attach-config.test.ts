/**
 * `usbvirt attach` by what devices are: --device repeatable, or a --config file listing devices each with
 * its own TLS settings, both checked by one schema (src/cli/attach-config.ts). A wrong key or value is a
 * usage error (exit 2) naming the key or the flag; a device's own TLS keys win over the top-level ones; a
 * client certificate alone is enough (the announced fingerprint is pinned), half of one is not.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ATTACH_SETTINGS, attachEntries } from "../../src/cli/attach-config.js";
import { checkConfig, configFromFlags } from "../../src/cli/config.js";
import { run } from "../../src/cli/run.js";
import { capture } from "./helpers.js";

const dir = mkdtempSync(join(tmpdir(), "usbvirt-attach-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, value: unknown) => {
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify(value));
  return path;
};
const check = (value: unknown) => checkConfig(ATTACH_SETTINGS, value, "the file");

describe("attach's settings", () => {
  it("each device with its TLS settings: its own keys over the top-level ones; a plain selector takes the top level", () => {
    const entries = attachEntries(
      check({
        tlsCert: "all.pem",
        tlsKey: "all.key",
        devices: [
          "serial=A",
          { device: "1209:0001", tlsCa: "ca.pem" },
          {
            device: "serial=C",
            tlsCert: "c.pem",
            tlsKey: "c.key",
            tlsServerFingerprints: [`SHA256:${"ab".repeat(32)}`],
          },
        ],
      }),
    );
    expect(entries).toEqual([
      { selector: "serial=A", tls: { cert: { file: "all.pem" }, key: { file: "all.key" } } },
      {
        selector: "1209:0001",
        tls: { ca: { file: "ca.pem" }, cert: { file: "all.pem" }, key: { file: "all.key" } },
      },
      {
        selector: "serial=C",
        tls: {
          serverFingerprints: [`SHA256:${"ab".repeat(32)}`],
          cert: { file: "c.pem" },
          key: { file: "c.key" },
        },
      },
    ]);
    expect(attachEntries(check({ devices: ["serial=A"] }))).toEqual([{ selector: "serial=A", tls: null }]);
  });

  it("flags: --device repeated, --tls-cert/--tls-key for each, --timeout as written", () => {
    const config = configFromFlags(ATTACH_SETTINGS, {
      device: ["serial=A", "serial=B"],
      "tls-cert": "c.pem",
      "tls-key": "c.key",
      timeout: "0.5",
    });
    expect(config.timeout).toBe("0.5");
    expect(attachEntries(config).map((e) => [e.selector, e.tls?.cert])).toEqual([
      ["serial=A", { file: "c.pem" }],
      ["serial=B", { file: "c.pem" }],
    ]);
  });

  it("refuses, naming what: an unknown key, a bad selector, a bad fingerprint, no devices, seconds out of range, half a certificate", () => {
    expect(() => check({ devices: ["serial=A"], frob: 1 })).toThrow(/unknown key "frob"/);
    expect(() => check({ devices: ["frob=1"] })).toThrow(/devices\[0\]: "frob=1": .*unknown key/);
    expect(() => check({ devices: [{ device: "serial=A", tlsServerFingerprints: ["nope"] }] })).toThrow(
      /devices\[0\]\.tlsServerFingerprints\[0\]: "nope" is not "SHA256:"/,
    );
    expect(() => check({ devices: [] })).toThrow(/devices: lists no device/);
    expect(() => check({ devices: ["serial=A"], timeout: 0 })).toThrow(
      /timeout: must be a number of seconds/,
    );
    expect(() => check({ devices: [{ device: 42 }] })).toThrow(/devices\[0\]\.device/);
    expect(() => attachEntries(check({ devices: [{ device: "serial=A", tlsCert: "c.pem" }] }))).toThrow(
      /"serial=A": a TLS client certificate needs both --tls-cert and --tls-key/,
    );
  });

  it("the CLI: --config with HOST BUSID, or a bad file, is a usage error (exit 2) naming the file and key", async () => {
    const good = file("good.json", { devices: ["serial=A"] });
    const c = capture();
    expect(await run(["attach", "--config", good, "127.0.0.1", "1-1"], c.io)).toBe(2);
    expect(c.err).toMatch(/--device and --config replace HOST BUSID/);
    const bad = file("bad.json", { devices: ["serial=A"], keepalive: "soon" });
    const d = capture();
    expect(await run(["attach", "--config", bad], d.io)).toBe(2);
    expect(d.err).toContain(`config file ${bad}: keepalive: must be a number of seconds`);
    const e = capture();
    expect(await run(["attach", "--device", "serial=A", "--check"], e.io)).toBe(2);
  });
});
