/**
 * Host hotplug through libusb (node-usb's usb.on('attach' / 'detach')): each
 * event carries the device's identity (vid, pid, bus, port path), filtered by
 * allow / deny selectors. Strings (serial) are read for attaches only when the
 * filter needs them. The watcher does not keep the process alive.
 */
import { describeDevice, describeWithStrings, type HostDeviceInfo } from "./enumerate.js";
import { loadLibusb } from "./libusb.js";
import { type HostFilter, passesFilter } from "./select.js";

export interface HotplugEvent {
  readonly type: "attach" | "detach";
  readonly device: HostDeviceInfo;
}

function needsSerial(filter: HostFilter): boolean {
  return [...(filter.allow ?? []), ...(filter.deny ?? [])].some((s) => s.serial !== undefined);
}

export class HostHotplugWatcher {
  private unsubscribe: (() => void) | null = null;

  constructor(
    private readonly listener: (event: HotplugEvent) => void,
    private readonly filter: HostFilter = {},
    /** Read strings (the serial) on attach even when the filter does not need them. */
    private readonly options: { readonly strings?: boolean } = {},
  ) {}

  /** Start watching. Throws LibusbUnavailableError when libusb cannot be used. */
  start(): void {
    if (this.unsubscribe !== null) return;
    const lib = loadLibusb();
    const serial = this.options.strings === true || needsSerial(this.filter);
    this.unsubscribe = lib.onHotplug((type, d) => {
      void (async () => {
        const info = type === "attach" && serial ? await describeWithStrings(d) : describeDevice(d);
        // A detach cannot read strings any more: a serial-only filter is judged on what is known.
        if (type === "detach" || passesFilter(info, this.filter)) this.listener({ type, device: info });
      })();
    });
    lib.unrefHotplug();
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }
}
