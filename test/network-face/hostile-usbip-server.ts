/**
 * A USB/IP server the attacker runs: it exports one device whose descriptors it makes up (its strings are
 * the test's, escapes and all), answers OP_REQ_DEVLIST and OP_REQ_IMPORT, then every CMD_SUBMIT on
 * endpoint 0 as a plain USB device would (GET_DESCRIPTOR from its tables, anything else succeeds with no
 * data) and every CMD_UNLINK with 0. Enough for `usbvirt attach` and `list --remote` to take it at its word.
 */
import { createServer, type Server, type Socket } from "node:net";
import type { DeviceRecord } from "../../src/usbip/device-record.js";
import { encodeDevlistReply, encodeImportReply } from "../../src/usbip/management-pdus.js";
import { OpStatus } from "../../src/usbip/protocol.js";
import { encodeRetSubmit, encodeRetUnlink } from "../../src/usbip/urb-pdus.js";

export interface HostileDevice {
  readonly busid: string;
  readonly manufacturer: string;
  readonly product: string;
  readonly serial: string;
}

function stringDescriptor(text: string): Buffer {
  const utf16 = Buffer.from(text, "utf16le").subarray(0, 252);
  return Buffer.concat([Buffer.from([2 + utf16.length, 3]), utf16]);
}

export class HostileUsbipServer {
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(device: HostileDevice): Promise<HostileUsbipServer> {
    const record: DeviceRecord = {
      path: "/sys/devices/hostile",
      busid: device.busid,
      busnum: 1,
      devnum: 1,
      speed: 2,
      idVendor: 0x1209,
      idProduct: 0x0bad,
      bcdDevice: 0x100,
      bDeviceClass: 0,
      bDeviceSubClass: 0,
      bDeviceProtocol: 0,
      bConfigurationValue: 1,
      bNumConfigurations: 1,
      interfaces: [{ cls: 0xff, subclass: 0, protocol: 0 }],
    };
    const descriptors = new Map<number, Buffer>([
      [0x0100, Buffer.from([18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0xad, 0x0b, 0x00, 0x01, 1, 2, 3, 1])],
      [0x0200, Buffer.from([9, 2, 18, 0, 1, 1, 0, 0x80, 50, 9, 4, 0, 0, 0, 0xff, 0, 0, 0])],
      [0x0300, Buffer.from([4, 3, 0x09, 0x04])],
      [0x0301, stringDescriptor(device.manufacturer)],
      [0x0302, stringDescriptor(device.product)],
      [0x0303, stringDescriptor(device.serial)],
    ]);
    const server = createServer((socket) => serve(socket, record, descriptors));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return new HostileUsbipServer(server, (server.address() as { port: number }).port);
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

function serve(socket: Socket, record: DeviceRecord, descriptors: ReadonlyMap<number, Buffer>): void {
  socket.on("error", () => undefined);
  let buffered = Buffer.alloc(0);
  let imported = false;
  socket.on("data", (d: Buffer) => {
    buffered = Buffer.concat([buffered, d]);
    for (;;) {
      if (!imported) {
        if (buffered.length < 8) return;
        const code = buffered.readUInt16BE(2);
        if (code === 0x8005) {
          buffered = buffered.subarray(8);
          socket.end(encodeDevlistReply([record]));
          return;
        }
        if (buffered.length < 40) return;
        buffered = buffered.subarray(40);
        socket.write(encodeImportReply(OpStatus.OK, record));
        imported = true;
        continue;
      }
      if (buffered.length < 48) return;
      const command = buffered.readUInt32BE(0);
      const seqnum = buffered.readUInt32BE(4);
      const devid = buffered.readUInt32BE(8);
      const directionIn = buffered.readUInt32BE(12) === 1;
      const ep = buffered.readUInt32BE(16);
      if (command === 2) {
        buffered = buffered.subarray(48);
        socket.write(encodeRetUnlink({ seqnum, devid, directionIn, ep, status: 0 }));
        continue;
      }
      const length = buffered.readInt32BE(24);
      const outBytes = directionIn ? 0 : Math.max(0, length);
      if (buffered.length < 48 + outBytes) return;
      const setup = buffered.subarray(40, 48);
      buffered = buffered.subarray(48 + outBytes);
      let data: Uint8Array = new Uint8Array(0);
      if (directionIn && setup[1] === 6) {
        const d = descriptors.get(setup.readUInt16LE(2));
        if (d !== undefined) data = d.subarray(0, Math.min(d.length, setup.readUInt16LE(6), length));
      } else if (directionIn && setup[1] === 0) {
        data = new Uint8Array(Math.min(2, length));
      }
      socket.write(
        encodeRetSubmit({
          seqnum,
          devid,
          directionIn,
          ep,
          status: 0,
          actualLength: directionIn ? data.length : outBytes,
          startFrame: 0,
          numberOfPackets: 0,
          errorCount: 0,
          data,
          iso: [],
        }),
      );
    }
  });
}
