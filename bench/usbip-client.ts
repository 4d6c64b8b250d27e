/**
 * The usbip bench's client, a process of its own (bench/usbip.ts forks it and drives it over IPC), so
 * the server's process is measured alone. It imports busid 1-1 and configures it (as vhci's USB core
 * would), then runs one stream at a time, each PDU resubmitted as soon as its reply is in:
 * null control URBs (RESET_STATS) at a given depth, 64 KiB bulk loopback (8 OUT + 8 IN, or the pairs
 * the workload asks for), or 64 KiB
 * writes to a plain TCP echo server (8 outstanding). Lean on purpose, so it never is the bottleneck:
 * PDUs are encoded once per slot and only their seqnum is patched; replies are parsed in place (see
 * the RET_SUBMIT layout in src/usbip/urb-pdus.ts) and IN data is skipped, not copied. Anything
 * unexpected throws, and the process exits non-zero with the message. It exits when the parent goes.
 * The stream machinery it shares with bench/usbredir-client.ts is in stream-client.ts.
 */
import net from "node:net";
import tls from "node:tls";
import { encodeSetup } from "../src/usb/index.js";
import { devidOf, readDeviceRecord } from "../src/usbip/device-record.js";
import { encodeImportRequest } from "../src/usbip/management-pdus.js";
import {
  BUSID_SIZE,
  DEVICE_RECORD_SIZE,
  NON_ISO_PACKETS,
  OP_HEADER_SIZE,
  OpCode,
  OpStatus,
  opStatusName,
  URB_HEADER_SIZE,
  UsbipCommand,
} from "../src/usbip/protocol.js";
import { encodeCmdSubmit } from "../src/usbip/urb-pdus.js";
import type { StreamReply, StreamRequest } from "./stream-bench.js";
import { SlotStream, type StreamSlot, StreamState, serveParent } from "./stream-client.js";
import type { ClientTls } from "./tls-certs.js";

export type Workload =
  | { readonly kind: "null"; readonly depth: number }
  | { readonly kind: "bulk64k"; readonly pairs?: number }
  | { readonly kind: "tcp-echo64k" };

/** Parent → client, one at a time; each is answered by the reply named in `ClientReply`. */
export type ClientRequest =
  | {
      readonly cmd: "connect";
      readonly usbipPort: number;
      /** The plain TCP echo server, if the tcp-echo64k stream is wanted. */
      readonly echoPort?: number;
      readonly busid: string;
      /** Connect to the server with mutual TLS (the echo server stays plain). */
      readonly tls?: ClientTls;
    }
  | StreamRequest<Workload>;

/** Client → parent: the stream replies (stream-bench.ts), and `connected` after import + SET_CONFIGURATION. */
export type ClientReply = StreamReply | { readonly ev: "connected"; readonly devid: number };

const KIB64 = 64 * 1024;
/** Bulk pairs in flight unless the workload says (a power of two). */
const BULK_PAIRS = 8;
const ECHO_OUTSTANDING = 8;
const EP_BULK = 1;
/** RET_SUBMIT header fields the parser reads (octets from src/usbip/urb-pdus.ts). */
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

function connect(port: number, secure?: ClientTls): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      secure === undefined
        ? net.connect({ host: "127.0.0.1", port })
        : tls.connect({ host: "127.0.0.1", port, ...secure, minVersion: "TLSv1.3" });
    socket.once("error", reject);
    socket.once(secure === undefined ? "connect" : "secureConnect", () => {
      socket.off("error", reject);
      socket.setNoDelay(true);
      socket.on("error", (err) => fail(`socket to port ${port}: ${err.message}`));
      socket.on("close", () => {
        if (!state.closing) fail(`port ${port} closed the connection`);
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

// ---------------------------------------------------------------- streams (the hot path)

let usbip: net.Socket | null = null;
let echo: net.Socket | null = null;
let devid = 0;

const state = new StreamState<Workload["kind"]>(fail, send);
/** USB/IP slots (stream-client.ts): the tag is the seqnum. */
const stream = new SlotStream<StreamSlot>(
  state,
  { at: RET_SEQNUM, littleEndian: false },
  URB_HEADER_SIZE,
  onHeader,
);

/** A RET_SUBMIT header: checked against the slot its seqnum names; IN data is skipped in place. */
function onHeader(b: Buffer, at: number): void {
  const command = b.readUInt32BE(at);
  const seqnum = b.readUInt32BE(at + RET_SEQNUM);
  if (command !== UsbipCommand.RET_SUBMIT) fail(`command ${command} for seqnum ${seqnum} (want RET_SUBMIT)`);
  const slot = stream.slotOf(seqnum);
  if (slot < 0) fail(`RET_SUBMIT for seqnum ${seqnum}, not sent`);
  const s = stream.slots[slot]!;
  s.tag = 0;
  const status = b.readInt32BE(at + RET_STATUS);
  const actual = b.readInt32BE(at + RET_ACTUAL_LENGTH);
  const packets = b.readUInt32BE(at + RET_NUMBER_OF_PACKETS);
  if (status !== 0) fail(`${state.active} URB (seqnum ${seqnum}) ended with status ${status}`);
  if (actual !== s.expect)
    fail(`${state.active} URB (seqnum ${seqnum}): actual_length ${actual}, want ${s.expect}`);
  if (packets !== 0 && packets !== NON_ISO_PACKETS) fail(`number_of_packets ${packets} on a non-iso URB`);
  if (s.directionIn && actual > 0) stream.skipThen(actual, slot);
  else stream.complete(slot);
}

/** TCP echo: bytes written and read back; one item per 64 KiB echoed, answered by another write. */
const echoMessage = Buffer.alloc(KIB64, 0x5a);
let echoWritten = 0;
let echoRead = 0;
let echoPartial = 0;

function onEchoData(chunk: Buffer): void {
  if (state.active !== "tcp-echo64k") fail(`${chunk.length} bytes from the echo server with nothing written`);
  echoRead += chunk.length;
  echoPartial += chunk.length;
  if (echoRead > echoWritten) fail(`echo returned ${echoRead} bytes of ${echoWritten} written`);
  echo!.cork();
  while (echoPartial >= KIB64) {
    echoPartial -= KIB64;
    state.inflight--;
    state.itemDone();
    if (state.streaming) {
      state.inflight++;
      echoWritten += KIB64;
      echo!.write(echoMessage);
    }
  }
  echo!.uncork();
  state.maybeStopped();
}

// ---------------------------------------------------------------- control (IPC)

function start(w: Workload): void {
  state.begin(w.kind);
  if (w.kind === "tcp-echo64k") {
    if (echo === null) fail("tcp-echo64k without an echo server (connect gave no echoPort)");
    stream.slots = [];
    echoRead = echoPartial = 0;
    state.inflight = ECHO_OUTSTANDING;
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
    const slots = Array.from({ length: w.depth }, () => ({
      pdu: submitPdu(devid, 0, false, 0, resetStats, none),
      directionIn: false,
      expect: 0,
      tag: 0,
    }));
    stream.load(slots, 0);
  } else {
    const pairs = w.pairs ?? BULK_PAIRS;
    if (!Number.isInteger(pairs) || pairs < 1 || (pairs & (pairs - 1)) !== 0)
      fail(`bulk pairs ${pairs} must be a power of two`);
    const noSetup = new Uint8Array(8);
    const outs = Array.from({ length: pairs }, (_, i) => ({
      pdu: submitPdu(devid, EP_BULK, false, KIB64, noSetup, new Uint8Array(KIB64).fill(i + 1)),
      directionIn: false,
      expect: KIB64,
      tag: 0,
    }));
    const ins = Array.from({ length: pairs }, () => ({
      pdu: submitPdu(devid, EP_BULK, true, KIB64, noSetup, new Uint8Array(0)),
      directionIn: true,
      expect: KIB64,
      tag: 0,
    }));
    stream.load([...outs, ...ins], pairs);
  }
}

async function handle(m: ClientRequest): Promise<void> {
  switch (m.cmd) {
    case "connect": {
      if (usbip !== null) fail("connect twice");
      usbip = await connect(m.usbipPort, m.tls);
      devid = await importDevice(usbip, m.busid);
      stream.attach(usbip);
      if (m.echoPort !== undefined) {
        echo = await connect(m.echoPort);
        echo.on("data", onEchoData);
      }
      send({ ev: "connected", devid });
      return;
    }
    case "start":
      if (usbip === null) fail("start before connect");
      start(m.workload);
      send({ ev: "started" });
      return;
    default:
      fail(`unknown request ${JSON.stringify(m)}`);
  }
}

serveParent<ClientRequest>("bench/usbip.ts", state, send, handle);
