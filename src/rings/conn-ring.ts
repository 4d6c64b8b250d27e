/**
 * The conn ring: port connection events from the backend to the frontend
 * (usbif.h's conn ring). As in Xen the frontend pre-posts request ids and the
 * backend answers one of them per event, so the same checked ring carries it.
 *
 *   request (8 bytes)            response (8 bytes)
 *   0  id u32                    0  id u32
 *   4  reserved, 0               4  port u8 (1..31)
 *                                5  speed u8 (UsbSpeed)
 *                                6  reserved u16, 0
 *
 * The frontend checks every event: an id it did not post, a port outside its
 * root hub or an unknown speed latches a fault, like any impossible ring state.
 */

import { UsbSpeed } from "../usb/index.js";
import { BackRing } from "./back-ring.js";
import { RingFault } from "./faults.js";
import { FrontRing } from "./front-ring.js";
import { IdPool } from "./id-pool.js";
import { createRingBuffer, type RingGeometry } from "./layout.js";

export const CONN_SLOT_SIZE = 8;
export const CONN_RING_SLOTS = 256;
export const CONN_RING_GEOMETRY: RingGeometry = { slots: CONN_RING_SLOTS, slotSize: CONN_SLOT_SIZE };
export const MAX_PORTS = 31;

export interface ConnEvent {
  readonly port: number;
  readonly speed: UsbSpeed;
}

export function createConnRingBuffer(): SharedArrayBuffer {
  return createRingBuffer(CONN_RING_GEOMETRY);
}

function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

/** Frontend end: keeps every slot pre-posted, turns answers into checked events. */
export class ConnFront {
  readonly ring: FrontRing;
  private readonly ids = new IdPool(CONN_RING_SLOTS);
  private readonly copy = new Uint8Array(CONN_SLOT_SIZE);

  constructor(
    sab: SharedArrayBuffer,
    private readonly ports: number,
  ) {
    this.ring = new FrontRing(sab, CONN_RING_GEOMETRY, { ids: this.ids });
  }

  /** Post every free id; returns whether the backend asked to be notified. */
  postAll(): boolean {
    for (;;) {
      const slot = this.ring.requestSlot();
      if (slot === null) break;
      const id = this.ids.allocate();
      if (id < 0) break;
      slot.fill(0);
      writeU32(slot, 0, id);
      this.ring.commitRequest();
    }
    return this.ring.pushRequests();
  }

  /** Next event, or null when none is ready or the ring is faulted (see ring.fault). */
  takeEvent(): ConnEvent | null {
    if (!this.ring.takeResponse(this.copy)) return null;
    const port = this.copy[4]!;
    const speed = this.copy[5]!;
    if (port < 1 || port > this.ports || speed > UsbSpeed.SUPER) {
      this.ring.latch(RingFault.PEER_PROTOCOL_VIOLATION);
      return null;
    }
    return { port, speed: speed as UsbSpeed };
  }
}

/** Backend end: answers one pre-posted request per event. */
export class ConnBack {
  readonly ring: BackRing;
  private readonly copy = new Uint8Array(CONN_SLOT_SIZE);

  constructor(sab: SharedArrayBuffer) {
    this.ring = new BackRing(sab, CONN_RING_GEOMETRY);
  }

  /**
   * Send one event. False when the frontend has no request posted (the
   * caller keeps the event queued and retries when the frontend re-posts).
   * Call push() to publish.
   */
  postEvent(event: ConnEvent): boolean {
    if (!Number.isInteger(event.port) || event.port < 1 || event.port > MAX_PORTS) {
      throw new RangeError(`conn event port ${event.port} outside 1..${MAX_PORTS}`);
    }
    if (!this.ring.takeRequest(this.copy)) return false;
    const slot = this.ring.responseSlot();
    // The id is echoed as is: the frontend checks it against what it posted.
    slot.set(this.copy.subarray(0, 4), 0);
    slot[4] = event.port;
    slot[5] = event.speed;
    slot[6] = 0;
    slot[7] = 0;
    this.ring.commitResponse();
    return true;
  }

  /** Publish posted events; true when the frontend asked to be woken. */
  push(): boolean {
    return this.ring.pushResponses();
  }
}
