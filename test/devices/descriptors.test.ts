/** The descriptor builder: lengths, totals, per-speed endpoint encodings, strings and spec validation. */
import { describe, expect, it } from "vitest";
import {
  buildDescriptors,
  type DescriptorSpec,
  decodeStringDescriptor,
  hidDescriptor,
  stringDescriptor,
  walkDescriptors,
} from "../../src/devices/emulated/descriptors.js";
import { DescriptorType, UsbSpeed } from "../../src/usb/index.js";
import { InvalidOptionError } from "../../src/util/errors.js";
import { oneVendorInterface } from "./vendor-interface.js";

const u16 = (b: Uint8Array, at: number) => b[at]! | (b[at + 1]! << 8);

const spec: DescriptorSpec = {
  deviceClass: 0,
  deviceSubClass: 0,
  deviceProtocol: 0,
  vendorId: 0x1209,
  productId: 0x0001,
  bcdDevice: 0x0100,
  manufacturer: "usbvirt",
  product: "test",
  serialNumber: "0123456789AB",
  dualSpeed: true,
  configurations: [
    {
      configurationValue: 1,
      name: "cfg",
      selfPowered: true,
      interfaces: [
        {
          interfaceNumber: 0,
          alternates: [
            {
              alternateSetting: 0,
              interfaceClass: 3,
              interfaceSubClass: 0,
              interfaceProtocol: 0,
              classDescriptors: [hidDescriptor(63)],
              endpoints: [
                { address: 0x81, type: "bulk" },
                { address: 0x02, type: "interrupt", maxPacketSize: 8, intervalMs: 10 },
              ],
            },
            {
              alternateSetting: 1,
              interfaceClass: 0xff,
              interfaceSubClass: 0,
              interfaceProtocol: 0,
              endpoints: [{ address: 0x83, type: "isochronous", maxPacketSize: { full: 1023, high: 1024 } }],
            },
          ],
        },
      ],
    },
  ],
};

describe("buildDescriptors", () => {
  it("walks cleanly with wTotalLength, bNumInterfaces and bNumEndpoints matching the set", () => {
    for (const speed of [UsbSpeed.FULL, UsbSpeed.HIGH]) {
      const d = buildDescriptors(spec, speed);
      const set = d.configurations[0]!;
      const { entries, error } = walkDescriptors(set);
      expect(error).toBeNull();
      expect(u16(set, 2)).toBe(set.length);
      expect(set[4]).toBe(1);
      expect(entries.map((e) => e.type)).toEqual([
        DescriptorType.CONFIGURATION,
        DescriptorType.INTERFACE,
        DescriptorType.HID,
        DescriptorType.ENDPOINT,
        DescriptorType.ENDPOINT,
        DescriptorType.INTERFACE,
        DescriptorType.ENDPOINT,
      ]);
      expect(set[entries[1]!.offset + 4]).toBe(2);
      expect(set[entries[5]!.offset + 4]).toBe(1);
      expect(set[7]).toBe(0xc0); // reserved bit + self-powered
    }
  });

  it("encodes bulk 64/512 and interrupt/iso bInterval per speed", () => {
    const fs = buildDescriptors(spec, UsbSpeed.FULL).layout[0]!.interfaces[0]!.alternates;
    const hs = buildDescriptors(spec, UsbSpeed.HIGH).layout[0]!.interfaces[0]!.alternates;
    expect(fs[0]!.endpoints[0]!.maxPacketSize).toBe(64);
    expect(hs[0]!.endpoints[0]!.maxPacketSize).toBe(512);
    expect(fs[0]!.endpoints[1]!.intervalMs).toBe(10);
    expect(hs[0]!.endpoints[1]!.intervalMs).toBe(8); // 2^(7-1) microframes
    expect(fs[1]!.endpoints[0]!.maxPacketSize).toBe(1023);
    expect(hs[1]!.endpoints[0]!.maxPacketSize).toBe(1024);
    const hsSet = buildDescriptors(spec, UsbSpeed.HIGH).configurations[0]!;
    const eps = walkDescriptors(hsSet).entries.filter((e) => e.type === DescriptorType.ENDPOINT);
    expect(hsSet[eps[1]!.offset + 6]).toBe(7);
  });

  it("builds device_qualifier and other_speed_configuration for a dual-speed device", () => {
    const d = buildDescriptors(spec, UsbSpeed.HIGH);
    expect(d.deviceQualifier).toEqual(Uint8Array.from([10, 6, 0x00, 0x02, 0, 0, 0, 64, 1, 0]));
    const other = d.otherSpeedConfigurations![0]!;
    expect(other[1]).toBe(DescriptorType.OTHER_SPEED_CONFIGURATION);
    const eps = walkDescriptors(other).entries.filter((e) => e.type === DescriptorType.ENDPOINT);
    expect(u16(other, eps[0]!.offset + 4)).toBe(64);
    const single = buildDescriptors({ ...spec, dualSpeed: false }, UsbSpeed.FULL);
    expect(single.deviceQualifier).toBeNull();
    expect(single.otherSpeedConfigurations).toBeNull();
  });

  it("assigns string indices and encodes UTF-16LE with LANGID 0x0409 at index 0", () => {
    const d = buildDescriptors(spec, UsbSpeed.FULL);
    expect(d.strings.get(0)).toEqual(Uint8Array.from([4, 3, 0x09, 0x04]));
    expect(decodeStringDescriptor(d.strings.get(d.device[14]!)!)).toBe("usbvirt");
    expect(decodeStringDescriptor(d.strings.get(d.device[15]!)!)).toBe("test");
    expect(decodeStringDescriptor(d.strings.get(d.device[16]!)!)).toBe("0123456789AB");
    expect(decodeStringDescriptor(d.strings.get(d.configurations[0]![6]!)!)).toBe("cfg");
    expect(stringDescriptor("é")).toEqual(Uint8Array.from([4, 3, 0xe9, 0x00]));
  });

  it("rejects impossible specs eagerly", () => {
    const bad = (patch: Partial<DescriptorSpec>) => () =>
      buildDescriptors({ ...spec, ...patch }, UsbSpeed.HIGH);
    expect(bad({ vendorId: 0x10000 })).toThrow(InvalidOptionError);
    expect(bad({ configurations: [] })).toThrow(InvalidOptionError);
    expect(() => stringDescriptor("x".repeat(200))).toThrow(InvalidOptionError);
    expect(() => buildDescriptors(spec, UsbSpeed.LOW)).toThrow(InvalidOptionError);
    const badEp: DescriptorSpec = {
      ...spec,
      configurations: oneVendorInterface([{ address: 0x81, type: "bulk", maxPacketSize: 128 }]),
    };
    expect(() => buildDescriptors(badEp, UsbSpeed.FULL)).toThrow(InvalidOptionError);
  });

  describe("SuperSpeed", () => {
    const streamsEp = { address: 0x81, type: "bulk", maxStreams: 32, maxBurst: 15 } as const;
    const ss: DescriptorSpec = {
      ...spec,
      superSpeed: true,
      configurations: oneVendorInterface([
        streamsEp,
        { address: 0x02, type: "bulk" },
        { address: 0x83, type: "interrupt", maxPacketSize: 16, intervalMs: 1, maxBurst: 1 },
      ]),
    };

    it("at SuperSpeed: bcdUSB 3.0, bMaxPacketSize0 9, 1024-byte bulk, a companion after every endpoint", () => {
      const d = buildDescriptors(ss, UsbSpeed.SUPER);
      expect(u16(d.device, 2)).toBe(0x0300);
      expect(d.device[7]).toBe(9);
      const set = d.configurations[0]!;
      const { entries, error } = walkDescriptors(set);
      expect(error).toBeNull();
      expect(u16(set, 2)).toBe(set.length);
      expect(entries.map((e) => e.type)).toEqual([
        DescriptorType.CONFIGURATION,
        DescriptorType.INTERFACE,
        DescriptorType.ENDPOINT,
        DescriptorType.SS_ENDPOINT_COMPANION,
        DescriptorType.ENDPOINT,
        DescriptorType.SS_ENDPOINT_COMPANION,
        DescriptorType.ENDPOINT,
        DescriptorType.SS_ENDPOINT_COMPANION,
      ]);
      const at = (i: number) => entries[i]!.offset;
      expect(u16(set, at(2) + 4)).toBe(1024);
      expect(u16(set, at(4) + 4)).toBe(1024);
      // Bulk IN: bMaxBurst 15, MaxStreams 2^5 = 32, wBytesPerInterval 0.
      expect([...set.subarray(at(3), at(3) + 6)]).toEqual([6, 0x30, 15, 5, 0, 0]);
      expect([...set.subarray(at(5), at(5) + 6)]).toEqual([6, 0x30, 0, 0, 0, 0]);
      // Interrupt: 16 bytes × (1 + 1) per interval; bInterval as at high speed (2^(4-1) × 125 µs = 1 ms).
      expect([...set.subarray(at(7), at(7) + 6)]).toEqual([6, 0x30, 1, 0, 32, 0]);
      expect(set[at(6) + 6]).toBe(4);
      const eps = d.layout[0]!.interfaces[0]!.alternates[0]!.endpoints;
      expect(eps.map((e) => e.maxStreams)).toEqual([32, 0, 0]);
      // §9.6.2: at SuperSpeed there is no other speed to describe.
      expect(d.deviceQualifier).toBeNull();
      expect(d.otherSpeedConfigurations).toBeNull();
    });

    it("has a BOS with USB 2.0 Extension (LPM) and SuperSpeed USB capabilities, at every speed", () => {
      for (const speed of [UsbSpeed.FULL, UsbSpeed.HIGH, UsbSpeed.SUPER]) {
        const bos = buildDescriptors(ss, speed).bos!;
        expect(walkDescriptors(bos).error).toBeNull();
        expect([...bos.subarray(0, 5)]).toEqual([5, 0x0f, bos.length, 0, 2]);
        expect([...bos.subarray(5, 12)]).toEqual([7, 0x10, 0x02, 0x02, 0, 0, 0]);
        // wSpeedsSupported full|high|5 Gb/s (0x000e), lowest full function at full speed.
        expect([...bos.subarray(12, 22)]).toEqual([10, 0x10, 0x03, 0, 0x0e, 0, 1, 0x0a, 0x20, 0]);
      }
      expect(buildDescriptors(spec, UsbSpeed.HIGH).bos).toBeNull();
    });

    it("below SuperSpeed: bcdUSB 2.1 (it has a BOS), no companions, no streams, qualifier as dual-speed", () => {
      const d = buildDescriptors(ss, UsbSpeed.HIGH);
      expect(u16(d.device, 2)).toBe(0x0210);
      expect(d.device[7]).toBe(64);
      const types = walkDescriptors(d.configurations[0]!).entries.map((e) => e.type);
      expect(types).not.toContain(DescriptorType.SS_ENDPOINT_COMPANION);
      expect(d.layout[0]!.interfaces[0]!.alternates[0]!.endpoints[0]!.maxStreams).toBe(0);
      expect(u16(d.deviceQualifier!, 2)).toBe(0x0210);
      expect(u16(d.otherSpeedConfigurations![0]!, 2)).toBe(d.otherSpeedConfigurations![0]!.length);
    });

    it("refuses SuperSpeed for a device that is not capable, and bad streams or bursts, at build time", () => {
      expect(() => buildDescriptors(spec, UsbSpeed.SUPER)).toThrow(/not SuperSpeed-capable/);
      const withEp = (ep: object): DescriptorSpec => ({
        ...ss,
        configurations: oneVendorInterface([{ address: 0x81, type: "bulk", ...ep } as never]),
      });
      for (const speed of [UsbSpeed.HIGH, UsbSpeed.SUPER]) {
        expect(() => buildDescriptors(withEp({ maxStreams: 3 }), speed)).toThrow(/power of two/);
        expect(() => buildDescriptors(withEp({ maxStreams: 1 << 17 }), speed)).toThrow(/power of two/);
        expect(() => buildDescriptors(withEp({ maxBurst: 16 }), speed)).toThrow(/maxBurst/);
        expect(() =>
          buildDescriptors(withEp({ type: "interrupt", maxPacketSize: 8, maxStreams: 4 }), speed),
        ).toThrow(/only bulk/);
      }
      // Config 9 + interface 9 + endpoint 7: the companion's bmAttributes is octet 28 of the set.
      expect(buildDescriptors(withEp({ maxStreams: 65536 }), UsbSpeed.SUPER).configurations[0]![28]).toBe(16);
    });
  });

  it("walkDescriptors reports a zero bLength instead of looping", () => {
    expect(walkDescriptors(Uint8Array.from([9, 2, 0, 0, 0, 0, 0, 0, 0, 0, 4])).error).toMatch(/bLength 0/);
  });
});
