/**
 * The usbip bench's client, a process of its own (bench/usbip.ts forks it and drives it over IPC), so
 * the server's process is measured alone. It imports busid 1-1 and configures it (as vhci's USB core
 * would), then runs one stream at a time, each PDU resubmitted as soon as its reply is in:
 * null control URBs (RESET_STATS) at a given depth, 64 KiB bulk loopback (8 OUT + 8 IN), or 64 KiB
 * writes to a plain TCP echo server (8 outstanding). Lean on purpose, so it never is the bottleneck:
 * PDUs are encoded once per slot and only their seqnum is patched; replies are parsed in place (see
 * the RET_SUBMIT layout in src/usbip/protocol.ts) and IN data is skipped, not copied. Anything
 * unexpected throws, and the process exits non-zero with the message. It exits when the parent goes.
 */
import net from "node:net";
import { performance } from "node:perf_hooks";
import { encodeSetup } from "../src/usb/index.js";
import {
  BUSID_SIZE,
  DEVICE_RECORD_SIZE,
  devidOf,
  encodeCmdSubmit,
  encodeImportRequest,
  NON_ISO_PACKETS,
  OP_HEADER_SIZE,
  OpCode,
  OpStatus,
  opStatusName,
  readDeviceRecord,
  URB_HEADER_SIZE,
  UsbipCommand,
} from "../src/usbip/protocol.js";
import type { StreamReply, StreamRequest } from "./stream-bench.js";

export type Workload =
  | { readonly kind: "null"; readonly depth: number }
  | { readonly kind: "bulk64k" }
  | { readonly kind: "tcp-echo64k" };

/** Parent → client, one at a time; each is answered by the reply named in `ClientReply`. */
export type ClientRequest =
  | { readonly cmd: "connect"; readonly usbipPort: number; readonly echoPort: number; readonly busid: string }
  | StreamRequest<Workload>;

/** Client → parent: the stream replies (stream-bench.ts), and `connected` after import + SET_CONFIGURATION. */
export type ClientReply = StreamReply | { readonly ev: "connected"; readonly devid: number };

const KIB64 = 64 * 1024;
const BULK_PAIRS = 8;
const ECHO_OUTSTANDING = 8;
const EP_BULK = 1;
/** RET_SUBMIT header fields the parser reads (octets from src/usbip/protocol.ts). */
const RET_SEQNUM = 4;
const RET_STATUS = 20;
const RET_ACTUAL_LENGTH = 24;
const RET_NUMBER_OF_PACKETS = 32;

function fail(message: string): never {
  throw new Error(`usbip bench client: ${message}`);
}

function send(reply: ClientReply): void {
  process.send!(reply);
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------- setup (not measured)

/** Bytes of a socket read in exact sizes, for the import handshake only. */
class SetupReader {
  private chunks: Buffer[] = [];
  private waiter: (() => void) | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.waiter?.();
  };

  constructor(private readonly socket: net.Socket) {
    socket.on("data", this.onData);
  }

  async read(n: number): Promise<Buffer> {
    while (this.buffered() < n) {
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
      this.waiter = null;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    return all.subarray(0, n);
  }

  /** Stop reading; nothing may be left over (no URB is in flight yet). */
  detach(): void {
    this.socket.off("data", this.onData);
    if (this.buffered() !== 0) fail(`${this.buffered()} unexpected bytes after the import handshake`);
  }

  private buffered(): number {
    return this.chunks.reduce((n, c) => n + c.length, 0);
  }
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      socket.setNoDelay(true);
      socket.on("error", (err) => fail(`socket to port ${port}: ${err.message}`));
      socket.on("close", () => {
        if (!closing) fail(`port ${port} closed the connection`);
      });
      resolve(socket);
    });
  });
}

function submitPdu(
  devid: number,
  ep: number,
  directionIn: boolean,
  length: number,
  setup: Uint8Array,
  data: Uint8Array,
): Buffer {
  return asBuffer(
    encodeCmdSubmit({
      seqnum: 0,
      devid,
      directionIn,
      ep,
      transferFlags: 0,
      transferBufferLength: length,
      startFrame: 0,
      numberOfPackets: NON_ISO_PACKETS,
      interval: 0,
      setup,
      data,
      iso: [],
    }),
  );
}

/** OP_REQ_IMPORT of `busid`, then SET_CONFIGURATION(1) on ep 0; returns the devid. */
async function importDevice(socket: net.Socket, busid: string): Promise<number> {
  const reader = new SetupReader(socket);
  socket.write(encodeImportRequest(busid));
  const header = await reader.read(OP_HEADER_SIZE);
  const code = header.readUInt16BE(2);
  const status = header.readUInt32BE(4);
  if (code !== OpCode.REP_IMPORT) fail(`import reply code 0x${code.toString(16)}`);
  if (status !== OpStatus.OK) fail(`import of ${busid} refused: ${opStatusName(status)}`);
  const record = readDeviceRecord(await reader.read(DEVICE_RECORD_SIZE), 0, false);
  if (record.busid !== busid.slice(0, BUSID_SIZE - 1)) fail(`imported ${record.busid}, asked for ${busid}`);
  const id = devidOf(record);

  const setConfiguration = encodeSetup({ bmRequestType: 0, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 });
  const pdu = submitPdu(id, 0, false, 0, setConfiguration, new Uint8Array(0));
  pdu.writeUInt32BE(1, RET_SEQNUM);
  socket.write(pdu);
  const ret = await reader.read(URB_HEADER_SIZE);
  if (ret.readUInt32BE(0) !== UsbipCommand.RET_SUBMIT || ret.readUInt32BE(RET_SEQNUM) !== 1)
    fail("SET_CONFIGURATION: no RET_SUBMIT for seqnum 1");
  if (ret.readInt32BE(RET_STATUS) !== 0) fail(`SET_CONFIGURATION failed: ${ret.readInt32BE(RET_STATUS)}`);
  reader.detach();
  return id;
}

// ---------------------------------------------------------------- stream state (the hot path)

let usbip: net.Socket | null = null;
let echo: net.Socket | null = null;
let devid = 0;
let closing = false;

/** The running stream: null when idle. Items count completions; a wait is due at `target`. */
let active: Workload["kind"] | null = null;
let streaming = false;
let inflight = 0;
let items = 0;
let target = -1;
let waitItems = 0;
let waitStart = 0;

function itemDone(): void {
  if (++items === target) {
    target = -1;
    send({ ev: "waited", items: waitItems, ms: performance.now() - waitStart });
  }
}

function maybeStopped(): void {
  if (!streaming && inflight === 0 && active !== null) {
    active = null;
    send({ ev: "stopped", items });
  }
}

/**
 * USB/IP slots: slot i owns its pre-encoded PDU, which is rewritten (seqnum) only after its reply came
 * back, so a PDU Node still holds for writing is never modified. seqnum = serial << bits | slot.
 */
interface Slot {
  readonly pdu: Buffer;
  readonly directionIn: boolean;
  /** actual_length the reply must carry. */
  readonly expect: number;
  /** seqnum in flight, 0 when idle. */
  seqnum: number;
}

let slots: Slot[] = [];
let slotBits = 0;
let slotMask = 0;
let serial = 1;
let serialLimit = 1;
/** Bulk: OUT slots are [0, 8), IN slots [8, 16); submitted counts keep the drain balanced. */
let outsSubmitted = 0;
let insSubmitted = 0;

function submit(slot: number): void {
  const s = slots[slot]!;
  s.seqnum = ((serial << slotBits) | slot) >>> 0;
  serial = serial + 1 < serialLimit ? serial + 1 : 1;
  s.pdu.writeUInt32BE(s.seqnum, RET_SEQNUM);
  inflight++;
  usbip!.write(s.pdu);
}

function completeUrb(slot: number): void {
  inflight--;
  if (active === "null") {
    itemDone();
    if (streaming) submit(slot);
  } else if (slot < BULK_PAIRS) {
    if (streaming) {
      outsSubmitted++;
      submit(slot);
    }
  } else {
    itemDone();
    // Draining: INs go on until every OUT's data has been read back, so the FIFO ends empty.
    if (streaming || insSubmitted < outsSubmitted) {
      insSubmitted++;
      submit(slot);
    }
  }
  maybeStopped();
}

/** Reply parser: a header split across reads is gathered in `partial`; IN data is skipped in place. */
const partial = Buffer.alloc(URB_HEADER_SIZE);
let partialFill = 0;
let skip = 0;
let skipSlot = 0;

function onHeader(b: Buffer, at: number): void {
  const command = b.readUInt32BE(at);
  const seqnum = b.readUInt32BE(at + RET_SEQNUM);
  if (command !== UsbipCommand.RET_SUBMIT) fail(`command ${command} for seqnum ${seqnum} (want RET_SUBMIT)`);
  const slot = seqnum & slotMask;
  const s = slots[slot];
  if (s === undefined || s.seqnum !== seqnum || seqnum === 0)
    fail(`RET_SUBMIT for seqnum ${seqnum}, not sent`);
  s.seqnum = 0;
  const status = b.readInt32BE(at + RET_STATUS);
  const actual = b.readInt32BE(at + RET_ACTUAL_LENGTH);
  const packets = b.readUInt32BE(at + RET_NUMBER_OF_PACKETS);
  if (status !== 0) fail(`${active} URB (seqnum ${seqnum}) ended with status ${status}`);
  if (actual !== s.expect)
    fail(`${active} URB (seqnum ${seqnum}): actual_length ${actual}, want ${s.expect}`);
  if (packets !== 0 && packets !== NON_ISO_PACKETS) fail(`number_of_packets ${packets} on a non-iso URB`);
  if (s.directionIn && actual > 0) {
    skip = actual;
    skipSlot = slot;
  } else {
    completeUrb(slot);
  }
}

function onUsbipData(chunk: Buffer): void {
  if (active === null || active === "tcp-echo64k")
    fail(`${chunk.length} bytes from the server with no URB sent`);
  const end = chunk.length;
  let at = 0;
  usbip!.cork(); // resubmissions of this read leave in one writev
  while (at < end) {
    if (skip > 0) {
      const n = Math.min(skip, end - at);
      skip -= n;
      at += n;
      if (skip === 0) completeUrb(skipSlot);
    } else if (partialFill === 0 && end - at >= URB_HEADER_SIZE) {
      onHeader(chunk, at);
      at += URB_HEADER_SIZE;
    } else {
      const n = Math.min(URB_HEADER_SIZE - partialFill, end - at);
      chunk.copy(partial, partialFill, at, at + n);
      partialFill += n;
      at += n;
      if (partialFill === URB_HEADER_SIZE) {
        partialFill = 0;
        onHeader(partial, 0);
      }
    }
  }
  usbip!.uncork();
}

/** TCP echo: bytes written and read back; one item per 64 KiB echoed, answered by another write. */
const echoMessage = Buffer.alloc(KIB64, 0x5a);
let echoWritten = 0;
let echoRead = 0;
let echoPartial = 0;

function onEchoData(chunk: Buffer): void {
  if (active !== "tcp-echo64k") fail(`${chunk.length} bytes from the echo server with nothing written`);
  echoRead += chunk.length;
  echoPartial += chunk.length;
  if (echoRead > echoWritten) fail(`echo returned ${echoRead} bytes of ${echoWritten} written`);
  echo!.cork();
  while (echoPartial >= KIB64) {
    echoPartial -= KIB64;
    inflight--;
    itemDone();
    if (streaming) {
      inflight++;
      echoWritten += KIB64;
      echo!.write(echoMessage);
    }
  }
  echo!.uncork();
  maybeStopped();
}

// ---------------------------------------------------------------- control (IPC)

function start(w: Workload): void {
  if (active !== null) fail(`start ${w.kind} while ${active} runs`);
  active = w.kind;
  streaming = true;
  items = 0;
  target = -1;
  if (w.kind === "tcp-echo64k") {
    echoRead = echoPartial = 0;
    inflight = ECHO_OUTSTANDING;
    echoWritten = ECHO_OUTSTANDING * KIB64;
    echo!.cork();
    for (let i = 0; i < ECHO_OUTSTANDING; i++) echo!.write(echoMessage);
    echo!.uncork();
    return;
  }
  if (w.kind === "null") {
    if (!Number.isInteger(w.depth) || w.depth < 1 || (w.depth & (w.depth - 1)) !== 0)
      fail(`null depth ${w.depth} must be a power of two`);
    const resetStats = encodeSetup({ bmRequestType: 0x40, bRequest: 0x05, wValue: 0, wIndex: 0, wLength: 0 });
    const none = new Uint8Array(0);
    slots = Array.from({ length: w.depth }, () => ({
      pdu: submitPdu(devid, 0, false, 0, resetStats, none),
      directionIn: false,
      expect: 0,
      seqnum: 0,
    }));
  } else {
    const noSetup = new Uint8Array(8);
    const outs = Array.from({ length: BULK_PAIRS }, (_, i) => ({
      pdu: submitPdu(devid, EP_BULK, false, KIB64, noSetup, new Uint8Array(KIB64).fill(i + 1)),
      directionIn: false,
      expect: KIB64,
      seqnum: 0,
    }));
    const ins = Array.from({ length: BULK_PAIRS }, () => ({
      pdu: submitPdu(devid, EP_BULK, true, KIB64, noSetup, new Uint8Array(0)),
      directionIn: true,
      expect: KIB64,
      seqnum: 0,
    }));
    slots = [...outs, ...ins];
    outsSubmitted = insSubmitted = BULK_PAIRS;
  }
  slotBits = Math.log2(slots.length);
  slotMask = slots.length - 1;
  serial = 1;
  serialLimit = 2 ** (32 - slotBits);
  partialFill = skip = 0;
  inflight = 0;
  usbip!.cork();
  for (let i = 0; i < slots.length; i++) submit(i);
  usbip!.uncork();
}

async function handle(m: ClientRequest): Promise<void> {
  switch (m.cmd) {
    case "connect": {
      if (usbip !== null) fail("connect twice");
      usbip = await connect(m.usbipPort);
      devid = await importDevice(usbip, m.busid);
      usbip.on("data", onUsbipData);
      echo = await connect(m.echoPort);
      echo.on("data", onEchoData);
      send({ ev: "connected", devid });
      return;
    }
    case "start":
      if (usbip === null || echo === null) fail("start before connect");
      start(m.workload);
      send({ ev: "started" });
      return;
    case "wait":
      if (active === null || !streaming || target !== -1) fail("wait with no stream running, or twice");
      if (!Number.isInteger(m.items) || m.items < 1) fail(`wait for ${m.items} items`);
      waitItems = m.items;
      waitStart = performance.now();
      target = items + m.items;
      return;
    case "stop":
      if (active === null || !streaming) fail("stop with no stream running");
      streaming = false;
      target = -1;
      maybeStopped();
      return;
    default:
      fail(`unknown request ${JSON.stringify(m)}`);
  }
}

if (process.send === undefined) fail("run me with child_process.fork (bench/usbip.ts does)");
process.on("message", (m: unknown) => {
  handle(m as ClientRequest).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
});
process.on("disconnect", () => {
  closing = true;
  process.exit(0);
});
send({ ev: "ready" });
