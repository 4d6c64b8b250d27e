/** An emulated device's selection state: which endpoints a configuration and alternates make active, halts. */
import { describe, expect, it } from "vitest";
import { buildDescriptors, type DescriptorSpec } from "../../src/devices/emulated/descriptors.js";
import { EndpointState } from "../../src/devices/emulated/endpoint-state.js";
import { UsbSpeed } from "../../src/usb/index.js";

const spec: DescriptorSpec = {
  deviceClass: 0,
  deviceSubClass: 0,
  deviceProtocol: 0,
  vendorId: 0x1209,
  productId: 0x0001,
  bcdDevice: 0x0100,
  dualSpeed: false,
  configurations: [
    {
      configurationValue: 1,
      interfaces: [
        {
          interfaceNumber: 0,
          alternates: [
            {
              alternateSetting: 0,
              interfaceClass: 0xff,
              interfaceSubClass: 0,
              interfaceProtocol: 0,
              endpoints: [{ address: 0x81, type: "bulk" }],
            },
            {
              alternateSetting: 1,
              interfaceClass: 0xff,
              interfaceSubClass: 0,
              interfaceProtocol: 0,
              endpoints: [{ address: 0x83, type: "isochronous", maxPacketSize: 64 }],
            },
          ],
        },
        {
          interfaceNumber: 1,
          alternates: [
            {
              alternateSetting: 0,
              interfaceClass: 0xff,
              interfaceSubClass: 0,
              interfaceProtocol: 0,
              endpoints: [{ address: 0x02, type: "bulk" }],
            },
          ],
        },
      ],
    },
  ],
};
const config = buildDescriptors(spec, UsbSpeed.HIGH).layout[0]!;

describe("EndpointState", () => {
  it("has no active endpoint and no interface while unconfigured", () => {
    const state = new EndpointState();
    expect(state.configurationValue).toBe(0);
    expect(state.isActive(0x81)).toBe(false);
    expect(state.hasInterface(0)).toBe(false);
  });

  it("activates the endpoints of alternate 0 of every interface on configure", () => {
    const state = new EndpointState();
    state.configure(config);
    expect(state.configurationValue).toBe(1);
    expect(state.endpoint(0x81)?.type).toBe("bulk");
    expect(state.isActive(0x02)).toBe(true);
    expect(state.isActive(0x83)).toBe(false);
    expect(state.hasInterface(1)).toBe(true);
    expect(state.hasInterface(2)).toBe(false);
  });

  it("swaps an interface's endpoints on selectAlternate and clears only that interface's halts", () => {
    const state = new EndpointState();
    state.configure(config);
    state.markHalted(0x81);
    state.markHalted(0x02);
    state.selectAlternate(0, 1);
    expect(state.alternateOf(0)).toBe(1);
    expect(state.isActive(0x81)).toBe(false);
    expect(state.endpoint(0x83)?.type).toBe("isochronous");
    expect(state.isHalted(0x81)).toBe(false);
    expect(state.isHalted(0x02)).toBe(true);
  });

  it("starts afresh on configure: alternates back to 0, every halt cleared", () => {
    const state = new EndpointState();
    state.configure(config);
    state.selectAlternate(0, 1);
    state.markHalted(0x02);
    state.configure(config);
    expect(state.alternateOf(0)).toBe(0);
    expect(state.isHalted(0x02)).toBe(false);
    state.configure(null);
    expect(state.isActive(0x02)).toBe(false);
  });
});
