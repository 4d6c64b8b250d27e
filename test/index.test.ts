/**
 * The package's public API (src/index.ts, `import … from "usbvirt"`) exports
 * what a user embeds, by name, and keeps the data plane's internals under
 * `usbvirt/internals` (src/internals.ts). Type-only exports are checked by
 * test/types/events.test-d.ts at compile time.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import * as apiModule from "../src/index.js";
import * as internalsModule from "../src/internals.js";
import { UsbvirtError } from "../src/util/errors.js";

// Plain objects: the tests look names up by string.
const api = { ...apiModule };
const internals: Record<string, unknown> = { ...internalsModule };

const classes = [
  "Connection",
  "VirtualHostController",
  "GuestUsbDriver",
  "GuestBufferAllocator",
  "BulkOnlyClient",
  "UsbipServer",
  "UsbipClient",
  "UsbredirServer",
  "HostHotplug",
] as const;

const functions = [
  "listHostDevices",
  "listRemote",
  "describeSpec",
  "connectionStateName",
  "portNum",
  "devAddr",
  "endpointNum",
  "describeStatus",
] as const;

const errorClasses = [
  "UsbvirtError",
  "InvalidOptionError",
  "NotImplementedError",
  "ConnectionError",
  "ControllerStateError",
  "PortResetError",
  "GuestTransferError",
  "UsbipServerError",
  "UsbredirServerError",
  "UsbipClientError",
  "UsbipImportError",
  "UsbipRemoteError",
  "DeviceClosedError",
  "StorageLockError",
  "UsbipTimeoutError",
  "AttachError",
  "HostDeviceError",
  "LibusbUnavailableError",
  "PortStartError",
  "BackendPortError",
  "InlinePortError",
  "GrantError",
] as const;

describe("public API (src/index.ts)", () => {
  it.each(classes)("exports the class %s", (name) => {
    expect(typeof api[name]).toBe("function");
    expect(api[name].name).toBe(name);
  });

  it.each(functions)("exports the function %s", (name) => {
    expect(typeof api[name]).toBe("function");
  });

  it.each(errorClasses)("exports the error class %s, a UsbvirtError", (name) => {
    const cls = api[name];
    expect(cls.name).toBe(name);
    expect(cls === UsbvirtError || cls.prototype instanceof UsbvirtError).toBe(true);
  });

  it("exports the emulated devices, the connection states and the URB statuses", () => {
    expect(api.EMULATED_DEVICES.map((d) => d.name)).toEqual(["loopback", "keyboard", "storage"]);
    expect(api.ConnectionState.Connected).toBe(4);
    expect([api.OK, api.ENODEV, api.EPIPE, api.ESHUTDOWN]).toEqual([0, -19, -32, -108]);
    expect(api.portNum(1)).toBe(1);
    expect(() => api.portNum(32)).toThrow();
  });

  it("exports UsbredirServer as it does UsbipServer: options checked before anything starts", async () => {
    const options: apiModule.UsbredirServerOptions = {
      device: { kind: "emulated", name: "loopback" },
      listen: { port: 0 },
      connect: { host: "127.0.0.1", port: 1 },
    };
    await expect(api.UsbredirServer.start(options)).rejects.toThrow(api.UsbredirServerError);
    await expect(api.UsbredirServer.start(options)).rejects.toMatchObject({
      code: "ERR_USBVIRT_USBREDIR_OPTIONS",
    });
  });

  it("keeps the data plane's parts out of it and under usbvirt/internals", () => {
    for (const name of [
      "FrontRing",
      "BackRing",
      "GrantTableOwner",
      "GrantMapper",
      "parseRequest",
      "encodeRequest",
    ]) {
      expect(name in apiModule, name).toBe(false);
      expect(typeof internals[name], name).toBe("function");
    }
    expect(typeof internalsModule.createControllerHandles).toBe("function");
  });

  it("maps usbvirt/internals to the compiled src/internals.ts in package.json", () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      exports: Record<string, string | { default?: string; import?: string }>;
    };
    const target = (key: string): string | undefined => {
      const t = pkg.exports[key];
      return typeof t === "string" ? t : (t?.import ?? t?.default);
    };
    expect(target(".")).toBe("./dist/src/index.js");
    expect(target("./internals")).toBe("./dist/src/internals.js");
  });
});
