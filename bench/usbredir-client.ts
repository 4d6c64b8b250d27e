/**
 * The usbredir bench's client, a usb-guest in a process of its own (bench/usbredir.ts forks it and
 * drives it over IPC, as bench/usbip.ts does its USB/IP client), so the server's process is measured
 * alone. It connects the way QEMU does (src/usbredir/client.ts: hellos with QEMU 7's capabilities,
 * ep_info, interface_info, device_connect; the server configures the device itself), then takes the
 * socket over and runs one stream at a time, each packet resubmitted as soon as its reply is in:
 * null control packets (loopback RESET_STATS, bmRequestType 0x40, bRequest 0x05, no data) at a given
 * depth, or 64 KiB bulk loopback (8 OUT on 0x01 + 8 IN on 0x81, or the pairs the workload asks for).
 * Lean on purpose, so it never is the bottleneck: packets are encoded once per slot and only their id
 * is patched; replies are parsed in place (the layouts below, from src/usbredir/protocol.ts with 64-bit
 * ids and 32-bit bulk lengths) and IN data is skipped, not copied. Anything unexpected throws, and the
 * process exits non-zero with the message. It exits when the parent goes. The stream machinery it
 * shares with bench/usbip-client.ts is in stream-client.ts.
 */

import type net from "node:net";
import tls from "node:tls";
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
import { SlotStream, type StreamSlot, StreamState, serveParent } from "./stream-client.js";
import type { ClientTls } from "./tls-certs.js";

export type Workload =
  | { readonly kind: "null"; readonly depth: number }
  | { readonly kind: "bulk64k"; readonly pairs?: number };

/** Parent → client, one at a time; each is answered by the reply named in `ClientReply`. */
export type ClientRequest =
  /** `tls`: connect with mutual TLS. */
  { readonly cmd: "connect"; readonly port: number; readonly tls?: ClientTls } | StreamRequest<Workload>;

/** Client → parent: the stream replies (stream-bench.ts), and `connected` once the device is announced. */
export type ClientReply = StreamReply | { readonly ev: "connected"; readonly vendorId: number };

const KIB64 = 64 * 1024;
/** Bulk pairs in flight unless the workload says (a power of two). */
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

/** Connect as QEMU would, wait for device_connect, check the loopback's bulk pair, take the socket over. */
async function connectGuest(port: number, secure?: ClientTls): Promise<number> {
  const options = { version: "usbvirt bench guest" };
  let guest: UsbredirClient;
  if (secure === undefined) guest = await UsbredirClient.connect(port, options);
  else {
    const s = tls.connect({ host: "127.0.0.1", port, ...secure, minVersion: "TLSv1.3" });
    await new Promise<void>((resolve, reject) => {
      s.once("secureConnect", resolve);
      s.once("error", reject);
    });
    s.setNoDelay(true);
    guest = await UsbredirClient.over(s, options);
  }
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
    if (!state.closing) fail("the host closed the connection");
  });
  socket = s;
  negotiated = n;
  return guest.device!.vendorId;
}

// ---------------------------------------------------------------- stream (the hot path)

const state = new StreamState<Workload["kind"]>(fail, send);

/** usbredir slots (stream-client.ts): the tag is the id's low word (the high word is 0). */
interface Slot extends StreamSlot {
  readonly type: number;
}

const stream = new SlotStream<Slot>(state, { at: AT_ID_LOW, littleEndian: true }, REPLY_SIZE, onReply);

/** A data packet's reply header: checked against the slot its id names; IN data is skipped in place. */
function onReply(b: Buffer, at: number): void {
  const type = b.readUInt32LE(at);
  const id = b.readUInt32LE(at + AT_ID_LOW);
  const slot = stream.slotOf(id);
  if (slot < 0 || b.readUInt32LE(at + AT_ID_HIGH) !== 0)
    fail(`${redirTypeName(type)} for id ${b.readUInt32LE(at + AT_ID_HIGH)}:${id}, not sent`);
  const s = stream.slots[slot]!;
  if (type !== s.type) fail(`${redirTypeName(type)} for id ${id}, want ${redirTypeName(s.type)}`);
  s.tag = 0;
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
  if (status !== 0) fail(`${state.active} packet (id ${id}) ended with status ${status}`);
  if (length !== s.expect) fail(`${state.active} packet (id ${id}): length ${length}, want ${s.expect}`);
  if (data !== (s.directionIn ? length : 0))
    fail(`${state.active} reply (id ${id}) carries ${data} data bytes`);
  if (data > 0) stream.skipThen(data, slot);
  else stream.complete(slot);
}

// ---------------------------------------------------------------- control (IPC)

function bulkSlot(endpoint: number, fill: number): Slot {
  const n = negotiated!;
  const directionIn = (endpoint & 0x80) !== 0;
  const pkt = encodeBulkPacket(n, ID_ZERO, endpoint, 0, KIB64, directionIn ? 0 : KIB64);
  if (!directionIn) dataOf(n, pkt, TYPE_HEADER_SIZE).fill(fill);
  return { pdu: pkt, type: RedirType.BULK_PACKET, directionIn, expect: KIB64, tag: 0 };
}

function start(w: Workload): void {
  state.begin(w.kind);
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
    const slots = Array.from({ length: w.depth }, () => ({
      pdu: encodeControlPacket(negotiated!, ID_ZERO, resetStats, 0),
      type: RedirType.CONTROL_PACKET,
      directionIn: false,
      expect: 0,
      tag: 0,
    }));
    stream.load(slots, 0);
  } else {
    const pairs = w.pairs ?? BULK_PAIRS;
    if (!Number.isInteger(pairs) || pairs < 1 || (pairs & (pairs - 1)) !== 0)
      fail(`bulk pairs ${pairs} must be a power of two`);
    const outs = Array.from({ length: pairs }, (_, i) => bulkSlot(EP_BULK_OUT, i + 1));
    const ins = Array.from({ length: pairs }, () => bulkSlot(EP_BULK_IN, 0));
    stream.load([...outs, ...ins], pairs);
  }
}

async function handle(m: ClientRequest): Promise<void> {
  switch (m.cmd) {
    case "connect": {
      if (socket !== null) fail("connect twice");
      const vendorId = await connectGuest(m.port, m.tls);
      stream.attach(socket!);
      send({ ev: "connected", vendorId });
      return;
    }
    case "start":
      if (socket === null) fail("start before connect");
      start(m.workload);
      send({ ev: "started" });
      return;
    default:
      fail(`unknown request ${JSON.stringify(m)}`);
  }
}

serveParent<ClientRequest>("bench/usbredir.ts", state, send, handle);
