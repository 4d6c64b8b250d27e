/**
 * Child process under umockdev-run: list host devices through libusb, select
 * the fake one, and check on the device itself that a bulk IN lands straight
 * in a SharedArrayBuffer (zero copy) without touching the bytes around it.
 * Prints one line `VERDICT <json>`.
 */
import {
  HostUsbDevice,
  listHostDevices,
  parseSelector,
  passesFilter,
} from "../../../src/devices/host/index.js";
import { exitWithVerdictOf } from "../../support/verdict.js";

async function main(): Promise<Record<string, unknown>> {
  const list = await listHostDevices();
  const selected = list.filter((d) =>
    passesFilter(d, { allow: [parseSelector("1209:7301")], deny: [parseSelector("serial=nope")] }),
  );
  const device = new HostUsbDevice(parseSelector("1-1"), { log: () => undefined });
  await device.open();
  const sab = new SharedArrayBuffer(4096);
  const all = new Uint8Array(sab);
  all.fill(0xee);
  const view = new Uint8Array(sab, 1000, 64);
  const result = await new Promise<{ status: number; actualLength: number }>((resolve) => {
    device.submit(
      {
        kind: "bulk",
        endpoint: 1,
        directionIn: true,
        setup: null,
        buffer: view,
        shortNotOk: false,
        zeroPacket: false,
        interval: 0,
        isoPackets: null,
        streamId: 0,
      },
      resolve,
    );
  });
  const iso = await new Promise<{ status: number }>((resolve) => {
    device.submit(
      {
        kind: "isochronous",
        endpoint: 1,
        directionIn: true,
        setup: null,
        buffer: view,
        shortNotOk: false,
        zeroPacket: false,
        interval: 1,
        isoPackets: [{ offset: 0, length: 8 }],
        streamId: 0,
      },
      resolve,
    );
  });
  const stats = { ...device.stats };
  await device.close();
  return {
    list,
    selected: selected.map((d) => d.portPath),
    info: {
      name: device.info.name,
      speed: device.info.speed,
      configBytes: device.info.configurations[0]?.length,
    },
    result,
    inPlace: Buffer.from(view).toString("hex"),
    canaryBefore: all[999],
    canaryAfter: all[1064],
    iso: iso.status,
    stats,
  };
}

exitWithVerdictOf(main(), 20_000);
