/**
 * What an interactive umockdev testbed needs, shared by the host tests (test/host) and the iso bench
 * (bench/iso.ts): the `*.umockdev` description of a fake USB device (udev properties, sysfs attributes
 * and the raw `descriptors` file, in umockdev-record's format), and a Python 3 with umockdev's GObject
 * introspection to run the testbed scripts (test/host/children/*.py, bench/python/iso-testbed.py), which
 * run themselves under umockdev-wrapper.
 */
import { spawnSync } from "node:child_process";

export const TESTBED_INSTALL = "apt-get install umockdev gir1.2-umockdev-1.0 python3-gi";

export interface FakeUsbDevice {
  /** Sysfs path, e.g. /devices/pci0000:00/0000:00:14.0/usb1/1-1. Its last part is the bus-port name. */
  readonly sysfsPath: string;
  readonly busnum: number;
  readonly devnum: number;
  /** Mbit/s as sysfs `speed` says it: 1.5, 12, 480, 5000. */
  readonly speedMbps: number;
  readonly deviceDescriptor: Uint8Array;
  /** The configuration descriptor sets, in index order (configuration 1 first; more when the device has more). */
  readonly configuration: Uint8Array;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** The `*.umockdev` text for one device (format of umockdev-record). */
export function umockdevDescription(d: FakeUsbDevice): string {
  const node = `bus/usb/${String(d.busnum).padStart(3, "0")}/${String(d.devnum).padStart(3, "0")}`;
  const dd = d.deviceDescriptor;
  const word = (at: number) => (dd[at]! | (dd[at + 1]! << 8)).toString(16).padStart(4, "0");
  return [
    `P: ${d.sysfsPath}`,
    `N: ${node}`,
    `E: DEVNAME=/dev/${node}`,
    "E: SUBSYSTEM=usb",
    "E: DEVTYPE=usb_device",
    `E: PRODUCT=${parseInt(word(8), 16).toString(16)}/${parseInt(word(10), 16).toString(16)}/${parseInt(word(12), 16).toString(16)}`,
    `E: BUSNUM=${String(d.busnum).padStart(3, "0")}`,
    `E: DEVNUM=${String(d.devnum).padStart(3, "0")}`,
    `A: busnum=${d.busnum}\\n`,
    `A: devnum=${d.devnum}\\n`,
    `A: speed=${d.speedMbps}\\n`,
    "A: bConfigurationValue=1\\n",
    `A: bNumConfigurations=${dd[17]}\\n`,
    `A: idVendor=${word(8)}\\n`,
    `A: idProduct=${word(10)}\\n`,
    `H: descriptors=${hex(dd)}${hex(d.configuration)}`,
    "",
  ].join("\n");
}

/** Exits 3 when umockdev-wrapper is not on the PATH, non-zero otherwise when umockdev's introspection is missing. */
const PROBE = [
  "import shutil, sys, gi",
  "gi.require_version('UMockdev', '1.0')",
  "from gi.repository import UMockdev",
  "sys.exit(0 if shutil.which('umockdev-wrapper') else 3)",
].join("\n");

/**
 * The Python that runs the testbeds (Debian's first: one earlier on the PATH, a pyenv's, rarely has
 * python3-gi), or why there is none, with the install step.
 */
export function testbedPython(): { readonly python: string } | { readonly reason: string } {
  for (const python of ["/usr/bin/python3", "python3"]) {
    const r = spawnSync(python, ["-B", "-c", PROBE], { stdio: "ignore" });
    if (r.status === 0) return { python };
    if (r.status === 3) return { reason: `umockdev-wrapper is not installed (${TESTBED_INSTALL})` };
  }
  return { reason: `python3 with umockdev's introspection data is not installed (${TESTBED_INSTALL})` };
}
