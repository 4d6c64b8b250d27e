/**
 * `usbvirt serve`'s settings, checked by one schema (src/cli/config.ts) for flags and config file alike
 * (the real process meets each typo in serve-settings.test.ts), and the warning about binding beyond
 * loopback, which an allowlist no longer hides.
 */
import { describe, expect, it } from "vitest";
import { checkServeConfig, serveConfigFromFlags } from "../../src/cli/config.js";
import { exposureWarning } from "../../src/cli/run.js";

describe("the settings schema", () => {
  it("flags and file go through the same schema; a digit port becomes a number", () => {
    expect(
      serveConfigFromFlags({
        port: "3240",
        device: ["loopback"],
        "allow-client": ["10.0.0.0/8"],
        quiet: true,
      }),
    ).toEqual({ port: 3240, devices: ["loopback"], allowClients: ["10.0.0.0/8"], quiet: true });
    const file = { $schema: "./usbvirt.schema.json", port: 3240, devices: ["loopback"], storageSize: 65536 };
    expect(checkServeConfig(file, "f")).toEqual(file);
  });

  it("every problem is reported at once, each with its key", () => {
    expect(() => checkServeConfig({ port: -1, deny: ["zz"], quiet: "yes" }, "config file f")).toThrow(
      /^config file f: port: must be an integer 0\.\.65535, not -1; deny\[0\]: "zz": .+; quiet: .+$/,
    );
  });
});

describe("the warning about binding beyond loopback", () => {
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
});
