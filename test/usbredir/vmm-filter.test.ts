/** The VMM's filter_filter judged against the device as QEMU judges it (src/usbredir/vmm-filter.ts). */
import { describe, expect, it } from "vitest";
import type { DeviceDescription } from "../../src/guest/device-description.js";
import { RedirDeviceModel } from "../../src/usbredir/device-model.js";
import { judgeVmmFilter } from "../../src/usbredir/vmm-filter.js";

const HID = 0x03;
const VENDOR = 0xff;

/** A device whose configuration 1 has one interface of class `first`, and configuration 2 one of class `second`. */
function model(first: number, second = first): RedirDeviceModel {
  const itf = (cls: number) => ({ number: 0, alternate: 0, cls, subclass: 0, protocol: 0, endpoints: [] });
  const description: DeviceDescription = {
    vendorId: 0x1d6b,
    productId: 0x0104,
    bcdDevice: 0x0100,
    deviceClass: 0,
    deviceSubClass: 0,
    deviceProtocol: 0,
    configurations: [
      { value: 1, interfaces: [itf(first)] },
      { value: 2, interfaces: [itf(second)] },
    ],
  };
  return new RedirDeviceModel(description, 2);
}

/** The packet's data: the rules, NUL-terminated. */
function packet(rules: string): Uint8Array {
  return new Uint8Array(Buffer.from(`${rules}\0`, "latin1"));
}

const DENY_HID_ALLOW_REST = "0x03,-1,-1,-1,0|-1,-1,-1,-1,1";

describe("judgeVmmFilter", () => {
  it("refuses a device whose interface class a rule denies, and allows one the next rule allows", () => {
    const refused = judgeVmmFilter(packet(DENY_HID_ALLOW_REST), model(HID));
    expect(refused).toMatchObject({ kind: "refused", text: DENY_HID_ALLOW_REST });
    expect((refused as { why: string }).why).toMatch(/rule 1/);
    expect(judgeVmmFilter(packet(DENY_HID_ALLOW_REST), model(VENDOR))).toMatchObject({ kind: "allowed" });
  });

  it("refuses a device no rule allows, even when every rule denies (no default allow, as QEMU checks)", () => {
    expect(judgeVmmFilter(packet("0x03,-1,-1,-1,0"), model(VENDOR))).toMatchObject({ kind: "refused" });
    expect(judgeVmmFilter(packet("0x08,-1,-1,-1,1"), model(VENDOR))).toMatchObject({ kind: "refused" });
  });

  it("judges the interfaces of the active configuration (the first one while unconfigured)", () => {
    const m = model(HID, VENDOR);
    expect(judgeVmmFilter(packet(DENY_HID_ALLOW_REST), m).kind).toBe("refused");
    m.configure(2);
    expect(judgeVmmFilter(packet(DENY_HID_ALLOW_REST), m).kind).toBe("allowed");
  });

  it("calls a string without its NUL where the length says malformed, and rules it cannot read unreadable", () => {
    const noNul = new Uint8Array(Buffer.from("-1,-1,-1,-1,1", "latin1"));
    expect(judgeVmmFilter(noNul, model(VENDOR))).toMatchObject({ kind: "malformed" });
    const early = new Uint8Array(Buffer.from("-1,-1,-1,-1,1\0\0", "latin1"));
    expect(judgeVmmFilter(early, model(VENDOR))).toMatchObject({ kind: "malformed" });
    expect(judgeVmmFilter(packet("not a rule"), model(VENDOR))).toMatchObject({
      kind: "unreadable",
      text: "not a rule",
    });
  });
});
