/**
 * Every emulated device enumerates like a USB 2.0 device (chapter 9): descriptors walked and checked the way
 * a host parses them, at full and high speed (and SuperSpeed for the storage, USB 3.2 chapter 9), plus the
 * standard requests the shared base answers.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { UsbDevice } from "../../src/devices/device.js";
import { decodeStringDescriptor, walkDescriptors } from "../../src/devices/emulated/descriptors.js";
import {
  createEmulatedDevice,
  EMULATED_DEVICES,
  type EmulatedDeviceName,
  isEmulatedDeviceName,
} from "../../src/devices/emulated/index.js";
import { EPIPE, ESHUTDOWN, OK } from "../../src/urb/status.js";
import { DescriptorType, UsbSpeed } from "../../src/usb/index.js";
import { InvalidOptionError } from "../../src/util/errors.js";
import { control, getDescriptor, setupPacket, u16 } from "./support.js";

const EXPECTED_LENGTH: Record<number, number> = {
  [DescriptorType.CONFIGURATION]: 9,
  [DescriptorType.OTHER_SPEED_CONFIGURATION]: 9,
  [DescriptorType.INTERFACE]: 9,
  [DescriptorType.ENDPOINT]: 7,
  [DescriptorType.HID]: 9,
  [DescriptorType.SS_ENDPOINT_COMPANION]: 6,
};

/** The storage is SuperSpeed-capable (BOS, bcdUSB 2.1 below SuperSpeed); the others are USB 2.0 devices. */
const SUPER_SPEED_CAPABLE = new Set<EmulatedDeviceName>(["storage"]);

let device: UsbDevice;
afterEach(async () => {
  await device?.close();
});

function make(name: EmulatedDeviceName, speed: UsbSpeed): UsbDevice {
  return createEmulatedDevice(name, name === "storage" ? { speed, sizeBytes: 64 * 1024 } : { speed });
}

/** Parse a configuration set like a host: lengths, types, totals, interface and endpoint counts. */
function checkConfigurationSet(set: Uint8Array, type: number, speed: UsbSpeed): number[] {
  const { entries, error } = walkDescriptors(set);
  expect(error).toBeNull();
  expect(entries[0]!.type).toBe(type);
  expect(u16(set, 2)).toBe(set.length);
  const interfaces = new Set<number>();
  const strings: number[] = [set[6]!];
  let endpointsLeft = 0;
  let previousType = 0;
  for (const e of entries) {
    // At SuperSpeed every endpoint is followed by its companion (USB 3.2 §9.6.7), and nothing else is.
    if (speed === UsbSpeed.SUPER)
      expect(e.type === DescriptorType.SS_ENDPOINT_COMPANION).toBe(previousType === DescriptorType.ENDPOINT);
    else expect(e.type).not.toBe(DescriptorType.SS_ENDPOINT_COMPANION);
    previousType = e.type;
    const expected = EXPECTED_LENGTH[e.type];
    if (expected !== undefined) expect(e.length, `descriptor type ${e.type}`).toBe(expected);
    if (e.type === DescriptorType.INTERFACE) {
      expect(endpointsLeft).toBe(0);
      interfaces.add(set[e.offset + 2]!);
      endpointsLeft = set[e.offset + 4]!;
      strings.push(set[e.offset + 8]!);
    }
    if (e.type === DescriptorType.ENDPOINT) {
      endpointsLeft--;
      const attributes = set[e.offset + 3]! & 3;
      const mps = u16(set, e.offset + 4) & 0x7ff;
      const fast = speed !== UsbSpeed.FULL;
      if (attributes === 2) expect(mps).toBe({ 2: 64, 3: 512, 4: 1024 }[speed as 2 | 3 | 4]);
      if (attributes === 3) expect(mps).toBeLessThanOrEqual(fast ? 1024 : 64);
      if (attributes === 1) expect(mps).toBeLessThanOrEqual(fast ? 1024 : 1023);
      if (attributes !== 2) expect(set[e.offset + 6]).toBeGreaterThan(0);
    }
  }
  expect(endpointsLeft).toBe(0);
  expect(set[4]).toBe(interfaces.size);
  return strings.filter((s) => s !== 0);
}

describe.each(EMULATED_DEVICES.map((d) => d.name))("%s enumerates", (name) => {
  const superCapable = SUPER_SPEED_CAPABLE.has(name);
  const speeds = superCapable
    ? [UsbSpeed.FULL, UsbSpeed.HIGH, UsbSpeed.SUPER]
    : [UsbSpeed.FULL, UsbSpeed.HIGH];
  it.each(speeds)("at speed %i: device, configurations and strings", async (speed) => {
    device = make(name, speed);
    await device.open();
    expect(device.info.speed).toBe(speed);
    // Linux first reads 8 (or 64) bytes of the device descriptor at address 0.
    const head = await getDescriptor(device, DescriptorType.DEVICE, 0, 8);
    expect(head.result).toMatchObject({ status: OK, actualLength: 8 });
    // At SuperSpeed bMaxPacketSize0 is the exponent 9 (512 bytes).
    expect(head.data[7]).toBe(speed === UsbSpeed.SUPER ? 9 : 64);
    const dd = (await getDescriptor(device, DescriptorType.DEVICE, 0, 64)).data;
    expect(dd.length).toBe(18);
    const bcdUsb = speed === UsbSpeed.SUPER ? 0x0300 : superCapable ? 0x0210 : 0x0200;
    expect([dd[0], dd[1], u16(dd, 2)]).toEqual([18, 1, bcdUsb]);
    // bcdUSB 2.1 and up promises a BOS (Linux reads it for those); a USB 2.0 device stalls the request.
    const bos = await getDescriptor(device, DescriptorType.BOS, 0, 255);
    if (superCapable) {
      expect(bos.result.status).toBe(OK);
      expect(walkDescriptors(bos.data).error).toBeNull();
      expect(u16(bos.data, 2)).toBe(bos.data.length);
    } else expect(bos.result.status).toBe(EPIPE);
    expect(u16(dd, 8)).toBe(0x1209);
    expect(dd).toEqual(device.info.deviceDescriptor);

    const strings = [dd[14]!, dd[15]!, dd[16]!].filter((s) => s !== 0);
    for (let i = 0; i < dd[17]!; i++) {
      const head9 = await getDescriptor(device, DescriptorType.CONFIGURATION, i, 9);
      const total = u16(head9.data, 2);
      const full = await getDescriptor(device, DescriptorType.CONFIGURATION, i, total);
      expect(full.data.length).toBe(total);
      expect(full.data).toEqual(device.info.configurations[i]);
      strings.push(...checkConfigurationSet(full.data, DescriptorType.CONFIGURATION, speed));
    }
    expect((await getDescriptor(device, DescriptorType.CONFIGURATION, dd[17]!, 9)).result.status).toBe(EPIPE);

    const langids = await getDescriptor(device, DescriptorType.STRING, 0, 255);
    expect([...langids.data]).toEqual([4, 3, 0x09, 0x04]);
    for (const index of strings) {
      const s = await getDescriptor(device, DescriptorType.STRING, index, 255, 0x0409);
      expect(s.result.status).toBe(OK);
      expect(decodeStringDescriptor(s.data)?.length).toBeGreaterThan(0);
      // wLength truncation: a host reading 2 bytes first gets bLength and the type.
      const two = await getDescriptor(device, DescriptorType.STRING, index, 2, 0x0409);
      expect([two.data[0], two.data[1]]).toEqual([s.data.length, 3]);
    }
    expect((await getDescriptor(device, DescriptorType.STRING, 200, 255, 0x0409)).result.status).toBe(EPIPE);
  });

  it("answers device_qualifier and other_speed_configuration when it is dual-speed", async () => {
    device = make(name, UsbSpeed.HIGH);
    const q = await getDescriptor(device, DescriptorType.DEVICE_QUALIFIER, 0, 10);
    expect(q.result.status).toBe(OK);
    expect([q.data[0], q.data[1], q.data[7], q.data[8]]).toEqual([
      10,
      6,
      64,
      device.info.deviceDescriptor[17],
    ]);
    const head = await getDescriptor(device, DescriptorType.OTHER_SPEED_CONFIGURATION, 0, 9);
    const full = await getDescriptor(device, DescriptorType.OTHER_SPEED_CONFIGURATION, 0, u16(head.data, 2));
    checkConfigurationSet(full.data, DescriptorType.OTHER_SPEED_CONFIGURATION, UsbSpeed.FULL);
  });

  it("validates SET_CONFIGURATION and SET_INTERFACE, and reports them through GET_CONFIGURATION/GET_INTERFACE", async () => {
    device = make(name, UsbSpeed.HIGH);
    await device.open();
    expect(await device.setConfiguration(7)).toBe(EPIPE);
    expect([...(await control(device, setupPacket(0x80, 0x08, 0, 0, 1))).data]).toEqual([0]);
    expect((await control(device, setupPacket(0x81, 0x0a, 0, 0, 1))).result.status).toBe(EPIPE);
    expect(await device.setInterface(0, 0)).toBe(EPIPE); // not configured yet
    expect(await device.setConfiguration(1)).toBe(OK);
    expect([...(await control(device, setupPacket(0x80, 0x08, 0, 0, 1))).data]).toEqual([1]);
    expect([...(await control(device, setupPacket(0x81, 0x0a, 0, 0, 1))).data]).toEqual([0]);
    expect(await device.setInterface(0, 9)).toBe(EPIPE);
    expect(await device.setInterface(5, 0)).toBe(EPIPE);
    expect(await device.clearHalt(0x8f)).toBe(EPIPE);
    expect(await device.reset()).toBe(OK);
    expect([...(await control(device, setupPacket(0x80, 0x08, 0, 0, 1))).data]).toEqual([0]);
  });

  it("answers GET_STATUS for device, interface and endpoints, and stalls unknown requests", async () => {
    device = make(name, UsbSpeed.HIGH);
    await device.setConfiguration(1);
    const dev = await control(device, setupPacket(0x80, 0x00, 0, 0, 2));
    expect(dev.result).toMatchObject({ status: OK, actualLength: 2 });
    expect((await control(device, setupPacket(0x81, 0x00, 0, 0, 2))).data).toEqual(Uint8Array.of(0, 0));
    expect((await control(device, setupPacket(0x82, 0x00, 0, 0x81, 2))).data).toEqual(Uint8Array.of(0, 0));
    expect((await control(device, setupPacket(0x82, 0x00, 0, 0x8e, 2))).result.status).toBe(EPIPE);
    // SET_FEATURE(ENDPOINT_HALT) then GET_STATUS shows it; clearHalt ends it.
    expect((await control(device, setupPacket(0x02, 0x03, 0, 0x81, 0))).result.status).toBe(OK);
    expect((await control(device, setupPacket(0x82, 0x00, 0, 0x81, 2))).data).toEqual(Uint8Array.of(1, 0));
    expect(await device.clearHalt(0x81)).toBe(OK);
    expect((await control(device, setupPacket(0x82, 0x00, 0, 0x81, 2))).data).toEqual(Uint8Array.of(0, 0));
    expect((await control(device, setupPacket(0x80, 0x0c, 0, 0, 2))).result.status).toBe(EPIPE);
    expect((await control(device, setupPacket(0x00, 0x05, 5, 0, 0))).result.status).toBe(EPIPE);
  });

  it("after close, every request completes with -ESHUTDOWN", async () => {
    device = make(name, UsbSpeed.HIGH);
    await device.close();
    expect((await getDescriptor(device, DescriptorType.DEVICE, 0, 18)).result.status).toBe(ESHUTDOWN);
    expect(await device.setConfiguration(1)).toBe(ESHUTDOWN);
  });
});

describe("registry", () => {
  it("lists three devices with one-line descriptions and refuses unknown names", () => {
    expect(EMULATED_DEVICES.map((d) => d.name)).toEqual(["loopback", "keyboard", "storage"]);
    for (const d of EMULATED_DEVICES) expect(d.description).not.toMatch(/\n/);
    expect(isEmulatedDeviceName("keyboard")).toBe(true);
    expect(isEmulatedDeviceName("mouse")).toBe(false);
    expect(() => createEmulatedDevice("mouse" as EmulatedDeviceName)).toThrow(InvalidOptionError);
  });

  it("defaults: storage and loopback at high speed, keyboard at full speed", async () => {
    const speeds = EMULATED_DEVICES.map((d) =>
      createEmulatedDevice(d.name, d.name === "storage" ? { sizeBytes: 4096 } : {}),
    );
    expect(speeds.map((d) => d.info.speed)).toEqual([UsbSpeed.HIGH, UsbSpeed.FULL, UsbSpeed.HIGH]);
    for (const d of speeds) await d.close();
  });
});

it("the storage at SuperSpeed stalls device_qualifier and other_speed_configuration at SuperSpeed", async () => {
  device = make("storage", UsbSpeed.SUPER);
  expect((await getDescriptor(device, DescriptorType.DEVICE_QUALIFIER, 0, 10)).result.status).toBe(EPIPE);
  const other = await getDescriptor(device, DescriptorType.OTHER_SPEED_CONFIGURATION, 0, 9);
  expect(other.result.status).toBe(EPIPE);
});
