/** The mass-storage device: Bulk-Only Transport and the SCSI commands Linux sends, through UsbDevice. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import type { TransferResult } from "../../src/devices/device.js";
import {
  BLOCK_SIZE,
  CSW_SIGNATURE,
  type Csw,
  CswStatus,
  decodeCsw,
  encodeCbw,
  FileStore,
  STORAGE_BULK_IN as IN,
  MassStorageDevice,
  type MassStorageOptions,
  MemoryStore,
  STORAGE_BULK_OUT as OUT,
  ScsiOp,
} from "../../src/devices/emulated/mass-storage/index.js";
import { ECONNRESET, EPIPE, ESHUTDOWN, OK } from "../../src/urb/status.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { InvalidOptionError } from "../../src/util/errors.js";
import { pattern } from "../support/data.js";
import { bulk, control, expectPending, setupPacket } from "./support.js";

const SIZE = 1024 * 1024; // 2048 blocks
let dev: MassStorageDevice;
let tag = 1;

async function attach(options: MassStorageOptions = {}) {
  dev = new MassStorageDevice({ sizeBytes: SIZE, ...options });
  await dev.open();
  expect(await dev.setConfiguration(1)).toBe(OK);
  return dev;
}

afterEach(async () => {
  await dev?.close();
});

interface Outcome {
  csw: Csw;
  data: Uint8Array;
  dataResult: TransferResult | null;
  tag: number;
}

/**
 * One BOT command as a host runs it: CBW, data stage (split into `chunk`-byte transfers), CSW; a stalled
 * data stage is cleared before the CSW, as Linux usb-storage does.
 */
async function scsi(
  cb: number[],
  opts: {
    dataIn?: number;
    dataOut?: Uint8Array;
    hostLength?: number;
    chunk?: number;
    directionIn?: boolean;
  } = {},
): Promise<Outcome> {
  const myTag = tag++;
  const dataLength = opts.dataIn ?? opts.dataOut?.length ?? 0;
  const hostLength = opts.hostLength ?? dataLength;
  const directionIn = opts.directionIn ?? opts.dataOut === undefined;
  const cbw = encodeCbw({ tag: myTag, dataTransferLength: hostLength, directionIn, cb });
  expect(await bulk(dev, OUT, cbw).result).toEqual({ status: OK, actualLength: 31 });
  let dataResult: TransferResult | null = null;
  const collected: number[] = [];
  if (dataLength > 0) {
    const chunk = opts.chunk ?? dataLength;
    for (let at = 0; at < dataLength; at += chunk) {
      const n = Math.min(chunk, dataLength - at);
      const buffer = opts.dataOut ? opts.dataOut.subarray(at, at + n) : new Uint8Array(n);
      dataResult = await bulk(dev, opts.dataOut ? OUT : IN, buffer).result;
      if (!opts.dataOut) collected.push(...buffer.subarray(0, dataResult.actualLength));
      if (dataResult.status === EPIPE) {
        expect(await dev.clearHalt(opts.dataOut ? OUT : IN)).toBe(OK);
        break;
      }
      if (dataResult.actualLength < n) break;
    }
  }
  const cswBuf = new Uint8Array(13);
  expect(await bulk(dev, IN, cswBuf).result).toEqual({ status: OK, actualLength: 13 });
  const csw = decodeCsw(cswBuf)!;
  expect(csw.signature).toBe(CSW_SIGNATURE);
  expect(csw.tag).toBe(myTag);
  return { csw, data: Uint8Array.from(collected), dataResult, tag: myTag };
}

const be32 = (b: Uint8Array, at: number) =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
const read10 = (lba: number, blocks: number) => [
  ScsiOp.READ_10,
  0,
  lba >>> 24,
  (lba >>> 16) & 0xff,
  (lba >>> 8) & 0xff,
  lba & 0xff,
  0,
  blocks >> 8,
  blocks & 0xff,
  0,
];
const write10 = (lba: number, blocks: number) => [ScsiOp.WRITE_10, ...read10(lba, blocks).slice(1)];
const requestSense = () => scsi([ScsiOp.REQUEST_SENSE, 0, 0, 0, 18, 0], { dataIn: 18 });
const senseOf = (data: Uint8Array) => [data[2]! & 0x0f, data[12], data[13]];

describe("Linux usb-storage attach sequence", () => {
  it("GET_MAX_LUN, TEST UNIT READY, INQUIRY, READ CAPACITY(10), MODE SENSE(6), PREVENT ALLOW, READ(10), WRITE(10)", async () => {
    await attach();
    const maxLun = await control(dev, setupPacket(0xa1, 0xfe, 0, 0, 1));
    expect(maxLun.result.status).toBe(OK);
    expect([...maxLun.data]).toEqual([0]);

    expect((await scsi([ScsiOp.TEST_UNIT_READY, 0, 0, 0, 0, 0])).csw).toMatchObject({
      status: CswStatus.PASSED,
      residue: 0,
    });

    const inquiry = await scsi([ScsiOp.INQUIRY, 0, 0, 0, 36, 0], { dataIn: 36 });
    expect(inquiry.csw).toMatchObject({ status: CswStatus.PASSED, residue: 0 });
    expect(inquiry.data[0]).toBe(0); // direct-access block device
    expect(inquiry.data[4]).toBe(31);
    expect(new TextDecoder().decode(inquiry.data.subarray(8, 16))).toBe("USBVIRT ");

    const cap = await scsi([ScsiOp.READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], { dataIn: 8 });
    expect(cap.csw.status).toBe(CswStatus.PASSED);
    expect(be32(cap.data, 0)).toBe(SIZE / BLOCK_SIZE - 1);
    expect(be32(cap.data, 4)).toBe(BLOCK_SIZE);

    // sd asks MODE SENSE(6) all pages with a 192-byte allocation: a short answer, residue counted.
    const mode = await scsi([ScsiOp.MODE_SENSE_6, 0, 0x3f, 0, 192, 0], { dataIn: 192 });
    expect(mode.csw.status).toBe(CswStatus.PASSED);
    expect(mode.data.length).toBe(24);
    expect(mode.csw.residue).toBe(192 - 24);
    expect(mode.data[0]).toBe(23);
    expect(mode.data[2]! & 0x80).toBe(0); // not write-protected
    expect(mode.data[4]).toBe(0x08); // caching page

    expect((await scsi([ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0])).csw.status).toBe(
      CswStatus.PASSED,
    );

    const first = await scsi(read10(0, 8), { dataIn: 8 * BLOCK_SIZE });
    expect(first.csw).toMatchObject({ status: CswStatus.PASSED, residue: 0 });
    expect(first.data.every((b) => b === 0)).toBe(true);

    const sector = new Uint8Array(BLOCK_SIZE).map((_, i) => (i * 7) & 0xff);
    expect((await scsi(write10(5, 1), { dataOut: sector })).csw).toMatchObject({
      status: CswStatus.PASSED,
      residue: 0,
    });
    expect((await scsi(read10(5, 1), { dataIn: BLOCK_SIZE })).data).toEqual(sector);
  });
});

describe("READ/WRITE", () => {
  it("reads back random sectors exactly as written, whatever the transfer split", async () => {
    await attach();
    const blocks = SIZE / BLOCK_SIZE;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: blocks - 1 }),
        fc.integer({ min: 1, max: 16 }),
        fc.constantFrom(512, 4096, 1000, 16384),
        fc.integer({ min: 0, max: 0xffff_ffff }),
        async (lba, wanted, chunk, seed) => {
          const count = Math.min(wanted, blocks - lba);
          const data = new Uint8Array(count * BLOCK_SIZE);
          let x = seed | 1;
          for (let i = 0; i < data.length; i++) {
            x ^= x << 13;
            x ^= x >>> 17;
            x ^= x << 5;
            data[i] = x & 0xff;
          }
          const w = await scsi(write10(lba, count), { dataOut: data.slice(), chunk });
          expect(w.csw).toMatchObject({ status: CswStatus.PASSED, residue: 0 });
          const r = await scsi(read10(lba, count), { dataIn: data.length, chunk });
          expect(r.csw).toMatchObject({ status: CswStatus.PASSED, residue: 0 });
          expect(r.data).toEqual(data);
        },
      ),
      { numRuns: 60 },
    );
  });

  it("READ(16)/WRITE(16) and READ CAPACITY(16) address the same blocks", async () => {
    await attach();
    const cap = await scsi([ScsiOp.SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], {
      dataIn: 32,
    });
    expect(cap.csw.status).toBe(CswStatus.PASSED);
    expect(be32(cap.data, 0)).toBe(0);
    expect(be32(cap.data, 4)).toBe(SIZE / BLOCK_SIZE - 1);
    expect(be32(cap.data, 8)).toBe(BLOCK_SIZE);
    const sector = new Uint8Array(BLOCK_SIZE).fill(0x5a);
    const w16 = [ScsiOp.WRITE_16, 0, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 1, 0, 0];
    expect((await scsi(w16, { dataOut: sector })).csw.status).toBe(CswStatus.PASSED);
    expect((await scsi(read10(100, 1), { dataIn: BLOCK_SIZE })).data).toEqual(sector);
  });

  it("READ(12)/WRITE(12) address the same blocks as READ(10), with 32-bit block counts range-checked", async () => {
    await attach();
    const twelve = (op: number, lba: number, blocks: number) => [
      op,
      0,
      ...[24, 16, 8, 0].map((shift) => (lba >>> shift) & 0xff),
      ...[24, 16, 8, 0].map((shift) => (blocks >>> shift) & 0xff),
      0,
      0,
    ];
    const data = pattern(3 * BLOCK_SIZE, 12);
    expect((await scsi(twelve(ScsiOp.WRITE_12, 200, 3), { dataOut: data })).csw.status).toBe(
      CswStatus.PASSED,
    );
    expect((await scsi(read10(200, 3), { dataIn: data.length })).data).toEqual(data);
    const back = await scsi(twelve(ScsiOp.READ_12, 200, 3), { dataIn: data.length });
    expect(back.data).toEqual(data);
    // A count that only 32 bits can say, past the end: refused before any data moves.
    const huge = await scsi(twelve(ScsiOp.READ_12, 0, 0x1000_0000), { dataIn: BLOCK_SIZE });
    expect(huge.csw.status).toBe(CswStatus.FAILED);
    expect(senseOf((await requestSense()).data)).toEqual([0x05, 0x21, 0x00]);
  });

  it("READ FORMAT CAPACITIES (Windows asks every USB disk) gives the formatted capacity and block length", async () => {
    await attach();
    const r = await scsi([ScsiOp.READ_FORMAT_CAPACITIES, 0, 0, 0, 0, 0, 0, 0, 252, 0], { dataIn: 252 });
    expect(r.csw).toMatchObject({ status: CswStatus.PASSED, residue: 252 - 12 });
    expect([...r.data.subarray(0, 4)]).toEqual([0, 0, 0, 8]);
    expect(be32(r.data, 4)).toBe(SIZE / BLOCK_SIZE);
    expect(r.data[8]).toBe(0x02);
    expect((r.data[9]! << 16) | (r.data[10]! << 8) | r.data[11]!).toBe(BLOCK_SIZE);
    // The allocation length cuts the answer.
    const short = await scsi([ScsiOp.READ_FORMAT_CAPACITIES, 0, 0, 0, 0, 0, 0, 0, 4, 0], { dataIn: 4 });
    expect([...short.data]).toEqual([0, 0, 0, 8]);
  });

  it("an LBA out of range fails with ILLEGAL REQUEST / LBA OUT OF RANGE, reported once by REQUEST SENSE", async () => {
    await attach();
    const r = await scsi(read10(SIZE / BLOCK_SIZE - 1, 2), { dataIn: 2 * BLOCK_SIZE });
    expect(r.dataResult?.status).toBe(EPIPE); // Hi > Dn: bulk IN stalls
    expect(r.csw).toMatchObject({ status: CswStatus.FAILED, residue: 2 * BLOCK_SIZE });
    const sense = await requestSense();
    expect(sense.csw.status).toBe(CswStatus.PASSED);
    expect(sense.data[0]).toBe(0x70);
    expect(senseOf(sense.data)).toEqual([0x05, 0x21, 0x00]);
    expect(senseOf((await requestSense()).data)).toEqual([0, 0, 0]);
  });

  it("an unknown opcode fails with ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE", async () => {
    await attach();
    expect((await scsi([0xd9, 0, 0, 0, 0, 0])).csw.status).toBe(CswStatus.FAILED);
    expect(senseOf((await requestSense()).data)).toEqual([0x05, 0x20, 0x00]);
  });

  it("a write to a read-only disk fails with DATA PROTECT / WRITE PROTECTED; MODE SENSE shows WP", async () => {
    await attach({ readOnly: true });
    const w = await scsi(write10(0, 1), { dataOut: new Uint8Array(BLOCK_SIZE) });
    expect(w.dataResult?.status).toBe(EPIPE);
    expect(w.csw).toMatchObject({ status: CswStatus.FAILED, residue: BLOCK_SIZE });
    expect(senseOf((await requestSense()).data)).toEqual([0x07, 0x27, 0x00]);
    const mode = await scsi([ScsiOp.MODE_SENSE_10, 0, 0x08, 0, 0, 0, 0, 0, 64, 0], { dataIn: 64 });
    expect(mode.data[3]! & 0x80).toBe(0x80);
    expect((mode.data[0]! << 8) | mode.data[1]!).toBe(mode.data.length - 2);
  });

  it("SYNCHRONIZE CACHE, START STOP UNIT, VERIFY and REPORT LUNS pass", async () => {
    await attach();
    expect((await scsi([ScsiOp.SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0])).csw.status).toBe(
      CswStatus.PASSED,
    );
    expect((await scsi([ScsiOp.START_STOP_UNIT, 0, 0, 0, 1, 0])).csw.status).toBe(CswStatus.PASSED);
    expect((await scsi([ScsiOp.VERIFY_10, ...read10(0, 4).slice(1)])).csw.status).toBe(CswStatus.PASSED);
    const luns = await scsi([ScsiOp.REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], { dataIn: 16 });
    expect(be32(luns.data, 0)).toBe(8);
  });

  it("INQUIRY VPD pages list 0x00/0x80/0x83 and return the serial number", async () => {
    await attach({ serialNumber: "0123456789ABCDEF" });
    const pages = await scsi([ScsiOp.INQUIRY, 1, 0x00, 0, 255, 0], { dataIn: 255 });
    expect([...pages.data]).toEqual([0, 0, 0, 3, 0x00, 0x80, 0x83]);
    const serial = await scsi([ScsiOp.INQUIRY, 1, 0x80, 0, 255, 0], { dataIn: 255 });
    expect(new TextDecoder().decode(serial.data.subarray(4))).toBe("0123456789ABCDEF");
    expect((await scsi([ScsiOp.INQUIRY, 1, 0x42, 0, 255, 0], { dataIn: 255 })).csw.status).toBe(
      CswStatus.FAILED,
    );
  });
});

describe("Bulk-Only Transport cases and recovery", () => {
  it("Hn < Di: a data command with no data stage is a phase error", async () => {
    await attach();
    expect((await scsi([ScsiOp.INQUIRY, 0, 0, 0, 36, 0], { hostLength: 0 })).csw.status).toBe(
      CswStatus.PHASE_ERROR,
    );
  });

  it("Hi < Di: the device sends what the host asked for, then a phase error", async () => {
    await attach();
    const r = await scsi(read10(0, 1), { dataIn: 100 });
    expect(r.data.length).toBe(100);
    expect(r.csw.status).toBe(CswStatus.PHASE_ERROR);
  });

  it("Ho <> Di: a data-in command with an OUT data stage stalls bulk OUT and is a phase error", async () => {
    await attach();
    const r = await scsi([ScsiOp.INQUIRY, 0, 0, 0, 36, 0], {
      dataOut: new Uint8Array(36),
      directionIn: false,
    });
    expect(r.dataResult?.status).toBe(EPIPE);
    expect(r.csw.status).toBe(CswStatus.PHASE_ERROR);
  });

  it("a CBW claiming 4 GiB for a one-block READ moves one block, then stalls; the residue says the rest", async () => {
    await attach();
    const myTag = tag++;
    await bulk(
      dev,
      OUT,
      encodeCbw({ tag: myTag, dataTransferLength: 0xffff_ffff, directionIn: true, cb: read10(0, 1) }),
    ).result;
    expect((await bulk(dev, IN, new Uint8Array(BLOCK_SIZE)).result).actualLength).toBe(BLOCK_SIZE);
    expect((await bulk(dev, IN, new Uint8Array(BLOCK_SIZE)).result).status).toBe(EPIPE);
    await dev.clearHalt(IN);
    const csw = new Uint8Array(13);
    await bulk(dev, IN, csw).result;
    expect(decodeCsw(csw)).toMatchObject({
      tag: myTag,
      status: CswStatus.PASSED,
      residue: 0xffff_ffff - BLOCK_SIZE,
    });
  });

  it("an invalid CBW stalls both bulk endpoints until Bulk-Only Mass Storage Reset and clear halts", async () => {
    await attach();
    const bad = encodeCbw({ tag: 1, dataTransferLength: 0, directionIn: false, cb: [0] });
    bad[0] = 0; // broken signature
    expect((await bulk(dev, OUT, bad).result).status).toBe(OK);
    expect((await bulk(dev, IN, new Uint8Array(13)).result).status).toBe(EPIPE);
    expect((await bulk(dev, OUT, new Uint8Array(31)).result).status).toBe(EPIPE);
    // CLEAR_FEATURE(HALT) alone does not end it (BOT §6.6.1).
    expect(await dev.clearHalt(IN)).toBe(OK);
    expect((await bulk(dev, IN, new Uint8Array(13)).result).status).toBe(EPIPE);
    // Reset Recovery: class reset, then clear both halts.
    expect((await control(dev, setupPacket(0x21, 0xff, 0, 0, 0))).result.status).toBe(OK);
    expect(await dev.clearHalt(IN)).toBe(OK);
    expect(await dev.clearHalt(OUT)).toBe(OK);
    expect((await scsi([ScsiOp.TEST_UNIT_READY, 0, 0, 0, 0, 0])).csw.status).toBe(CswStatus.PASSED);
  });

  it("a CBW of the wrong length is invalid too", async () => {
    await attach();
    await bulk(dev, OUT, new Uint8Array(30)).result;
    expect((await bulk(dev, IN, new Uint8Array(13)).result).status).toBe(EPIPE);
  });

  it("the CSW IN waits for the command; cancelling it leaves the CSW for the next IN", async () => {
    await attach();
    const early = bulk(dev, IN, new Uint8Array(13));
    await expectPending(early);
    dev.cancel(early.handle);
    expect((await early.result).status).toBe(ECONNRESET);
    expect((await scsi([ScsiOp.TEST_UNIT_READY, 0, 0, 0, 0, 0])).csw.status).toBe(CswStatus.PASSED);
  });

  it("GET_MAX_LUN and the reset request reject malformed setups", async () => {
    await attach();
    expect((await control(dev, setupPacket(0xa1, 0xfe, 0, 1, 1))).result.status).toBe(EPIPE);
    expect((await control(dev, setupPacket(0x21, 0xff, 1, 0, 0))).result.status).toBe(EPIPE);
  });
});

describe("stores and options", () => {
  it("a file-backed disk keeps its data across devices", async () => {
    const dir = await mkdtemp(join(tmpdir(), "usbvirt-storage-"));
    try {
      const file = join(dir, "disk.img");
      await attach({ file, sizeBytes: 64 * BLOCK_SIZE });
      const sector = new Uint8Array(BLOCK_SIZE * 2).map((_, i) => (i * 13) & 0xff);
      expect((await scsi(write10(10, 2), { dataOut: sector, chunk: 700 })).csw.status).toBe(CswStatus.PASSED);
      expect((await scsi([ScsiOp.SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0])).csw.status).toBe(
        CswStatus.PASSED,
      );
      await dev.close();
      await attach({ file, readOnly: true });
      const cap = await scsi([ScsiOp.READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], { dataIn: 8 });
      expect(be32(cap.data, 0)).toBe(63);
      expect((await scsi(read10(10, 2), { dataIn: 2 * BLOCK_SIZE, chunk: 512 })).data).toEqual(sector);
      const store = await FileStore.open(file, { readOnly: true });
      expect(store.blockCount).toBe(64);
      await store.close();
    } finally {
      await dev.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reads land in a SharedArrayBuffer-backed guest view without copies through the host", async () => {
    const backing = new Uint8Array(new SharedArrayBuffer(8 * BLOCK_SIZE)).fill(0x33);
    await attach({ store: new MemoryStore({ bytes: backing }) });
    const guest = new Uint8Array(new SharedArrayBuffer(BLOCK_SIZE));
    await bulk(
      dev,
      OUT,
      encodeCbw({ tag: 9, dataTransferLength: BLOCK_SIZE, directionIn: true, cb: read10(3, 1) }),
    ).result;
    expect((await bulk(dev, IN, guest).result).actualLength).toBe(BLOCK_SIZE);
    expect(guest.every((b) => b === 0x33)).toBe(true);
    await bulk(dev, IN, new Uint8Array(13)).result;
  });

  it("rejects a serial number that is not 12+ hex digits and a size that is not whole blocks", () => {
    expect(() => new MassStorageDevice({ serialNumber: "abc" })).toThrow(InvalidOptionError);
    expect(() => new MassStorageDevice({ sizeBytes: 1000 })).toThrow(InvalidOptionError);
  });

  it("presents 64-byte bulk packets at full speed and 512 at high speed", () => {
    const fsSet = new MassStorageDevice({ sizeBytes: SIZE, speed: UsbSpeed.FULL }).info.configurations[0]!;
    const hsSet = new MassStorageDevice({ sizeBytes: SIZE }).info.configurations[0]!;
    expect([...fsSet.subarray(9, 18)]).toEqual([9, 4, 0, 0, 2, 8, 6, 0x50, 0]);
    expect(fsSet[18 + 4]! | (fsSet[18 + 5]! << 8)).toBe(64);
    expect(hsSet[18 + 4]! | (hsSet[18 + 5]! << 8)).toBe(512);
  });
});

/** A memory store whose reads wait until the test releases them (an asynchronous store in slow motion). */
class GatedStore extends MemoryStore {
  private gates: (() => void)[] = [];
  override read(offset: number, into: Uint8Array): Promise<void> {
    return new Promise((resolve) => {
      this.gates.push(() => {
        super.read(offset, into);
        resolve();
      });
    });
  }
  get waiting(): number {
    return this.gates.length;
  }
  release(): void {
    for (const g of this.gates.splice(0)) g();
  }
}

describe("asynchronous store I/O and the guest buffer", () => {
  it("a transfer cancelled while the store fills its buffer completes once, with -ECONNRESET, after the I/O", async () => {
    const store = new GatedStore({ sizeBytes: 16 * BLOCK_SIZE });
    await attach({ store });
    await bulk(
      dev,
      OUT,
      encodeCbw({ tag: 5, dataTransferLength: BLOCK_SIZE, directionIn: true, cb: read10(0, 1) }),
    ).result;
    const data = bulk(dev, IN, new Uint8Array(BLOCK_SIZE));
    await expectPending(data);
    expect(store.waiting).toBe(1);
    dev.cancel(data.handle);
    await expectPending(data); // the store still writes into the view: done must wait
    store.release();
    expect((await data.result).status).toBe(ECONNRESET);
    expect(data.calls()).toBe(1);
    // The data stage ended with nothing delivered: the CSW says so.
    const csw = new Uint8Array(13);
    await bulk(dev, IN, csw).result;
    expect(decodeCsw(csw)).toMatchObject({ tag: 5, residue: BLOCK_SIZE });
  });

  it("close waits for in-flight store I/O and completes the transfer with -ESHUTDOWN first", async () => {
    const store = new GatedStore({ sizeBytes: 16 * BLOCK_SIZE });
    await attach({ store });
    await bulk(
      dev,
      OUT,
      encodeCbw({ tag: 6, dataTransferLength: BLOCK_SIZE, directionIn: true, cb: read10(0, 1) }),
    ).result;
    const data = bulk(dev, IN, new Uint8Array(BLOCK_SIZE));
    await expectPending(data);
    let closed = false;
    const closing = dev.close().then(() => {
      closed = true;
    });
    await expectPending(data);
    expect(closed).toBe(false);
    store.release();
    await closing;
    expect(data.calls()).toBe(1);
    expect((await data.result).status).toBe(ESHUTDOWN);
  });
});
