/**
 * HID boot keyboard (Device Class Definition for HID 1.11: boot interface §4.2 / Appendix B.1 report
 * format, class descriptor §6.2.1, class requests §7.2; usage ids from the HID Usage Tables, page 0x07).
 *
 * Identity: 1209:0002 (pid.codes test range, see ids.ts). Interface 0: class 3 (HID), subclass 1 (boot),
 * protocol 1 (keyboard); interrupt IN 0x81, 8 bytes, 10 ms. LEDs arrive by SET_REPORT(Output) on
 * endpoint 0 (the boot keyboard needs no interrupt OUT endpoint).
 *
 * Input report (8 bytes): modifiers bitmap, reserved 0, six key usage ids (0 = none; all six 0x01 =
 * ErrorRollOver when more than six keys are down). Output report (1 byte): LED bitmap (Num, Caps, Scroll,
 * Compose, Kana in bits 0..4). The report protocol and the boot protocol use the same layout here, so
 * SET_PROTOCOL only changes what GET_PROTOCOL answers.
 *
 * Reports are queued by pressKeys/releaseAll/typeText and handed to interrupt IN transfers in order. With
 * nothing queued an IN stays pending; if an idle rate is set (SET_IDLE, default 500 ms as §7.2.4
 * recommends for keyboards) the current report is repeated once the idle period passes without a change.
 * Linux usbhid sets the idle rate to 0 (never repeat).
 */

import { EOVERFLOW, EPIPE, OK } from "../../urb/status.js";
import {
  DescriptorType,
  RECIPIENT_INTERFACE,
  RECIPIENT_MASK,
  REQUEST_DIR_IN,
  REQUEST_TYPE_CLASS,
  REQUEST_TYPE_MASK,
  type SetupPacket,
  UsbSpeed,
} from "../../usb/index.js";
import { InvalidOptionError } from "../../util/errors.js";
import { type DescriptorSpec, type EndpointLayout, hidDescriptor } from "./descriptors.js";
import { EmulatedDevice } from "./emulated-device.js";
import {
  EMULATED_BCD_DEVICE,
  EMULATED_MANUFACTURER,
  KEYBOARD_PRODUCT_ID,
  PID_CODES_VENDOR_ID,
} from "./ids.js";
import type { PendingTransfer } from "./pending-transfer.js";
import type { ControlReply } from "./standard-requests.js";
import { TransferQueue } from "./transfer-queue.js";

const HID_CLASS = 0x03;
const BOOT_SUBCLASS = 0x01;
const KEYBOARD_PROTOCOL = 0x01;
export const KEYBOARD_INTERFACE = 0;
export const KEYBOARD_ENDPOINT = 0x81;
export const INPUT_REPORT_SIZE = 8;
export const OUTPUT_REPORT_SIZE = 1;
export const KEYBOARD_INTERVAL_MS = 10;
const MAX_KEYS = 6;
/** HID Usage Tables, keyboard page: "ErrorRollOver", sent in every slot when too many keys are down. */
const USAGE_ERROR_ROLLOVER = 0x01;
/** Reports waiting for the host; typeText of a long string beyond this is refused, not buffered forever. */
export const MAX_QUEUED_REPORTS = 4096;
/** SET_IDLE duration unit (HID 1.11 §7.2.4): 4 ms. */
const IDLE_UNIT_MS = 4;
/** Recommended default idle rate for keyboards: 500 ms = 125 units. */
const DEFAULT_IDLE_UNITS = 125;
const LED_MASK = 0x1f;

/** HID class requests (HID 1.11 §7.2). */
export const HidRequest = {
  GET_REPORT: 0x01,
  GET_IDLE: 0x02,
  GET_PROTOCOL: 0x03,
  SET_REPORT: 0x09,
  SET_IDLE: 0x0a,
  SET_PROTOCOL: 0x0b,
} as const;

/** Report types in GET_REPORT/SET_REPORT wValue high byte. */
export const HidReportType = { INPUT: 1, OUTPUT: 2, FEATURE: 3 } as const;
export const HidProtocol = { BOOT: 0, REPORT: 1 } as const;

/** Modifier bits of the first input report byte. */
export const Modifier = {
  LEFT_CTRL: 0x01,
  LEFT_SHIFT: 0x02,
  LEFT_ALT: 0x04,
  LEFT_GUI: 0x08,
  RIGHT_CTRL: 0x10,
  RIGHT_SHIFT: 0x20,
  RIGHT_ALT: 0x40,
  RIGHT_GUI: 0x80,
} as const;

/** LED bits of the output report. */
export const Led = { NUM_LOCK: 0x01, CAPS_LOCK: 0x02, SCROLL_LOCK: 0x04, COMPOSE: 0x08, KANA: 0x10 } as const;

/**
 * The boot keyboard report descriptor of HID 1.11 Appendix B.1 (63 bytes): 8 modifier bits, a constant
 * byte, 5 LED bits + 3 padding bits of output, six 8-bit key array slots with usages 0..101.
 */
// biome-ignore format: one report item (tag, data) per line, with its meaning
export const BOOT_KEYBOARD_REPORT_DESCRIPTOR = Uint8Array.from([
  0x05, 0x01, // Usage Page (Generic Desktop)
  0x09, 0x06, // Usage (Keyboard)
  0xa1, 0x01, // Collection (Application)
  0x05, 0x07, //   Usage Page (Keyboard/Keypad)
  0x19, 0xe0, //   Usage Minimum (Left Control)
  0x29, 0xe7, //   Usage Maximum (Right GUI)
  0x15, 0x00, //   Logical Minimum (0)
  0x25, 0x01, //   Logical Maximum (1)
  0x75, 0x01, //   Report Size (1)
  0x95, 0x08, //   Report Count (8)
  0x81, 0x02, //   Input (Data, Variable, Absolute): modifier byte
  0x95, 0x01, //   Report Count (1)
  0x75, 0x08, //   Report Size (8)
  0x81, 0x01, //   Input (Constant): reserved byte
  0x95, 0x05, //   Report Count (5)
  0x75, 0x01, //   Report Size (1)
  0x05, 0x08, //   Usage Page (LEDs)
  0x19, 0x01, //   Usage Minimum (Num Lock)
  0x29, 0x05, //   Usage Maximum (Kana)
  0x91, 0x02, //   Output (Data, Variable, Absolute): LED report
  0x95, 0x01, //   Report Count (1)
  0x75, 0x03, //   Report Size (3)
  0x91, 0x01, //   Output (Constant): LED padding
  0x95, 0x06, //   Report Count (6)
  0x75, 0x08, //   Report Size (8)
  0x15, 0x00, //   Logical Minimum (0)
  0x25, 0x65, //   Logical Maximum (101)
  0x05, 0x07, //   Usage Page (Keyboard/Keypad)
  0x19, 0x00, //   Usage Minimum (0)
  0x29, 0x65, //   Usage Maximum (101)
  0x81, 0x00, //   Input (Data, Array): key array
  0xc0, // End Collection
]);

/** US layout: character → [usage id, needs shift]. */
const US_KEYMAP: ReadonlyMap<string, readonly [number, boolean]> = (() => {
  const map = new Map<string, readonly [number, boolean]>();
  const USAGE_A = 0x04;
  const USAGE_1 = 0x1e;
  for (let i = 0; i < 26; i++) {
    map.set(String.fromCharCode(0x61 + i), [USAGE_A + i, false]);
    map.set(String.fromCharCode(0x41 + i), [USAGE_A + i, true]);
  }
  const digits = "1234567890";
  const shiftedDigits = "!@#$%^&*()";
  for (let i = 0; i < digits.length; i++) {
    map.set(digits[i]!, [USAGE_1 + i, false]);
    map.set(shiftedDigits[i]!, [USAGE_1 + i, true]);
  }
  const named: [string, number, boolean][] = [
    ["\n", 0x28, false], // Enter
    ["\x1b", 0x29, false], // Escape
    ["\b", 0x2a, false], // Backspace
    ["\t", 0x2b, false],
    [" ", 0x2c, false],
  ];
  for (const [c, u, s] of named) map.set(c, [u, s]);
  // Punctuation keys 0x2d..0x38 (skipping 0x32, Non-US #), unshifted and shifted.
  const plain = "-=[]\\;'`,./";
  const shifted = '_+{}|:"~<>?';
  const usages = [0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38];
  for (let i = 0; i < plain.length; i++) {
    map.set(plain[i]!, [usages[i]!, false]);
    map.set(shifted[i]!, [usages[i]!, true]);
  }
  return map;
})();

export interface KeyboardOptions {
  /** Default full speed (as real keyboards); high speed makes it a dual-speed device. */
  readonly speed?: UsbSpeed;
  readonly serialNumber?: string;
  /** Called when the host changes the LEDs with SET_REPORT. */
  readonly onLedsChanged?: (leds: number) => void;
}

export interface LedState {
  readonly raw: number;
  readonly numLock: boolean;
  readonly capsLock: boolean;
  readonly scrollLock: boolean;
  readonly compose: boolean;
  readonly kana: boolean;
}

function keyboardSpec(speed: UsbSpeed, serialNumber: string): DescriptorSpec {
  return {
    deviceClass: 0,
    deviceSubClass: 0,
    deviceProtocol: 0,
    vendorId: PID_CODES_VENDOR_ID,
    productId: KEYBOARD_PRODUCT_ID,
    bcdDevice: EMULATED_BCD_DEVICE,
    manufacturer: EMULATED_MANUFACTURER,
    product: "usbvirt keyboard",
    serialNumber,
    dualSpeed: speed === UsbSpeed.HIGH,
    configurations: [
      {
        configurationValue: 1,
        maxPowerMa: 100,
        interfaces: [
          {
            interfaceNumber: KEYBOARD_INTERFACE,
            alternates: [
              {
                alternateSetting: 0,
                interfaceClass: HID_CLASS,
                interfaceSubClass: BOOT_SUBCLASS,
                interfaceProtocol: KEYBOARD_PROTOCOL,
                classDescriptors: [hidDescriptor(BOOT_KEYBOARD_REPORT_DESCRIPTOR.length)],
                endpoints: [
                  {
                    address: KEYBOARD_ENDPOINT,
                    type: "interrupt",
                    maxPacketSize: INPUT_REPORT_SIZE,
                    intervalMs: KEYBOARD_INTERVAL_MS,
                  },
                ],
              },
            ],
          },
        ],
      },
    ],
  };
}

/** Build an 8-byte input report; more than six keys is the ErrorRollOver report. */
export function inputReport(modifiers: number, keycodes: readonly number[]): Uint8Array {
  if (!Number.isInteger(modifiers) || modifiers < 0 || modifiers > 0xff)
    throw new InvalidOptionError(`keyboard: modifiers must be a byte, got ${modifiers}`);
  const report = new Uint8Array(INPUT_REPORT_SIZE);
  report[0] = modifiers;
  if (keycodes.length > MAX_KEYS) {
    report.fill(USAGE_ERROR_ROLLOVER, 2);
    return report;
  }
  keycodes.forEach((code, i) => {
    if (!Number.isInteger(code) || code < 0 || code > 0xff)
      throw new InvalidOptionError(`keyboard: key usage must be a byte, got ${code}`);
    report[2 + i] = code;
  });
  return report;
}

export class KeyboardDevice extends EmulatedDevice {
  private readonly queue: Uint8Array[] = [];
  private readonly pendingIn = new TransferQueue();
  private current: Uint8Array = new Uint8Array(INPUT_REPORT_SIZE);
  private leds = 0;
  private protocol: number = HidProtocol.REPORT;
  private idleUnits = DEFAULT_IDLE_UNITS;
  private lastSentAt = performance.now();
  private readonly onLedsChanged: ((leds: number) => void) | undefined;

  constructor(options: KeyboardOptions = {}) {
    const speed = options.speed ?? UsbSpeed.FULL;
    super(keyboardSpec(speed, options.serialNumber ?? "USBVIRT-KBD-0001"), {
      speed,
      name: "usbvirt keyboard",
    });
    this.onLedsChanged = options.onLedsChanged;
  }

  /** Queue a report with these modifiers and keys down (replacing whatever was down). */
  pressKeys(modifiers: number, keycodes: readonly number[]): void {
    this.enqueue([inputReport(modifiers, keycodes)]);
  }

  /** Queue the all-keys-up report. */
  releaseAll(): void {
    this.enqueue([inputReport(0, [])]);
  }

  /** Queue press + release reports typing `text` on a US layout; throws for characters it cannot type. */
  typeText(text: string): void {
    const reports: Uint8Array[] = [];
    for (const ch of text) {
      const key = US_KEYMAP.get(ch);
      if (key === undefined) throw new InvalidOptionError(`keyboard: cannot type ${JSON.stringify(ch)}`);
      reports.push(inputReport(key[1] ? Modifier.LEFT_SHIFT : 0, [key[0]]), inputReport(0, []));
    }
    this.enqueue(reports);
  }

  /** The LEDs the host last set. */
  ledState(): LedState {
    const raw = this.leds;
    return {
      raw,
      numLock: (raw & Led.NUM_LOCK) !== 0,
      capsLock: (raw & Led.CAPS_LOCK) !== 0,
      scrollLock: (raw & Led.SCROLL_LOCK) !== 0,
      compose: (raw & Led.COMPOSE) !== 0,
      kana: (raw & Led.KANA) !== 0,
    };
  }

  /** Reports queued and not yet read by the host. */
  get queuedReports(): number {
    return this.queue.length;
  }

  protected override handleTransfer(t: PendingTransfer, _ep: EndpointLayout): void {
    this.pendingIn.push(t);
    this.serve();
  }

  protected override interfaceDescriptor(
    interfaceNumber: number,
    type: number,
    _index: number,
  ): Uint8Array | null {
    if (interfaceNumber !== KEYBOARD_INTERFACE) return null;
    if (type === DescriptorType.HID_REPORT) return BOOT_KEYBOARD_REPORT_DESCRIPTOR;
    if (type === DescriptorType.HID) return hidDescriptor(BOOT_KEYBOARD_REPORT_DESCRIPTOR.length);
    return null;
  }

  protected override handleClassOrVendorRequest(setup: SetupPacket, data: Uint8Array): ControlReply {
    if ((setup.bmRequestType & REQUEST_TYPE_MASK) !== REQUEST_TYPE_CLASS) return EPIPE;
    if ((setup.bmRequestType & RECIPIENT_MASK) !== RECIPIENT_INTERFACE) return EPIPE;
    if ((setup.wIndex & 0xff) !== KEYBOARD_INTERFACE) return EPIPE;
    const directionIn = (setup.bmRequestType & REQUEST_DIR_IN) !== 0;
    const reportType = setup.wValue >> 8;
    switch (setup.bRequest) {
      case HidRequest.GET_REPORT:
        if (!directionIn) return EPIPE;
        if (reportType === HidReportType.INPUT) return this.current;
        if (reportType === HidReportType.OUTPUT) return Uint8Array.of(this.leds);
        return EPIPE;
      case HidRequest.SET_REPORT:
        if (directionIn || reportType !== HidReportType.OUTPUT || data.length < OUTPUT_REPORT_SIZE)
          return EPIPE;
        this.setLeds(data[0]! & LED_MASK);
        return OK;
      case HidRequest.GET_IDLE:
        return directionIn ? Uint8Array.of(this.idleUnits) : EPIPE;
      case HidRequest.SET_IDLE:
        if (directionIn) return EPIPE;
        this.idleUnits = setup.wValue >> 8;
        this.rescheduleIdle();
        return OK;
      case HidRequest.GET_PROTOCOL:
        return directionIn ? Uint8Array.of(this.protocol) : EPIPE;
      case HidRequest.SET_PROTOCOL:
        if (directionIn || (setup.wValue !== HidProtocol.BOOT && setup.wValue !== HidProtocol.REPORT))
          return EPIPE;
        this.protocol = setup.wValue;
        return OK;
      default:
        return EPIPE;
    }
  }

  protected override onConfigurationChanged(value: number): void {
    // HID 1.11 §7.2.6: a device comes out of reset in report protocol; the idle rate starts afresh too.
    if (value === 0) {
      this.protocol = HidProtocol.REPORT;
      this.idleUnits = DEFAULT_IDLE_UNITS;
    }
    this.lastSentAt = performance.now();
  }

  private setLeds(leds: number): void {
    const changed = leds !== this.leds;
    this.leds = leds;
    if (changed) this.onLedsChanged?.(leds);
  }

  private enqueue(reports: readonly Uint8Array[]): void {
    if (this.queue.length + reports.length > MAX_QUEUED_REPORTS)
      throw new InvalidOptionError(`keyboard: more than ${MAX_QUEUED_REPORTS} reports queued`);
    this.queue.push(...reports);
    this.serve();
  }

  /** Hand queued reports to pending INs; then arm the idle repeat on the next pending IN. */
  private serve(): void {
    for (let i = 0; i < MAX_QUEUED_REPORTS && this.queue.length > 0; i++) {
      const t = this.pendingIn.shift();
      if (t === undefined) break;
      this.current = this.queue.shift()!;
      this.send(t, this.current);
    }
    this.rescheduleIdle();
  }

  private rescheduleIdle(): void {
    const head = this.pendingIn.peek();
    if (head === undefined) return;
    if (this.idleUnits === 0 || this.queue.length > 0) {
      head.clearTimer();
      return;
    }
    const due = this.lastSentAt + this.idleUnits * IDLE_UNIT_MS;
    head.after(Math.max(0, due - performance.now()), () => {
      this.pendingIn.shift();
      this.send(head, this.current);
      this.rescheduleIdle();
    });
  }

  private send(t: PendingTransfer, report: Uint8Array): void {
    this.lastSentAt = performance.now();
    const n = Math.min(report.length, t.buffer.length);
    t.buffer.set(report.subarray(0, n));
    // A buffer shorter than the 8-byte report cannot take the packet: babble.
    if (n < report.length) t.fail(EOVERFLOW, n);
    else t.ok(n);
  }
}
