/** Shared set-up of the USB/IP tests: a server on 127.0.0.1 with an ephemeral port, clients, a minimal USB core. */
import type { DeviceSpec } from "../../src/devices/spec.js";
import { parseConfiguration } from "../../src/guest/guest-driver.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { encodeSetup, type SetupPacket } from "../../src/usb/index.js";
import { type SubmitResult, UsbipClient } from "../../src/usbip/client.js";
import { UsbipServer, type UsbipServerOptions } from "../../src/usbip-server/server.js";

export const DEFAULT_DEVICES: DeviceSpec[] = [
  { kind: "emulated", name: "loopback" },
  { kind: "emulated", name: "keyboard" },
  { kind: "emulated", name: "storage", options: { sizeBytes: 4 * 1024 * 1024 } },
];

export interface TestServer {
  readonly server: UsbipServer;
  readonly log: CollectingLogger;
  readonly port: number;
  connect(): Promise<UsbipClient>;
  /** Connect and import `busid`. */
  imported(busid: string): Promise<UsbipClient>;
  close(): Promise<void>;
}

export async function startServer(options: Partial<UsbipServerOptions> = {}): Promise<TestServer> {
  const log = new CollectingLogger();
  const server = await UsbipServer.start({
    devices: DEFAULT_DEVICES,
    port: 0,
    logger: log,
    guestMemoryMiB: 32,
    ...options,
  });
  const port = server.address.port;
  const clients: UsbipClient[] = [];
  const connect = async () => {
    const c = await UsbipClient.connect({ host: "127.0.0.1", port });
    clients.push(c);
    return c;
  };
  return {
    server,
    log,
    port,
    connect,
    async imported(busid) {
      const c = await connect();
      await c.import(busid);
      return c;
    },
    async close() {
      for (const c of clients) c.close();
      await server.close();
    },
  };
}

export async function control(
  client: UsbipClient,
  setup: SetupPacket,
  data?: Uint8Array,
): Promise<SubmitResult> {
  const directionIn = (setup.bmRequestType & 0x80) !== 0;
  return await client.submit({
    ep: 0,
    directionIn,
    setup: encodeSetup(setup),
    ...(directionIn ? { length: setup.wLength } : { data: data ?? new Uint8Array(0) }),
  }).done;
}

export async function checkedControl(
  client: UsbipClient,
  setup: SetupPacket,
  data?: Uint8Array,
): Promise<Uint8Array> {
  const r = await control(client, setup, data);
  if (r.status !== 0) throw new Error(`control 0x${setup.bRequest.toString(16)} failed: ${r.status}`);
  return r.data;
}

export async function getDescriptor(
  client: UsbipClient,
  type: number,
  index: number,
  length: number,
  lang = 0,
) {
  return await checkedControl(client, {
    bmRequestType: 0x80,
    bRequest: 6,
    wValue: (type << 8) | index,
    wIndex: lang,
    wLength: length,
  });
}

/** What vhci's USB core does after import: device descriptor, configuration, SET_CONFIGURATION. */
export async function enumerate(client: UsbipClient) {
  const head = await getDescriptor(client, 1, 0, 8);
  const dev = await getDescriptor(client, 1, 0, 18);
  const configHead = await getDescriptor(client, 2, 0, 9);
  const total = configHead[2]! | (configHead[3]! << 8);
  const config = await getDescriptor(client, 2, 0, total);
  const parsed = parseConfiguration(config);
  await checkedControl(client, {
    bmRequestType: 0,
    bRequest: 9,
    wValue: parsed.value,
    wIndex: 0,
    wLength: 0,
  });
  const strIndex = dev[15]!;
  let product = "";
  if (strIndex !== 0) {
    const s = await getDescriptor(client, 3, strIndex, 255, 0x0409);
    product = Buffer.from(s.subarray(2, s[0])).toString("utf16le");
  }
  return {
    maxPacketSize0: head[7]!,
    vendorId: dev[8]! | (dev[9]! << 8),
    productId: dev[10]! | (dev[11]! << 8),
    configuration: parsed.value,
    interfaces: parsed.interfaces,
    product,
  };
}

export async function bulkOut(client: UsbipClient, ep: number, data: Uint8Array): Promise<SubmitResult> {
  return await client.submit({ ep, directionIn: false, data }).done;
}

export async function bulkIn(client: UsbipClient, ep: number, length: number): Promise<SubmitResult> {
  return await client.submit({ ep, directionIn: true, length }).done;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
