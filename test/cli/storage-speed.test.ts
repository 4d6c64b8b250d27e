/**
 * `--storage-speed` (and the `storageSpeed` key) reach the emulated storage of both servers: over USB/IP the
 * device record says USB_SPEED_SUPER (5), over usbredir device_connect says super; without it the disk is
 * high speed, as before.
 */
import { describe, expect, it } from "vitest";
import { UsbipClient } from "../../src/usbip/client.js";
import { UsbipSpeed } from "../../src/usbip/protocol.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { RedirSpeed } from "../../src/usbredir/protocol.js";
import { redirectInProcess, serveInProcess } from "./helpers.js";

async function recordSpeed(args: readonly string[]): Promise<number | undefined> {
  const s = await serveInProcess(["--device", "storage", "--storage-size", "1M", ...args]);
  try {
    const client = await UsbipClient.connect({ host: "127.0.0.1", port: s.server.address.port });
    const [disk] = await client.devlist();
    client.close();
    return disk?.speed;
  } finally {
    await s.stop();
  }
}

describe("--storage-speed", () => {
  it("serve: super gives record speed 5, full 2, and the default stays high (3)", async () => {
    expect(await recordSpeed(["--storage-speed", "super"])).toBe(UsbipSpeed.SUPER);
    expect(await recordSpeed(["--storage-speed", "full"])).toBe(UsbipSpeed.FULL);
    expect(await recordSpeed([])).toBe(UsbipSpeed.HIGH);
  });

  it("redirect: super is announced to the VMM as device_connect speed super", async () => {
    const r = redirectInProcess([
      "--device",
      "storage",
      "--storage-size",
      "1M",
      "--storage-speed",
      "super",
      "--listen",
      "0",
    ]);
    const server = await r.ready;
    const client = await UsbredirClient.connect(server.address!.port);
    try {
      expect(client.device).toMatchObject({ productId: 0x0003, speed: RedirSpeed.SUPER });
    } finally {
      client.close();
      await r.stop();
    }
  });
});
