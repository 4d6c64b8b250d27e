/**
 * The device-spec schema (src/devices/spec-schema.ts): each bad spec with the field its error names, and
 * good specs of every kind that pass unchanged. Connection.attach's use of it: test/engine/attach-spec.test.ts.
 */
import { describe, expect, it } from "vitest";
import { checkDeviceSpec } from "../../src/devices/spec-schema.js";
import { InvalidOptionError } from "../../src/util/errors.js";

const bad: readonly [string, unknown, string][] = [
  ["not an object", 42, "bad device spec: spec: "],
  ["no kind", {}, 'spec.kind: must be one of "emulated" | "host" | "usbip", not undefined'],
  [
    "unknown emulated name",
    { kind: "emulated", name: "mouse" },
    'spec.name: must be one of "loopback" | "keyboard" | "storage", not "mouse"',
  ],
  [
    "storage file of the wrong type",
    { kind: "emulated", name: "storage", options: { file: 7 } },
    "spec.options.file: ",
  ],
  [
    "storage size not in blocks",
    { kind: "emulated", name: "storage", options: { sizeBytes: 1000 } },
    "spec.options.sizeBytes: must be a multiple of 512",
  ],
  [
    "misspelled option",
    { kind: "emulated", name: "loopback", options: { fifoCapacty: 1 } },
    'spec.options: unknown key "fifoCapacty"',
  ],
  ["bad placement", { kind: "emulated", name: "keyboard", placement: "gpu" }, "spec.placement: "],
  [
    "speed out of range",
    { kind: "emulated", name: "keyboard", options: { speed: 4 } },
    "spec.options.speed: must be 2 (full speed) or 3 (high speed), not 4",
  ],
  [
    "vendor id out of range",
    { kind: "host", vendorId: 0x10000 },
    "spec.vendorId: must be an integer 0..0xffff",
  ],
  [
    "empty host selector",
    { kind: "host" },
    "spec: a host device spec needs vendorId, productId, busPort or serial",
  ],
  [
    "usbip without busid",
    { kind: "usbip", host: "h" },
    "spec: a usbip spec names its server (host and busid",
  ],
  [
    "usbip with both a server and a selector",
    { kind: "usbip", host: "h", busid: "1-1", select: "serial=A" },
    "not both",
  ],
  ["usbip discoverMs without select", { kind: "usbip", host: "h", busid: "1-1", discoverMs: 10 }, "not both"],
  ["usbip with an empty selector", { kind: "usbip", select: "" }, "spec.select: must not be empty"],
];

const good: readonly unknown[] = [
  { kind: "emulated", name: "loopback" },
  {
    kind: "emulated",
    name: "storage",
    options: { sizeBytes: 1024 * 1024, file: "/tmp/x.img", readOnly: true },
    placement: "worker",
  },
  { kind: "host", vendorId: 0x1209, productId: 1 },
  { kind: "host", busPort: "1-1.2" },
  { kind: "usbip", host: "127.0.0.1", port: 3240, busid: "1-1" },
  {
    kind: "usbip",
    select: "serial=ABC",
    discoverMs: 1000,
    retryMaxMs: 2000,
    tls: { cert: { file: "c" }, key: { file: "k" } },
  },
];

describe("checkDeviceSpec", () => {
  it.each(bad)("refuses %s", (_what, spec, message) => {
    expect(() => checkDeviceSpec(spec)).toThrow(InvalidOptionError);
    expect(() => checkDeviceSpec(spec)).toThrow(message);
  });

  it.each(good)("accepts %j unchanged", (spec) => {
    expect(checkDeviceSpec(spec)).toEqual(spec);
  });
});
