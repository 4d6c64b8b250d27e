/** The HID boot keyboard driven through the UsbDevice interface. */
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  BOOT_KEYBOARD_REPORT_DESCRIPTOR,
  HidProtocol,
  HidReportType,
  HidRequest,
  KEYBOARD_ENDPOINT,
  KeyboardDevice,
  Led,
  Modifier,
} from "../../src/devices/emulated/keyboard.js";
import { ECONNRESET, EOVERFLOW, EPIPE, OK } from "../../src/urb/status.js";
import { DescriptorType, UsbSpeed } from "../../src/usb/index.js";
import { InvalidOptionError } from "../../src/util/errors.js";
import { tick } from "../support/eventually.js";
import { control, expectPending, getDescriptor, interrupt, setupPacket } from "./support.js";

const CLASS_IN = 0xa1;
const CLASS_OUT = 0x21;
let kbd: KeyboardDevice;

async function configured(options = {}) {
  kbd = new KeyboardDevice(options);
  await kbd.open();
  expect(await kbd.setConfiguration(1)).toBe(OK);
  // Linux usbhid: SET_IDLE(0), never repeat.
  expect((await control(kbd, setupPacket(CLASS_OUT, HidRequest.SET_IDLE, 0, 0, 0))).result.status).toBe(OK);
  return kbd;
}

afterEach(async () => {
  await kbd?.close();
});

async function readReport(): Promise<number[]> {
  const s = interrupt(kbd, KEYBOARD_ENDPOINT, 8);
  const r = await s.result;
  expect(r).toEqual({ status: OK, actualLength: 8 });
  return [...s.buffer];
}

describe("keyboard descriptors", () => {
  it("is a full-speed HID boot keyboard with a 10 ms 8-byte interrupt IN endpoint", async () => {
    kbd = new KeyboardDevice();
    expect(kbd.info.speed).toBe(UsbSpeed.FULL);
    const set = kbd.info.configurations[0]!;
    expect([...set.subarray(9, 18)]).toEqual([9, 4, 0, 0, 1, 3, 1, 1, 0]);
    expect([...set.subarray(18, 27)]).toEqual([9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0]);
    expect([...set.subarray(27, 34)]).toEqual([7, 5, 0x81, 3, 8, 0, 10]);
    // Full-speed only: device_qualifier is a request error.
    expect((await getDescriptor(kbd, DescriptorType.DEVICE_QUALIFIER, 0, 10)).result.status).toBe(EPIPE);
  });

  it("returns the 63-byte boot report descriptor to GET_DESCRIPTOR(report) on the interface", async () => {
    await configured();
    const r = await getDescriptor(kbd, DescriptorType.HID_REPORT, 0, 255, 0, 0x81);
    expect(r.result.status).toBe(OK);
    expect(r.data).toEqual(BOOT_KEYBOARD_REPORT_DESCRIPTOR);
    expect(r.data.length).toBe(63);
    const hid = await getDescriptor(kbd, DescriptorType.HID, 0, 9, 0, 0x81);
    expect(hid.data[0]).toBe(9);
    expect((await getDescriptor(kbd, DescriptorType.HID_REPORT, 0, 255, 1, 0x81)).result.status).toBe(EPIPE);
  });

  it("at high speed it is dual-speed and encodes 10 ms as bInterval 7 (8 ms)", () => {
    const hs = new KeyboardDevice({ speed: UsbSpeed.HIGH });
    expect(hs.info.configurations[0]![27 + 6]).toBe(7);
  });
});

describe("keyboard reports", () => {
  it("an idle keyboard keeps the interrupt IN pending (never a 0-byte answer); cancel ends it", async () => {
    await configured();
    // Time passes on fake clocks (timers and performance.now): many polling intervals, no sleep.
    vi.useFakeTimers({
      toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "performance"],
    });
    const s = interrupt(kbd, KEYBOARD_ENDPOINT, 8);
    try {
      await vi.advanceTimersByTimeAsync(5000);
    } finally {
      vi.useRealTimers();
    }
    await expectPending(s);
    kbd.cancel(s.handle);
    expect((await s.result).status).toBe(ECONNRESET);
  });

  it("pressKeys and releaseAll produce boot reports in order", async () => {
    await configured();
    kbd.pressKeys(Modifier.LEFT_CTRL | Modifier.LEFT_SHIFT, [0x04, 0x05]);
    kbd.releaseAll();
    expect(await readReport()).toEqual([0x03, 0, 0x04, 0x05, 0, 0, 0, 0]);
    expect(await readReport()).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(kbd.queuedReports).toBe(0);
  });

  it("a pending IN completes as soon as a key is pressed", async () => {
    await configured();
    const s = interrupt(kbd, KEYBOARD_ENDPOINT, 8);
    await expectPending(s);
    kbd.pressKeys(0, [0x28]);
    expect(await s.result).toEqual({ status: OK, actualLength: 8 });
    expect(s.buffer[2]).toBe(0x28);
  });

  it("typeText types each character as press + release, with shift for capitals", async () => {
    await configured();
    kbd.typeText("aB!");
    const reports = [];
    for (let i = 0; i < 6; i++) reports.push(await readReport());
    expect(reports).toEqual([
      [0, 0, 0x04, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 0],
      [Modifier.LEFT_SHIFT, 0, 0x05, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 0],
      [Modifier.LEFT_SHIFT, 0, 0x1e, 0, 0, 0, 0, 0],
      [0, 0, 0, 0, 0, 0, 0, 0],
    ]);
    expect(() => kbd.typeText("é")).toThrow(InvalidOptionError);
  });

  it("more than six keys down reports ErrorRollOver", async () => {
    await configured();
    kbd.pressKeys(0, [4, 5, 6, 7, 8, 9, 10]);
    expect(await readReport()).toEqual([0, 0, 1, 1, 1, 1, 1, 1]);
  });

  it("a buffer shorter than the report babbles", async () => {
    await configured();
    kbd.pressKeys(0, [4]);
    expect(await interrupt(kbd, KEYBOARD_ENDPOINT, 4).result).toEqual({ status: EOVERFLOW, actualLength: 4 });
  });

  it("repeats the current report at the idle rate when one is set", async () => {
    await configured();
    kbd.pressKeys(0, [0x04]);
    await readReport();
    // SET_IDLE duration 1 = 4 ms.
    await control(kbd, setupPacket(CLASS_OUT, HidRequest.SET_IDLE, 1 << 8, 0, 0));
    expect(await readReport()).toEqual([0, 0, 0x04, 0, 0, 0, 0, 0]);
    const idle = await control(kbd, setupPacket(CLASS_IN, HidRequest.GET_IDLE, 0, 0, 1));
    expect([...idle.data]).toEqual([1]);
  });
});

describe("keyboard class requests", () => {
  it("SET_REPORT(Output) sets the LEDs, readable through the API and GET_REPORT", async () => {
    const seen: number[] = [];
    await configured({ onLedsChanged: (l: number) => seen.push(l) });
    const leds = Uint8Array.of(Led.CAPS_LOCK | Led.NUM_LOCK);
    const r = await control(
      kbd,
      setupPacket(CLASS_OUT, HidRequest.SET_REPORT, HidReportType.OUTPUT << 8, 0, 1),
      leds,
    );
    expect(r.result.status).toBe(OK);
    expect(kbd.ledState()).toMatchObject({ numLock: true, capsLock: true, scrollLock: false, raw: 3 });
    expect(seen).toEqual([3]);
    const back = await control(
      kbd,
      setupPacket(CLASS_IN, HidRequest.GET_REPORT, HidReportType.OUTPUT << 8, 0, 1),
    );
    expect([...back.data]).toEqual([3]);
  });

  it("GET_REPORT(Input) returns the current key state", async () => {
    await configured();
    kbd.pressKeys(Modifier.RIGHT_ALT, [0x10]);
    await readReport();
    const r = await control(
      kbd,
      setupPacket(CLASS_IN, HidRequest.GET_REPORT, HidReportType.INPUT << 8, 0, 8),
    );
    expect([...r.data]).toEqual([Modifier.RIGHT_ALT, 0, 0x10, 0, 0, 0, 0, 0]);
  });

  it("GET_PROTOCOL/SET_PROTOCOL switch between report and boot; reset returns to report protocol", async () => {
    await configured();
    const get = async () => [
      ...(await control(kbd, setupPacket(CLASS_IN, HidRequest.GET_PROTOCOL, 0, 0, 1))).data,
    ];
    expect(await get()).toEqual([HidProtocol.REPORT]);
    expect(
      (await control(kbd, setupPacket(CLASS_OUT, HidRequest.SET_PROTOCOL, HidProtocol.BOOT, 0, 0))).result
        .status,
    ).toBe(OK);
    expect(await get()).toEqual([HidProtocol.BOOT]);
    expect((await control(kbd, setupPacket(CLASS_OUT, HidRequest.SET_PROTOCOL, 7, 0, 0))).result.status).toBe(
      EPIPE,
    );
    await kbd.reset();
    await kbd.setConfiguration(1);
    expect(await get()).toEqual([HidProtocol.REPORT]);
  });

  it("stalls class requests addressed to another interface or unknown", async () => {
    await configured();
    expect((await control(kbd, setupPacket(CLASS_IN, HidRequest.GET_PROTOCOL, 0, 1, 1))).result.status).toBe(
      EPIPE,
    );
    expect((await control(kbd, setupPacket(CLASS_IN, 0x55, 0, 0, 1))).result.status).toBe(EPIPE);
    await tick();
  });
});
