/**
 * Emulated USB mass-storage device: Bulk-Only Transport 1.0 (class 8, subclass 6 SCSI transparent,
 * protocol 0x50) over bulk IN 0x81 / bulk OUT 0x02, one logical unit backed by a BlockStore.
 *
 * Identity: 1209:0003 (pid.codes test range, see ids.ts); the serial number string BOT §4.1.1 requires
 * (at least 12 hex digits) is also the INQUIRY unit serial number VPD page.
 *
 * Transport state machine (BOT §5, §6):
 *   cbw   ── 31-byte valid CBW on bulk OUT ──▶ data (IN or OUT) ──▶ csw ── CSW on bulk IN ──▶ cbw
 *   an invalid CBW (§6.6.1) stalls both bulk endpoints, and CLEAR_FEATURE(HALT) alone does not clear
 *   them, until Bulk-Only Mass Storage Reset (class request 0xff) — the host's Reset Recovery (§5.3.4).
 *
 * Host/device disagreement, the "thirteen cases" of §6.7 (Hn/Hi/Ho: what the CBW announced; Dn/Di/Do: what
 * the command needs):
 *   Hn=Dn passed/failed; Hn<Di, Hn<Do: phase error, nothing moved.
 *   Hi>Dn, Ho>Dn: the data pipe the host uses stalls; CSW with residue = dCBWDataTransferLength.
 *   Hi>Di: the data, ending in a short packet (or, if the data ended exactly at a transfer boundary, a stall of
 *          bulk IN on the next data transfer); residue = Hi - Di.
 *   Ho>Do: Do bytes used, the rest of that transfer accepted and discarded, a further transfer stalls bulk OUT.
 *   Hi<Di: Hi bytes sent, phase error.   Ho<Do: the data is accepted and discarded (not written), phase error.
 *   Hi<>Do, Ho<>Di: the host's data pipe stalls, phase error.
 * Transfer lengths come from the untrusted CBW; they are only compared with counters and never size an
 * allocation; READ/WRITE data moves directly between the guest buffer view and the store.
 */

import { EOVERFLOW, EPIPE, OK } from "../../../urb/status.js";
import {
  RECIPIENT_INTERFACE,
  RECIPIENT_MASK,
  REQUEST_DIR_IN,
  REQUEST_TYPE_CLASS,
  REQUEST_TYPE_MASK,
  type SetupPacket,
  UsbSpeed,
} from "../../../usb/index.js";
import { InvalidOptionError } from "../../../util/errors.js";
import { type DescriptorSpec, type EndpointLayout, MAX_STRING_CODE_UNITS } from "../descriptors.js";
import { EmulatedDevice } from "../emulated-device.js";
import {
  EMULATED_BCD_DEVICE,
  EMULATED_MANUFACTURER,
  PID_CODES_VENDOR_ID,
  STORAGE_PRODUCT_ID,
} from "../ids.js";
import type { PendingTransfer } from "../pending-transfer.js";
import type { ControlReply } from "../standard-requests.js";
import { TransferQueue } from "../transfer-queue.js";
import { BotRequest, type Cbw, CSW_SIZE, CswStatus, encodeCsw, parseCbw } from "./bot.js";
import {
  type LogicalUnit,
  planCommand,
  ScsiOp,
  type ScsiPlan,
  SENSE_MEDIUM_NOT_PRESENT,
  SENSE_NONE,
  SENSE_UNRECOVERED_READ_ERROR,
  SENSE_WRITE_ERROR,
  type Sense,
} from "./scsi.js";
import { type BlockStore, FileStore, MemoryStore } from "./store.js";

export const STORAGE_BULK_IN = 0x81;
export const STORAGE_BULK_OUT = 0x02;
export const STORAGE_INTERFACE = 0;
const MASS_STORAGE_CLASS = 0x08;
const SCSI_TRANSPARENT_SUBCLASS = 0x06;
const BULK_ONLY_PROTOCOL = 0x50;
/** Only LUN 0: GET MAX LUN answers 0. */
const MAX_LUN = 0;
/** BOT §4.1.1: the serial number is at least 12 characters of "0"-"9", "A"-"F". */
const SERIAL_PATTERN = /^[0-9A-F]{12,}$/;
export const DEFAULT_STORAGE_SERIAL = "5553425649520001";
/** Upper bound on one pump pass: every step settles a transfer or changes phase. */
const MAX_PUMP_STEPS = 64;

export interface MassStorageOptions {
  /** Full, high or super; default high. The device is SuperSpeed-capable at every speed (it has a BOS). */
  readonly speed?: UsbSpeed;
  /** The backing store; default a zero-filled memory store of `sizeBytes`. */
  readonly store?: BlockStore;
  /** Back the disk by this file instead (opened in open(); created and grown to `sizeBytes` if given). */
  readonly file?: string;
  /** Memory store size, or the size a file store is grown to. Default 64 MiB for memory. */
  readonly sizeBytes?: number;
  readonly readOnly?: boolean;
  /** INQUIRY RMB bit. Default false. */
  readonly removable?: boolean;
  /** 12+ upper-case hex digits. */
  readonly serialNumber?: string;
  /** INQUIRY vendor (8) / product (16) identification. */
  readonly vendor?: string;
  readonly product?: string;
}

type DataSource = { kind: "bytes"; bytes: Uint8Array } | { kind: "store"; offset: number };
type DataSink = { kind: "store"; offset: number } | { kind: "discard" };

/** One command between its CBW and its CSW. */
interface Command {
  readonly tag: number;
  readonly hostLength: number;
  readonly directionIn: boolean;
  status: CswStatus;
  /** Bytes the device moves in the data stage (after any truncation to the host's length). */
  deviceLength: number;
  /** Bytes of device data moved so far (the CSW residue is hostLength - moved). */
  moved: number;
  /** Bytes the host moved in the data stage, discarded ones included. */
  hostMoved: number;
  source: DataSource | null;
  sink: DataSink | null;
}

type Phase = "cbw" | "data" | "csw" | "busy" | "needs-reset";

function storageSpec(serialNumber: string): DescriptorSpec {
  return {
    deviceClass: 0,
    deviceSubClass: 0,
    deviceProtocol: 0,
    vendorId: PID_CODES_VENDOR_ID,
    productId: STORAGE_PRODUCT_ID,
    bcdDevice: EMULATED_BCD_DEVICE,
    manufacturer: EMULATED_MANUFACTURER,
    product: "usbvirt mass storage",
    serialNumber,
    dualSpeed: true,
    superSpeed: true,
    configurations: [
      {
        configurationValue: 1,
        maxPowerMa: 200,
        interfaces: [
          {
            interfaceNumber: STORAGE_INTERFACE,
            alternates: [
              {
                alternateSetting: 0,
                interfaceClass: MASS_STORAGE_CLASS,
                interfaceSubClass: SCSI_TRANSPARENT_SUBCLASS,
                interfaceProtocol: BULK_ONLY_PROTOCOL,
                endpoints: [
                  { address: STORAGE_BULK_IN, type: "bulk" },
                  { address: STORAGE_BULK_OUT, type: "bulk" },
                ],
              },
            ],
          },
        ],
      },
    ],
  };
}

export class MassStorageDevice extends EmulatedDevice {
  private store: BlockStore | null;
  private lu: LogicalUnit | null = null;
  private readonly options: MassStorageOptions;
  private readonly serial: string;
  private phase: Phase = "cbw";
  private command: Command | null = null;
  private csw: Uint8Array | null = null;
  private sense: Sense = SENSE_NONE;
  private readonly pendingIn = new TransferQueue();
  private readonly pendingOut = new TransferQueue();
  /** Bumped by every BOT reset / configuration change: an I/O finishing after it is stale. */
  private epoch = 0;

  constructor(options: MassStorageOptions = {}) {
    const serial = options.serialNumber ?? DEFAULT_STORAGE_SERIAL;
    if (!SERIAL_PATTERN.test(serial) || serial.length > MAX_STRING_CODE_UNITS)
      throw new InvalidOptionError(
        `storage: options.serialNumber must be 12+ upper-case hex digits, got "${serial}"`,
      );
    if (options.store !== undefined && options.file !== undefined)
      throw new InvalidOptionError("storage: give options.store or options.file, not both");
    super(storageSpec(serial), { speed: options.speed ?? UsbSpeed.HIGH, name: "usbvirt mass storage" });
    this.options = options;
    this.serial = serial;
    this.store =
      options.file !== undefined
        ? null
        : (options.store ?? new MemoryStore({ sizeBytes: options.sizeBytes, readOnly: options.readOnly }));
    if (this.store !== null) this.lu = this.logicalUnit(this.store);
  }

  /** The backing store (null until open() for a file-backed disk). */
  get blockStore(): BlockStore | null {
    return this.store;
  }

  override async open(): Promise<void> {
    await super.open();
    if (this.store === null && this.options.file !== undefined) {
      this.store = await FileStore.open(this.options.file, {
        readOnly: this.options.readOnly,
        sizeBytes: this.options.sizeBytes,
      });
      this.lu = this.logicalUnit(this.store);
    }
  }

  protected override async onClose(): Promise<void> {
    await this.store?.close();
  }

  private logicalUnit(store: BlockStore): LogicalUnit {
    return {
      blockSize: store.blockSize,
      blockCount: store.blockCount,
      readOnly: store.readOnly || (this.options.readOnly ?? false),
      removable: this.options.removable ?? false,
      vendor: this.options.vendor ?? "USBVIRT",
      product: this.options.product ?? "Mass Storage",
      revision: "0100",
      serial: this.serial,
    };
  }

  // ---- control: BOT class requests (§3.1, §3.2) --------------------------------------------------------

  protected override handleClassOrVendorRequest(setup: SetupPacket, _data: Uint8Array): ControlReply {
    if ((setup.bmRequestType & REQUEST_TYPE_MASK) !== REQUEST_TYPE_CLASS) return EPIPE;
    if ((setup.bmRequestType & RECIPIENT_MASK) !== RECIPIENT_INTERFACE) return EPIPE;
    if (setup.wIndex !== STORAGE_INTERFACE || setup.wValue !== 0) return EPIPE;
    const directionIn = (setup.bmRequestType & REQUEST_DIR_IN) !== 0;
    switch (setup.bRequest) {
      case BotRequest.RESET:
        if (directionIn || setup.wLength !== 0) return EPIPE;
        // Ready for a CBW; the endpoint halts stay until the host clears them (now it can).
        this.restartTransport();
        return OK;
      case BotRequest.GET_MAX_LUN:
        return directionIn && setup.wLength === 1 ? Uint8Array.of(MAX_LUN) : EPIPE;
      default:
        return EPIPE;
    }
  }

  protected override isHaltSticky(address: number): boolean {
    return this.phase === "needs-reset" && (address === STORAGE_BULK_IN || address === STORAGE_BULK_OUT);
  }

  protected override onConfigurationChanged(): void {
    this.restartTransport();
    this.sense = SENSE_NONE;
  }

  private restartTransport(): void {
    this.epoch++;
    this.phase = "cbw";
    this.command = null;
    this.csw = null;
    this.pump();
  }

  // ---- bulk --------------------------------------------------------------------------------------------

  protected override handleTransfer(t: PendingTransfer, _ep: EndpointLayout): void {
    (t.request.directionIn ? this.pendingIn : this.pendingOut).push(t);
    this.pump();
  }

  /** Run the transport until it waits for the host or for I/O. */
  private pump(): void {
    for (let step = 0; step < MAX_PUMP_STEPS; step++) {
      if (!this.step()) return;
    }
  }

  /** One step of the state machine; false when nothing can progress now. */
  private step(): boolean {
    switch (this.phase) {
      case "cbw": {
        const t = this.pendingOut.shift();
        if (t === undefined) return false;
        this.receiveCbw(t);
        return true;
      }
      case "data": {
        const cmd = this.command!;
        const t = (cmd.directionIn ? this.pendingIn : this.pendingOut).shift();
        if (t === undefined) return false;
        if (cmd.directionIn) this.dataIn(cmd, t);
        else this.dataOut(cmd, t);
        return true;
      }
      case "csw": {
        const t = this.pendingIn.shift();
        if (t === undefined) return false;
        this.sendCsw(t);
        return true;
      }
      default:
        return false;
    }
  }

  private receiveCbw(t: PendingTransfer): void {
    const cbw = parseCbw(t.buffer);
    // The CBW's packets were accepted either way; the stall comes on the next transfers.
    t.ok(t.buffer.length);
    if (cbw === null) {
      this.phase = "needs-reset";
      this.command = null;
      this.halt(STORAGE_BULK_IN);
      this.halt(STORAGE_BULK_OUT);
      return;
    }
    this.execute(cbw);
  }

  private execute(cbw: Cbw): void {
    const lu = this.lu;
    const op = cbw.cb[0]!;
    const plan: ScsiPlan =
      lu === null
        ? { kind: "check", sense: SENSE_MEDIUM_NOT_PRESENT }
        : planCommand(lu, cbw.cb, cbw.lun, this.sense);
    // Sense data describes the last command only; REQUEST SENSE reports it and clears it (SPC-3 §5.11).
    this.sense = plan.kind === "check" ? plan.sense : SENSE_NONE;
    if (op === ScsiOp.REQUEST_SENSE && plan.kind !== "check") this.sense = SENSE_NONE;

    const cmd: Command = {
      tag: cbw.tag,
      hostLength: cbw.dataTransferLength,
      directionIn: cbw.directionIn,
      status: plan.kind === "check" ? CswStatus.FAILED : CswStatus.PASSED,
      deviceLength: 0,
      moved: 0,
      hostMoved: 0,
      source: null,
      sink: null,
    };
    this.command = cmd;
    let deviceIn = false;
    switch (plan.kind) {
      case "in":
        deviceIn = true;
        cmd.deviceLength = plan.data.length;
        cmd.source = { kind: "bytes", bytes: plan.data };
        break;
      case "read":
        deviceIn = true;
        cmd.deviceLength = plan.length;
        cmd.source = { kind: "store", offset: plan.offset };
        break;
      case "write":
        cmd.deviceLength = plan.length;
        cmd.sink = { kind: "store", offset: plan.offset };
        break;
      case "sync":
        if (cmd.hostLength === 0) {
          this.synchronize(cmd);
          return;
        }
        break;
      default:
        break;
    }

    if (cmd.hostLength === 0) {
      // Hn: Dn passes or fails; Hn<Di / Hn<Do is a phase error with nothing executed.
      if (cmd.deviceLength > 0) cmd.status = CswStatus.PHASE_ERROR;
      this.finish(cmd);
      return;
    }
    const hostPipe = cmd.directionIn ? STORAGE_BULK_IN : STORAGE_BULK_OUT;
    if (cmd.deviceLength === 0 || deviceIn !== cmd.directionIn) {
      // Hi>Dn / Ho>Dn: stall the host's data pipe; Hi<>Do / Ho<>Di: the same, and a phase error.
      if (cmd.deviceLength > 0) cmd.status = CswStatus.PHASE_ERROR;
      cmd.deviceLength = 0;
      this.finish(cmd);
      this.halt(hostPipe);
      return;
    }
    if (cmd.deviceLength > cmd.hostLength) {
      cmd.status = CswStatus.PHASE_ERROR;
      if (deviceIn) {
        // Hi<Di: send what the host asked for, then report the phase error.
        cmd.deviceLength = cmd.hostLength;
      } else {
        // Ho<Do: take the host's bytes but write nothing: a partial write is worse than none.
        cmd.deviceLength = 0;
        cmd.sink = { kind: "discard" };
      }
    }
    this.phase = "data";
  }

  /** SYNCHRONIZE CACHE with no data stage: the CSW waits for the flush. */
  private synchronize(cmd: Command): void {
    const store = this.store!;
    const epoch = this.epoch;
    this.phase = "busy";
    const finish = (ok: boolean) => {
      if (epoch !== this.epoch) return;
      if (!ok) {
        cmd.status = CswStatus.FAILED;
        this.sense = SENSE_WRITE_ERROR;
      }
      this.finish(cmd);
      this.pump();
    };
    try {
      const r = store.flush();
      if (r instanceof Promise)
        r.then(
          () => finish(true),
          () => finish(false),
        );
      else finish(true);
    } catch {
      finish(false);
    }
  }

  /** The data stage is over: prepare the CSW. */
  private finish(cmd: Command): void {
    this.csw = encodeCsw(cmd.tag, Math.max(0, cmd.hostLength - cmd.moved), cmd.status);
    this.command = null;
    this.phase = "csw";
  }

  private dataIn(cmd: Command, t: PendingTransfer): void {
    const room = t.buffer.length;
    const n = Math.min(room, cmd.deviceLength - cmd.moved, cmd.hostLength - cmd.hostMoved);
    if (n <= 0) {
      // The device has no more data but the host expects more: stall bulk IN (then the CSW).
      this.finish(cmd);
      this.halt(STORAGE_BULK_IN);
      return;
    }
    const view = t.buffer.subarray(0, n);
    const done = () => {
      cmd.moved += n;
      cmd.hostMoved += n;
      // A short packet ends the data stage from the host's side; so does reaching its length.
      if (n < room || cmd.hostMoved >= cmd.hostLength) this.finish(cmd);
      t.ok(n);
    };
    const source = cmd.source!;
    if (source.kind === "bytes") {
      view.set(source.bytes.subarray(cmd.moved, cmd.moved + n));
      done();
      return;
    }
    this.storeIo(
      t,
      () => this.store!.read(source.offset + cmd.moved, view),
      done,
      () => {
        // Unrecovered read error: stop the data here, fail the command, stall bulk IN.
        cmd.status = CswStatus.FAILED;
        this.sense = SENSE_UNRECOVERED_READ_ERROR;
        this.finish(cmd);
        this.halt(STORAGE_BULK_IN);
      },
    );
  }

  private dataOut(cmd: Command, t: PendingTransfer): void {
    const length = t.buffer.length;
    const accepted = Math.min(length, cmd.hostLength - cmd.hostMoved);
    const sink = cmd.sink!;
    const useful = sink.kind === "discard" ? 0 : Math.min(accepted, cmd.deviceLength - cmd.moved);
    if (sink.kind === "store" && useful <= 0) {
      // Ho>Do: the device needs nothing more; stall bulk OUT (then the CSW).
      this.finish(cmd);
      this.halt(STORAGE_BULK_OUT);
      return;
    }
    const done = () => {
      cmd.moved += useful;
      cmd.hostMoved += accepted;
      if (cmd.hostMoved >= cmd.hostLength) this.finish(cmd);
      // Bytes beyond what the command needs (or beyond the CBW's length) are accepted and discarded.
      t.ok(length);
    };
    if (sink.kind === "discard") {
      done();
      return;
    }
    const view = t.buffer.subarray(0, useful);
    this.storeIo(
      t,
      () => this.store!.write(sink.offset + cmd.moved, view),
      done,
      () => {
        // Write error: fail the command; the rest of the data stage is accepted and dropped.
        cmd.status = CswStatus.FAILED;
        this.sense = SENSE_WRITE_ERROR;
        cmd.sink = { kind: "discard" };
        cmd.hostMoved += accepted;
        if (cmd.hostMoved >= cmd.hostLength) this.finish(cmd);
        t.ok(length);
      },
    );
  }

  /**
   * Run a store operation on `t`'s buffer. Synchronous stores finish inline; asynchronous ones hold the
   * transport ("busy") and the guest buffer (beginIo) until they end. A result that arrives after a BOT
   * reset or a configuration change is dropped.
   */
  private storeIo(
    t: PendingTransfer,
    io: () => void | Promise<void>,
    ok: () => void,
    failed: () => void,
  ): void {
    let pending: void | Promise<void>;
    try {
      pending = io();
    } catch {
      failed();
      return;
    }
    if (!(pending instanceof Promise)) {
      ok();
      return;
    }
    const epoch = this.epoch;
    this.phase = "busy";
    t.beginIo();
    const settle = (success: boolean) => {
      const live = t.endIo();
      if (epoch !== this.epoch) {
        // The transport restarted meanwhile: this data stage no longer exists.
        if (live) t.fail(EPIPE);
        return;
      }
      this.phase = "data";
      if (!live) {
        // Cancelled or flushed during the I/O: the host will not see the bytes; end the data stage.
        this.finish(this.command!);
      } else if (success) ok();
      else failed();
      this.pump();
    };
    pending.then(
      () => settle(true),
      () => settle(false),
    );
  }

  private sendCsw(t: PendingTransfer): void {
    const csw = this.csw!;
    this.csw = null;
    this.phase = "cbw";
    const n = Math.min(CSW_SIZE, t.buffer.length);
    t.buffer.set(csw.subarray(0, n));
    // A CSW is one 13-byte packet: a smaller buffer cannot hold it (babble), and the CSW is gone.
    if (n < CSW_SIZE) t.fail(EOVERFLOW, n);
    else t.ok(n);
  }
}
