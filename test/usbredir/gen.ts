/**
 * Generators of valid usbredir streams for the property and fuzz tests: what a usb-guest (QEMU) sends
 * after its hello — control, bulk and interrupt packets, set/get_configuration, start/stop of interrupt
 * receiving, cancels, filters — and what a usb-host sends back. Data packets get ids {low: n, high: 1};
 * the host's unsolicited packets (interrupt receiving) use high 0, as the server does.
 */
import fc from "fast-check";
import { QEMU_GUEST_CAPS } from "../../src/usbredir/client.js";
import {
  dataOf,
  encodeBulkPacket,
  encodeBytes,
  encodeControlPacket,
  encodeDeviceConnect,
  encodeEmpty,
  encodeEpInfo,
  encodeFilter,
  encodeHello,
  encodeInterfaceInfo,
  encodeSmallDataPacket,
  encodeStatusPair,
  type Negotiated,
  negotiate,
  RedirEpType,
  RedirType,
} from "../../src/usbredir/protocol.js";
import { HOST_CAPS } from "../../src/usbredir/server.js";

/** What the server and a QEMU-like guest use after their hellos (64-bit ids, 32-bit bulk lengths). */
export const NEGOTIATED: Negotiated = negotiate(HOST_CAPS, QEMU_GUEST_CAPS);
export const GUEST_HELLO = encodeHello("usbvirt fuzz guest", QEMU_GUEST_CAPS);

export const guestOpArb = fc.oneof(
  fc.record({ k: fc.constant("getdesc" as const), len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ k: fc.constant("ctrlwrite" as const), data: fc.uint8Array({ maxLength: 64 }) }),
  fc.record({ k: fc.constant("bulkout" as const), data: fc.uint8Array({ minLength: 1, maxLength: 2048 }) }),
  fc.record({ k: fc.constant("bulkin" as const), len: fc.integer({ min: 1, max: 2048 }) }),
  fc.record({
    k: fc.constant("intout" as const),
    ep: fc.constantFrom(0x02, 0x82),
    data: fc.uint8Array({ maxLength: 8 }),
  }),
  fc.record({ k: fc.constant("setconfig" as const), value: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ k: fc.constant("getconfig" as const) }),
  fc.record({ k: fc.constant("startint" as const), ep: fc.constantFrom(0x82, 0x81, 0x02) }),
  fc.record({ k: fc.constant("stopint" as const), ep: fc.constantFrom(0x82, 0x81) }),
  fc.record({ k: fc.constant("cancel" as const), back: fc.nat({ max: 5 }) }),
  fc.record({ k: fc.constant("filter" as const), text: fc.string({ maxLength: 40 }) }),
  // An earlier control or bulk packet again, id and all (an id reused, perhaps while in flight).
  fc.record({ k: fc.constant("repeat" as const), back: fc.nat({ max: 3 }) }),
);
export type GuestOp = typeof guestOpArb extends fc.Arbitrary<infer T> ? T : never;

/** The guest's packets for `ops` (after the hello), one buffer each. */
export function encodeGuestOps(ops: readonly GuestOp[], n: Negotiated = NEGOTIATED): Uint8Array[] {
  const out: Uint8Array[] = [];
  const transfers: Uint8Array[] = [];
  let seq = 0;
  for (const op of ops) {
    const id = { low: ++seq, high: 1 };
    switch (op.k) {
      case "repeat": {
        const again = transfers[transfers.length - 1 - op.back];
        out.push(again ?? encodeBytes(n, RedirType.GET_CONFIGURATION, id, []));
        continue;
      }
      case "getdesc":
        out.push(
          encodeControlPacket(
            n,
            id,
            {
              endpoint: 0x80,
              request: 6,
              requestType: 0x80,
              status: 0,
              value: 0x100,
              index: 0,
              length: op.len,
            },
            0,
          ),
        );
        break;
      case "ctrlwrite": {
        const pkt = encodeControlPacket(
          n,
          id,
          {
            endpoint: 0,
            request: 1,
            requestType: 0x40,
            status: 0,
            value: 0,
            index: 0,
            length: op.data.length,
          },
          op.data.length,
        );
        dataOf(n, pkt, 10).set(op.data);
        out.push(pkt);
        break;
      }
      case "bulkout": {
        const pkt = encodeBulkPacket(n, id, 0x01, 0, op.data.length, op.data.length);
        dataOf(n, pkt, n.headerSize === 16 ? 10 : 8).set(op.data);
        out.push(pkt);
        break;
      }
      case "bulkin":
        out.push(encodeBulkPacket(n, id, 0x81, 0, op.len, 0));
        break;
      case "intout": {
        const carries = (op.ep & 0x80) === 0 ? op.data.length : 0;
        const pkt = encodeSmallDataPacket(
          n,
          RedirType.INTERRUPT_PACKET,
          id,
          op.ep,
          0,
          op.data.length,
          carries,
        );
        dataOf(n, pkt, 4).set(op.data.subarray(0, carries));
        out.push(pkt);
        break;
      }
      case "setconfig":
        out.push(encodeBytes(n, RedirType.SET_CONFIGURATION, id, [op.value]));
        break;
      case "getconfig":
        out.push(encodeBytes(n, RedirType.GET_CONFIGURATION, id, []));
        break;
      case "startint":
        out.push(encodeBytes(n, RedirType.START_INTERRUPT_RECEIVING, id, [op.ep]));
        break;
      case "stopint":
        out.push(encodeBytes(n, RedirType.STOP_INTERRUPT_RECEIVING, id, [op.ep]));
        break;
      case "cancel":
        out.push(encodeEmpty(n, RedirType.CANCEL_DATA_PACKET, Math.max(1, seq - 1 - op.back), 1));
        break;
      case "filter":
        out.push(encodeFilter(n, op.text.replaceAll("\0", "")));
        break;
    }
    if (op.k === "getdesc" || op.k === "ctrlwrite" || op.k === "bulkout" || op.k === "bulkin")
      transfers.push(out[out.length - 1]!);
  }
  return out;
}

export const hostOpArb = fc.oneof(
  fc.record({ k: fc.constant("ctrlin" as const), data: fc.uint8Array({ maxLength: 64 }) }),
  fc.record({ k: fc.constant("bulkin" as const), data: fc.uint8Array({ maxLength: 3000 }) }),
  fc.record({ k: fc.constant("bulkout" as const), len: fc.nat({ max: 100_000 }) }),
  fc.record({ k: fc.constant("interrupt" as const), data: fc.uint8Array({ maxLength: 8 }) }),
  fc.record({ k: fc.constant("status" as const), status: fc.nat({ max: 6 }) }),
  fc.record({ k: fc.constant("disconnect" as const) }),
);
export type HostOp = typeof hostOpArb extends fc.Arbitrary<infer T> ? T : never;

/** A host's stream after its hello: the device info, then `ops`. */
export function encodeHostOps(ops: readonly HostOp[], n: Negotiated = NEGOTIATED): Uint8Array[] {
  const out: Uint8Array[] = [
    encodeEpInfo(
      n,
      new Map([
        [0x81, { type: RedirEpType.BULK, interval: 0, interface: 0, maxPacketSize: 512, maxStreams: 0 }],
      ]),
    ),
    encodeInterfaceInfo(n, [{ number: 0, cls: 0xff, subclass: 0, protocol: 0 }]),
    encodeDeviceConnect(n, {
      speed: 2,
      deviceClass: 0,
      deviceSubClass: 0,
      deviceProtocol: 0,
      vendorId: 0x1209,
      productId: 1,
      bcdDevice: 0x100,
    }),
  ];
  let seq = 0;
  for (const op of ops) {
    const id = { low: ++seq, high: 1 };
    switch (op.k) {
      case "ctrlin": {
        const c = { endpoint: 0x80, request: 6, requestType: 0x80, status: 0, value: 0x100, index: 0 };
        const pkt = encodeControlPacket(n, id, { ...c, length: op.data.length }, op.data.length);
        dataOf(n, pkt, 10).set(op.data);
        out.push(pkt);
        break;
      }
      case "bulkin": {
        const pkt = encodeBulkPacket(n, id, 0x81, 0, op.data.length, op.data.length);
        dataOf(n, pkt, 10).set(op.data);
        out.push(pkt);
        break;
      }
      case "bulkout":
        out.push(encodeBulkPacket(n, id, 0x01, 0, op.len, 0));
        break;
      case "interrupt": {
        const pkt = encodeSmallDataPacket(
          n,
          RedirType.INTERRUPT_PACKET,
          { low: seq, high: 0 },
          0x82,
          0,
          op.data.length,
          op.data.length,
        );
        dataOf(n, pkt, 4).set(op.data);
        out.push(pkt);
        break;
      }
      case "status":
        out.push(encodeStatusPair(n, RedirType.INTERRUPT_RECEIVING_STATUS, id, op.status, 0x82));
        break;
      case "disconnect":
        out.push(encodeEmpty(n, RedirType.DEVICE_DISCONNECT));
        break;
    }
  }
  return out;
}

/** Cut `stream` into chunks at the given points (taken modulo its length, sorted, deduplicated). */
export function splitAt(stream: Uint8Array, points: readonly number[]): Uint8Array[] {
  const cuts = [...new Set(points.map((p) => (stream.length === 0 ? 0 : p % stream.length)))].sort(
    (a, b) => a - b,
  );
  const out: Uint8Array[] = [];
  let at = 0;
  for (const c of cuts) {
    if (c > at) out.push(stream.subarray(at, c));
    at = Math.max(at, c);
  }
  out.push(stream.subarray(at));
  return out;
}
