/** The USB/IP codec: round trips, exact byte layout, and the frame readers against cut, oversized and garbage input. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ECONNRESET, EPIPE, ESHUTDOWN } from "../../src/urb/status.js";
import type { DeviceRecord } from "../../src/usbip/device-record.js";
import {
  encodeDevlistReply,
  encodeDevlistRequest,
  encodeImportReply,
  encodeImportRequest,
  readOpReply,
  readOpRequest,
} from "../../src/usbip/management-pdus.js";
import {
  DEVICE_RECORD_SIZE,
  MAX_TRANSFER_LENGTH,
  OpStatus,
  URB_HEADER_SIZE,
} from "../../src/usbip/protocol.js";
import { statusFromUsbip } from "../../src/usbip/status-and-speed.js";
import {
  type CmdSubmit,
  encodeCmdSubmit,
  encodeCmdUnlink,
  encodeRetSubmit,
  encodeRetUnlink,
  readClientPdu,
  readServerPdu,
} from "../../src/usbip/urb-pdus.js";
import { ByteQueue } from "../../src/util/byte-queue.js";

const record: DeviceRecord = {
  path: "/sys/devices/usbvirt/usb1/1-1",
  busid: "1-1",
  busnum: 1,
  devnum: 2,
  speed: 3,
  idVendor: 0x1209,
  idProduct: 0x0001,
  bcdDevice: 0x0100,
  bDeviceClass: 0,
  bDeviceSubClass: 0,
  bDeviceProtocol: 0,
  bConfigurationValue: 1,
  bNumConfigurations: 2,
  interfaces: [
    { cls: 0xff, subclass: 0, protocol: 0 },
    { cls: 3, subclass: 1, protocol: 1 },
  ],
};

function queueOf(...chunks: Uint8Array[]): ByteQueue {
  const q = new ByteQueue();
  for (const c of chunks) q.push(c);
  return q;
}

const submit: Omit<CmdSubmit, "command"> = {
  seqnum: 7,
  devid: 0x10002,
  directionIn: false,
  ep: 1,
  transferFlags: 0,
  transferBufferLength: 5,
  startFrame: 0,
  numberOfPackets: -1,
  interval: 0,
  setup: new Uint8Array(8),
  data: Uint8Array.of(1, 2, 3, 4, 5),
  iso: [],
};

describe("management PDUs", () => {
  it("devlist request is the 8-byte header, big-endian", () => {
    expect([...encodeDevlistRequest()]).toEqual([0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0]);
  });

  it("device record is 312 bytes with fields at the documented offsets", () => {
    const reply = encodeDevlistReply([record]);
    expect(reply.length).toBe(8 + 4 + DEVICE_RECORD_SIZE + 2 * 4);
    const v = new DataView(reply.buffer);
    expect(v.getUint16(2)).toBe(0x0005);
    expect(v.getUint32(8)).toBe(1);
    const at = 12;
    expect(new TextDecoder().decode(reply.subarray(at + 256, at + 259))).toBe("1-1");
    expect(reply[at + 259]).toBe(0);
    expect(v.getUint32(at + 288)).toBe(1);
    expect(v.getUint32(at + 292)).toBe(2);
    expect(v.getUint32(at + 296)).toBe(3);
    expect(v.getUint16(at + 300)).toBe(0x1209);
    expect(reply[at + 311]).toBe(2);
    expect([...reply.subarray(at + 312, at + 320)]).toEqual([0xff, 0, 0, 0, 3, 1, 1, 0]);
  });

  it("devlist reply round-trips, also when split byte by byte", () => {
    const bytes = encodeDevlistReply([record, { ...record, busid: "1-2", devnum: 3, interfaces: [] }]);
    const q = new ByteQueue();
    let result: ReturnType<typeof readOpReply> = { kind: "need" };
    for (let i = 0; i < bytes.length; i++) {
      q.push(bytes.subarray(i, i + 1));
      result = readOpReply(q, "devlist");
      if (i < bytes.length - 1) expect(result.kind).toBe("need");
    }
    expect(result.kind).toBe("frame");
    if (result.kind !== "frame" || result.frame.op !== "devlist") throw new Error("no devlist");
    expect(result.frame.devices).toEqual([record, { ...record, busid: "1-2", devnum: 3, interfaces: [] }]);
    expect(q.length).toBe(0);
  });

  it("import: request, accepted reply with the record, refused reply is the header alone", () => {
    const req = readOpRequest(queueOf(encodeImportRequest("1-2")));
    expect(req).toEqual({ kind: "frame", frame: { op: "import", busid: "1-2", busidValid: true } });
    const ok = readOpReply(queueOf(encodeImportReply(OpStatus.OK, record)), "import");
    expect(ok.kind === "frame" && ok.frame.op === "import" && ok.frame.device?.busid).toBe("1-1");
    const busy = encodeImportReply(OpStatus.DEV_BUSY, record);
    expect(busy.length).toBe(8);
    expect(readOpReply(queueOf(busy), "import")).toEqual({
      kind: "frame",
      frame: { op: "import", status: 2, device: null },
    });
  });

  it("bad version and unknown codes are malformed", () => {
    const bad = encodeDevlistRequest();
    bad[1] = 0x06;
    expect(readOpRequest(queueOf(bad)).kind).toBe("malformed");
    const unknown = encodeDevlistRequest();
    unknown[3] = 0x77;
    expect(readOpRequest(queueOf(unknown)).kind).toBe("malformed");
    expect(readOpRequest(queueOf(encodeDevlistRequest().subarray(0, 5))).kind).toBe("need");
  });
});

describe("URB PDUs", () => {
  it("CMD_SUBMIT round-trips with OUT data, across chunk boundaries", () => {
    const bytes = encodeCmdSubmit(submit);
    expect(bytes.length).toBe(URB_HEADER_SIZE + 5);
    const q = queueOf(bytes.subarray(0, 30), bytes.subarray(30, 50), bytes.subarray(50));
    const r = readClientPdu(q);
    expect(r.kind).toBe("frame");
    if (r.kind !== "frame" || r.frame.command !== "submit") throw new Error("no submit");
    expect([...r.frame.data]).toEqual([1, 2, 3, 4, 5]);
    expect(r.frame.seqnum).toBe(7);
    expect(r.frame.devid).toBe(0x10002);
    expect(r.frame.numberOfPackets).toBe(-1);
  });

  it("non-iso number_of_packets may be 0 or 0xffffffff; iso descriptors follow the data", () => {
    const zero = encodeCmdSubmit({ ...submit, numberOfPackets: 0 });
    const r0 = readClientPdu(queueOf(zero));
    expect(r0.kind === "frame" && r0.frame.command === "submit" && r0.frame.iso.length).toBe(0);
    const iso = encodeCmdSubmit({
      ...submit,
      transferBufferLength: 8,
      data: new Uint8Array(8).fill(9),
      numberOfPackets: 2,
      iso: [
        { offset: 0, length: 4, actualLength: 0, status: 0 },
        { offset: 4, length: 4, actualLength: 0, status: 0 },
      ],
    });
    expect(iso.length).toBe(48 + 8 + 32);
    const r = readClientPdu(queueOf(iso));
    if (r.kind !== "frame" || r.frame.command !== "submit") throw new Error("no submit");
    expect(r.frame.iso.map((d) => d.offset)).toEqual([0, 4]);
    expect(r.frame.numberOfPackets).toBe(2);
  });

  it("CMD_UNLINK, RET_SUBMIT (IN data) and RET_UNLINK round-trip", () => {
    const unlink = readClientPdu(
      queueOf(encodeCmdUnlink({ seqnum: 9, devid: 1, directionIn: false, ep: 0, unlinkSeqnum: 7 })),
    );
    expect(unlink.kind === "frame" && unlink.frame.command === "unlink" && unlink.frame.unlinkSeqnum).toBe(7);
    const ret = encodeRetSubmit({
      seqnum: 7,
      devid: 0,
      directionIn: false,
      ep: 0,
      status: 0,
      actualLength: 3,
      startFrame: 0,
      numberOfPackets: 0,
      errorCount: 0,
      data: Uint8Array.of(7, 8, 9),
      iso: [],
    });
    const r = readServerPdu(queueOf(ret), () => ({ directionIn: true, transferBufferLength: 64 }));
    expect(r.kind === "frame" && r.frame.command === "ret-submit" && [...r.frame.data]).toEqual([7, 8, 9]);
    const ru = readServerPdu(
      queueOf(encodeRetUnlink({ seqnum: 9, devid: 0, directionIn: false, ep: 0, status: -104 })),
      () => undefined,
    );
    expect(ru.kind === "frame" && ru.frame.command === "ret-unlink" && ru.frame.status).toBe(-104);
  });

  it("client-side reader drops a RET_SUBMIT for an unknown seqnum or longer than asked", () => {
    const ret = encodeRetSubmit({
      seqnum: 1,
      devid: 0,
      directionIn: false,
      ep: 0,
      status: 0,
      actualLength: 4,
      startFrame: 0,
      numberOfPackets: 0,
      errorCount: 0,
      data: new Uint8Array(4),
      iso: [],
    });
    expect(readServerPdu(queueOf(ret), () => undefined).kind).toBe("malformed");
    expect(readServerPdu(queueOf(ret), () => ({ directionIn: true, transferBufferLength: 2 })).kind).toBe(
      "malformed",
    );
  });

  it("limits: length over 4 MiB, negative length, too many packets, unknown command, bad direction", () => {
    const over = encodeCmdSubmit(submit);
    new DataView(over.buffer).setInt32(24, MAX_TRANSFER_LENGTH + 1);
    expect(readClientPdu(queueOf(over)).kind).toBe("malformed");
    const negative = encodeCmdSubmit(submit);
    new DataView(negative.buffer).setInt32(24, -5);
    expect(readClientPdu(queueOf(negative)).kind).toBe("malformed");
    const packets = encodeCmdSubmit(submit);
    new DataView(packets.buffer).setInt32(32, 1025);
    expect(readClientPdu(queueOf(packets)).kind).toBe("malformed");
    const unknown = encodeCmdSubmit(submit);
    new DataView(unknown.buffer).setUint32(0, 9);
    expect(readClientPdu(queueOf(unknown)).kind).toBe("malformed");
    const dir = encodeCmdSubmit(submit);
    new DataView(dir.buffer).setUint32(12, 2);
    expect(readClientPdu(queueOf(dir)).kind).toBe("malformed");
  });

  it("a maximal OUT header waits for its data without buffering beyond the limit", () => {
    const header = encodeCmdSubmit({ ...submit, data: new Uint8Array(0), transferBufferLength: 0 });
    new DataView(header.buffer).setInt32(24, MAX_TRANSFER_LENGTH);
    const q = queueOf(header);
    expect(readClientPdu(q).kind).toBe("need");
    q.push(new Uint8Array(MAX_TRANSFER_LENGTH));
    const r = readClientPdu(q);
    expect(r.kind === "frame" && r.frame.command === "submit" && r.frame.data.length).toBe(
      MAX_TRANSFER_LENGTH,
    );
  });

  it("property: any prefix of a valid stream is 'need' then frames; random bytes never throw", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            seqnum: fc.nat(),
            directionIn: fc.boolean(),
            ep: fc.integer({ min: 0, max: 15 }),
            data: fc.uint8Array({ maxLength: 300 }),
            packets: fc.integer({ min: 0, max: 4 }),
          }),
          { minLength: 1, maxLength: 5 },
        ),
        fc.integer({ min: 1, max: 97 }),
        (cmds, chunk) => {
          const frames = cmds.map((c) =>
            encodeCmdSubmit({
              ...submit,
              seqnum: c.seqnum,
              directionIn: c.directionIn,
              ep: c.ep,
              transferBufferLength: c.data.length,
              data: c.data,
              numberOfPackets: c.packets === 0 ? -1 : c.packets,
              iso: Array.from({ length: c.packets }, (_, i) => ({
                offset: i,
                length: 1,
                actualLength: 0,
                status: 0,
              })),
            }),
          );
          const stream = Buffer.concat(frames);
          const q = new ByteQueue();
          const got: number[] = [];
          for (let at = 0; at < stream.length; at += chunk) {
            q.push(stream.subarray(at, at + chunk));
            for (;;) {
              const r = readClientPdu(q);
              if (r.kind === "malformed") throw new Error(r.reason);
              if (r.kind === "need") break;
              got.push(r.frame.seqnum);
            }
          }
          expect(got).toEqual(cmds.map((c) => c.seqnum));
          expect(q.length).toBe(0);
        },
      ),
      { numRuns: 200 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        const q = queueOf(bytes);
        for (let i = 0; i < 10; i++) {
          const r = readClientPdu(q);
          if (r.kind !== "frame") break;
        }
        readOpRequest(queueOf(bytes));
        readOpReply(queueOf(bytes), "devlist");
        readServerPdu(queueOf(bytes), () => ({ directionIn: true, transferBufferLength: 100 }));
      }),
      { numRuns: 500 },
    );
  });
});

describe("status translation at the USB/IP boundary", () => {
  it("is the identity on known Linux errno values and -ESHUTDOWN for anything else", () => {
    expect(statusFromUsbip(-104)).toBe(ECONNRESET);
    expect(statusFromUsbip(-32)).toBe(EPIPE);
    expect(statusFromUsbip(0)).toBe(0);
    expect(statusFromUsbip(-9999)).toBe(ESHUTDOWN);
    expect(statusFromUsbip(5)).toBe(ESHUTDOWN);
  });
});
