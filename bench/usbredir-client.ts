/**
 * The usbredir bench's client, a usb-guest in a process of its own (bench/usbredir.ts forks it and
 * drives it over IPC, as bench/usbip.ts does its USB/IP client), so the server's process is measured
 * alone. It connects the way QEMU does (src/usbredir/client.ts: hellos with QEMU 7's capabilities,
 * ep_info, interface_info, device_connect; the server configures the device itself), then takes the
 * socket over and runs one stream at a time, each packet resubmitted as soon as its reply is in:
 * null control packets (loopback RESET_STATS, bmRequestType 0x40, bRequest 0x05, no data) at a given
 * depth, or 64 KiB bulk loopback (8 OUT on 0x01 + 8 IN on 0x81).
 * Lean on purpose, so it never is the bottleneck: packets are encoded once per slot and only their id
 * is patched; replies are parsed in place (the layouts below, from src/usbredir/protocol.ts with 64-bit
 * ids and 32-bit bulk lengths) and IN data is skipped, not copied. Anything unexpected throws, and the
 * process exits non-zero with the message. It exits when the parent goes.
 */
import type net from "node:net";
import { performance } from "node:perf_hooks";
import { UsbredirClient } from "../src/usbredir/client.js";
import {
  dataOf,
  encodeBulkPacket,
  encodeControlPacket,
  hasCap,
  ID_ZERO,
  type Negotiated,
  RedirCap,
  RedirEpType,
  RedirType,
  redirTypeName,
} from "../src/usbredir/protocol.js";
import type { StreamReply, StreamRequest } from "./stream-bench.js";

export type Workload = { readonly kind: "null"; readonly depth: number } | { readonly kind: "bulk64k" };

/** Parent → client, one at a time; each is answered by the reply named in `ClientReply`. */
export type ClientRequest = { readonly cmd: "connect"; readonly port: number } | StreamRequest<Workload>;

/** Client → parent: the stream replies (stream-bench.ts), and `connected` once the device is announced. */
export type ClientReply = StreamReply | { readonly ev: "connected"; readonly vendorId: number };

const KIB64 = 64 * 1024;
const BULK_PAIRS = 8;
const EP_BULK_OUT = 0x01;
const EP_BULK_IN = 0x81;
/**
 * A reply as the host sends it here: `type u32, length u32, id_low u32, id_high u32`, then the type
 * header (control_packet and bulk_packet both 10 bytes), then data (IN replies only).
 *   control: endpoint u8 @16, request u8, requesttype u8, status u8 @19, value u16, index u16, length u16 @24
 *   bulk:    endpoint u8 @16, status u8 @17, length u16 @18, stream_id u32, length_high u16 @24
 */
const HEADER_SIZE = 16;
const TYPE_HEADER_SIZE = 10;
const REPLY_SIZE = HEADER_SIZE + TYPE_HEADER_SIZE;
const AT_LENGTH = 4;
const AT_ID_LOW = 8;
const AT_ID_HIGH = 12;
const AT_CONTROL_STATUS = 19;
const AT_CONTROL_LENGTH = 24;
const AT_BULK_STATUS = 17;
const AT_BULK_LENGTH = 18;
const AT_BULK_LENGTH_HIGH = 24;

function fail(message: string): never {
  throw new Error(`usbredir bench client: ${message}`);
}

function send(reply: ClientReply): void {
  process.send!(reply);
}

// ---------------------------------------------------------------- setup (not measured)

let socket: net.Socket | null = null;
let negotiated: Negotiated | null = null;
let closing = false;

/** Connect as QEMU would, wait for device_connect, check the loopback's bulk pair, take the socket over. */
async function connectGuest(port: number): Promise<number> {
  const guest = await UsbredirClient.connect(port, { version: "usbvirt bench guest" });
  const n = guest.negotiated!;
  if (!hasCap(n.caps, RedirCap.IDS_64BIT) || !hasCap(n.caps, RedirCap.BULK_LENGTH_32BIT))
    fail(`the host did not negotiate 64-bit ids and 32-bit bulk lengths (caps 0x${n.caps.toString(16)})`);
  for (const ep of [EP_BULK_OUT, EP_BULK_IN]) {
    if (guest.endpoints.get(ep)?.type !== RedirEpType.BULK) fail(`endpoint 0x${ep.toString(16)} is not bulk`);
  }
  // From here on the stream parser below reads the socket; nothing may be left in the setup reader.
  const s = guest.socket;
  s.removeAllListeners("data");
  if (guest.reader.pending !== 0) fail(`${guest.reader.pending} unexpected bytes after device_connect`);
  s.on("error", (err) => fail(`socket: ${err.message}`));
  s.on("close", () => {
    if (!closing) fail("the host closed the connection");
  });
  socket = s;
  negotiated = n;
  return guest.device!.vendorId;
}

// ---------------------------------------------------------------- stream state (the hot path)

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
 * Slots: slot i owns its pre-encoded packet, whose id is rewritten only after its reply came back, so
 * a packet Node still holds for writing is never modified. id = serial << bits | slot (high word 0).
 */
interface Slot {
  readonly pkt: Buffer;
  readonly type: number;
  readonly directionIn: boolean;
  /** The length the reply must carry. */
  readonly expect: number;
  /** id in flight, 0 when idle. */
  id: number;
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
  s.id = ((serial << slotBits) | slot) >>> 0;
  serial = serial + 1 < serialLimit ? serial + 1 : 1;
  s.pkt.writeUInt32LE(s.id, AT_ID_LOW);
  inflight++;
  socket!.write(s.pkt);
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
const partial = Buffer.alloc(REPLY_SIZE);
let partialFill = 0;
let skip = 0;
let skipSlot = 0;

function onReply(b: Buffer, at: number): void {
  const type = b.readUInt32LE(at);
  const id = b.readUInt32LE(at + AT_ID_LOW);
  const slot = id & slotMask;
  const s = slots[slot];
  if (s === undefined || s.id !== id || id === 0 || b.readUInt32LE(at + AT_ID_HIGH) !== 0)
    fail(`${redirTypeName(type)} for id ${b.readUInt32LE(at + AT_ID_HIGH)}:${id}, not sent`);
  if (type !== s.type) fail(`${redirTypeName(type)} for id ${id}, want ${redirTypeName(s.type)}`);
  s.id = 0;
  let status: number;
  let length: number;
  if (type === RedirType.CONTROL_PACKET) {
    status = b[at + AT_CONTROL_STATUS]!;
    length = b.readUInt16LE(at + AT_CONTROL_LENGTH);
  } else {
    status = b[at + AT_BULK_STATUS]!;
    length = b.readUInt16LE(at + AT_BULK_LENGTH) + b.readUInt16LE(at + AT_BULK_LENGTH_HIGH) * 0x10000;
  }
  const data = b.readUInt32LE(at + AT_LENGTH) - TYPE_HEADER_SIZE;
  if (status !== 0) fail(`${active} packet (id ${id}) ended with status ${status}`);
  if (length !== s.expect) fail(`${active} packet (id ${id}): length ${length}, want ${s.expect}`);
  if (data !== (s.directionIn ? length : 0)) fail(`${active} reply (id ${id}) carries ${data} data bytes`);
  if (data > 0) {
    skip = data;
    skipSlot = slot;
  } else {
    completeUrb(slot);
  }
}

function onData(chunk: Buffer): void {
  if (active === null) fail(`${chunk.length} bytes from the host with no packet sent`);
  const end = chunk.length;
  let at = 0;
  socket!.cork(); // resubmissions of this read leave in one writev
  while (at < end) {
    if (skip > 0) {
      const n = Math.min(skip, end - at);
      skip -= n;
      at += n;
      if (skip === 0) completeUrb(skipSlot);
    } else if (partialFill === 0 && end - at >= REPLY_SIZE) {
      onReply(chunk, at);
      at += REPLY_SIZE;
    } else {
      const n = Math.min(REPLY_SIZE - partialFill, end - at);
      chunk.copy(partial, partialFill, at, at + n);
      partialFill += n;
      at += n;
      if (partialFill === REPLY_SIZE) {
        partialFill = 0;
        onReply(partial, 0);
      }
    }
  }
  socket!.uncork();
}

// ---------------------------------------------------------------- control (IPC)

function bulkSlot(endpoint: number, fill: number): Slot {
  const n = negotiated!;
  const directionIn = (endpoint & 0x80) !== 0;
  const pkt = encodeBulkPacket(n, ID_ZERO, endpoint, 0, KIB64, directionIn ? 0 : KIB64);
  if (!directionIn) dataOf(n, pkt, TYPE_HEADER_SIZE).fill(fill);
  return { pkt, type: RedirType.BULK_PACKET, directionIn, expect: KIB64, id: 0 };
}

function start(w: Workload): void {
  if (active !== null) fail(`start ${w.kind} while ${active} runs`);
  active = w.kind;
  streaming = true;
  items = 0;
  target = -1;
  if (w.kind === "null") {
    if (!Number.isInteger(w.depth) || w.depth < 1 || (w.depth & (w.depth - 1)) !== 0)
      fail(`null depth ${w.depth} must be a power of two`);
    const resetStats = {
      endpoint: 0,
      request: 0x05,
      requestType: 0x40,
      status: 0,
      value: 0,
      index: 0,
      length: 0,
    };
    slots = Array.from({ length: w.depth }, () => ({
      pkt: encodeControlPacket(negotiated!, ID_ZERO, resetStats, 0),
      type: RedirType.CONTROL_PACKET,
      directionIn: false,
      expect: 0,
      id: 0,
    }));
  } else {
    const outs = Array.from({ length: BULK_PAIRS }, (_, i) => bulkSlot(EP_BULK_OUT, i + 1));
    const ins = Array.from({ length: BULK_PAIRS }, () => bulkSlot(EP_BULK_IN, 0));
    slots = [...outs, ...ins];
    outsSubmitted = insSubmitted = BULK_PAIRS;
  }
  slotBits = Math.log2(slots.length);
  slotMask = slots.length - 1;
  serial = 1;
  serialLimit = 2 ** (32 - slotBits);
  partialFill = skip = 0;
  inflight = 0;
  socket!.cork();
  for (let i = 0; i < slots.length; i++) submit(i);
  socket!.uncork();
}

async function handle(m: ClientRequest): Promise<void> {
  switch (m.cmd) {
    case "connect": {
      if (socket !== null) fail("connect twice");
      const vendorId = await connectGuest(m.port);
      socket!.on("data", onData);
      send({ ev: "connected", vendorId });
      return;
    }
    case "start":
      if (socket === null) fail("start before connect");
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

if (process.send === undefined) fail("run me with child_process.fork (bench/usbredir.ts does)");
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
