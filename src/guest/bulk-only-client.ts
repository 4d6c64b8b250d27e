/**
 * The guest side of USB Mass Storage Bulk-Only Transport (BOT 1.0 §5):
 * CBW out, optional data stage, CSW in — what Linux's usb-storage does, over
 * the virtual host controller, for the example, tests and benches.
 */
import { OK } from "../urb/status.js";
import type { DevAddr, PortNum } from "../urb/types.js";
import { GuestTransferError, type GuestUsbDriver } from "./guest-driver.js";

const CBW_SIGNATURE = 0x43425355;
const CSW_SIGNATURE = 0x53425355;
const CBW_LENGTH = 31;
const CSW_LENGTH = 13;
export const BLOCK_SIZE = 512;

export interface ScsiResult {
  /** CSW status: 0 passed, 1 failed, 2 phase error. */
  readonly status: number;
  readonly residue: number;
  readonly data: Uint8Array;
}

export class BulkOnlyClient {
  private tag = 1;

  constructor(
    private readonly driver: GuestUsbDriver,
    private readonly port: PortNum,
    private readonly device: DevAddr,
    private readonly bulkIn: number,
    private readonly bulkOut: number,
  ) {}

  /** Run one SCSI command: `dataIn` bytes expected back, or `dataOut` sent. */
  async command(cdb: Uint8Array, dataIn = 0, dataOut?: Uint8Array): Promise<ScsiResult> {
    const tag = this.tag++ >>> 0;
    const length = dataOut?.length ?? dataIn;
    const cbw = new Uint8Array(CBW_LENGTH);
    const v = new DataView(cbw.buffer);
    v.setUint32(0, CBW_SIGNATURE, true);
    v.setUint32(4, tag, true);
    v.setUint32(8, length, true);
    cbw[12] = dataOut === undefined && dataIn > 0 ? 0x80 : 0;
    cbw[13] = 0; // LUN
    cbw[14] = cdb.length;
    cbw.set(cdb, 15);
    await this.driver.transferOut(this.port, this.device, this.bulkOut, cbw);
    let data = new Uint8Array(0);
    if (dataOut !== undefined && dataOut.length > 0) {
      await this.driver.transferOut(this.port, this.device, this.bulkOut, dataOut);
    } else if (dataIn > 0) {
      data = await this.driver.transferIn(this.port, this.device, this.bulkIn, dataIn);
    }
    const csw = await this.driver.transferIn(this.port, this.device, this.bulkIn, CSW_LENGTH);
    const c = new DataView(csw.buffer, csw.byteOffset, csw.byteLength);
    if (csw.length !== CSW_LENGTH || c.getUint32(0, true) !== CSW_SIGNATURE || c.getUint32(4, true) !== tag) {
      throw new GuestTransferError("CSW", OK);
    }
    return { status: csw[12]!, residue: c.getUint32(8, true), data };
  }

  async testUnitReady(): Promise<number> {
    return (await this.command(new Uint8Array(6))).status;
  }

  async inquiry(): Promise<{ vendor: string; product: string }> {
    const r = await this.command(Uint8Array.of(0x12, 0, 0, 0, 36, 0), 36);
    const text = (a: number, b: number) => Buffer.from(r.data.subarray(a, b)).toString("latin1").trim();
    return { vendor: text(8, 16), product: text(16, 32) };
  }

  /** READ CAPACITY(10): last LBA and block length. */
  async readCapacity(): Promise<{ blocks: number; blockSize: number }> {
    const r = await this.command(Uint8Array.of(0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0), 8);
    const v = new DataView(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    return { blocks: v.getUint32(0, false) + 1, blockSize: v.getUint32(4, false) };
  }

  private rw10(op: number, lba: number, blocks: number): Uint8Array {
    const cdb = new Uint8Array(10);
    const v = new DataView(cdb.buffer);
    cdb[0] = op;
    v.setUint32(2, lba, false);
    v.setUint16(7, blocks, false);
    return cdb;
  }

  async write10(lba: number, data: Uint8Array): Promise<ScsiResult> {
    return await this.command(this.rw10(0x2a, lba, data.length / BLOCK_SIZE), 0, data);
  }

  async read10(lba: number, blocks: number): Promise<ScsiResult> {
    return await this.command(this.rw10(0x28, lba, blocks), blocks * BLOCK_SIZE);
  }
}
