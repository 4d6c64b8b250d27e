/**
 * The backend against a frontend that lies: raw slots written the way a
 * hostile guest could, each answered with an error status (never a throw),
 * and an impossible ring index that cuts this connection off.
 */
import { describe, expect, it } from "vitest";
import { UsbBackend } from "../../src/backend/backend.js";
import { createControllerHandles, URB_RING_GEOMETRY } from "../../src/connection/handles.js";
import { GrantTableOwner } from "../../src/dma-map/grant-table.js";
import { GuestMemory } from "../../src/dma-map/guest-memory.js";
import type { DomId, GrantRef, GuestFrame } from "../../src/dma-map/types.js";
import { RingFault } from "../../src/rings/faults.js";
import { FrontRing } from "../../src/rings/front-ring.js";
import { IdPool } from "../../src/rings/id-pool.js";
import { kReqProd } from "../../src/rings/layout.js";
import { decodeResponse, encodeRequest } from "../../src/urb/codec.js";
import { EMSGSIZE, ENODEV, ENOENT } from "../../src/urb/status.js";
import {
  type DevAddr,
  Direction,
  type EndpointNum,
  type PortNum,
  TransferType,
  type UrbId,
  type UrbRequest,
} from "../../src/urb/types.js";

function rig() {
  const handles = createControllerHandles({ ports: 4, memory: 256, scratchFrames: 8 });
  const backend = new UsbBackend(handles);
  const ids = new IdPool(URB_RING_GEOMETRY.slots);
  const front = new FrontRing(handles.urbRing, URB_RING_GEOMETRY, { ids });
  const memory = new GuestMemory({ regions: handles.memory });
  const grants = new GrantTableOwner({ storage: handles.grantTable, memory });
  const copy = new Uint8Array(URB_RING_GEOMETRY.slotSize);
  /** Publish raw slot bytes (written by `write`) and return the backend's answer. */
  const exchange = (write: (slot: Uint8Array) => void) => {
    const slot = front.requestSlot()!;
    const id = ids.allocate();
    write(slot);
    slot[0] = id & 0xff; // the id the frontend really has in flight
    slot[1] = id >> 8;
    slot[2] = slot[3] = 0;
    front.commitRequest();
    front.pushRequests();
    backend.poll();
    expect(front.takeResponse(copy)).toBe(true);
    return decodeResponse(copy);
  };
  return { handles, backend, front, grants, exchange };
}

const bulkIn = (over: Partial<Record<string, unknown>> = {}): UrbRequest =>
  ({
    kind: "bulk",
    id: 0 as UrbId,
    port: 1 as PortNum,
    device: 0 as DevAddr,
    endpoint: 1 as EndpointNum,
    direction: Direction.In,
    bufferLength: 512,
    buffer: { kind: "inline", segments: [{ ref: 0 as GrantRef, offset: 0, length: 512 }] },
    shortNotOk: false,
    zeroPacket: false,
    streamId: 0,
    ...over,
  }) as UrbRequest;

describe("backend against a hostile frontend", () => {
  it("answers a slot of random garbage with an error status instead of throwing", () => {
    const { exchange, backend } = rig();
    let seed = 12345;
    for (let i = 0; i < 500; i++) {
      const rsp = exchange((slot) => {
        for (let b = 0; b < slot.length; b++) {
          seed = (seed * 1103515245 + 12345) >>> 0;
          slot[b] = seed >>> 24;
        }
      });
      expect(rsp.status).toBeLessThan(0);
    }
    expect(backend.stats.rejected).toBe(500);
    expect(backend.ringFault).toBe(RingFault.NONE);
  });

  it("answers -ENODEV for a port that has no device", () => {
    const { exchange } = rig();
    expect(exchange((s) => encodeRequest(bulkIn({ port: 2 }), s)).status).toBe(ENODEV);
  });

  it("answers -EMSGSIZE for a buffer over the limit", () => {
    const { exchange } = rig();
    const rsp = exchange((s) => {
      encodeRequest(bulkIn(), s);
      s[12] = 0;
      s[13] = 0;
      s[14] = 0;
      s[15] = 0x10; // 256 MiB
    });
    expect(rsp.status).toBe(EMSGSIZE);
  });

  it("answers -ENOENT for an unlink of an id that is not in flight", () => {
    const { exchange } = rig();
    const rsp = exchange((s) =>
      encodeRequest(
        {
          kind: "unlink",
          id: 0 as UrbId,
          port: 1 as PortNum,
          device: 0 as DevAddr,
          endpoint: 1 as EndpointNum,
          direction: Direction.In,
          targetType: TransferType.Bulk,
          unlinkId: 200 as UrbId,
        },
        s,
      ),
    );
    expect(rsp.status).toBe(ENOENT);
  });

  it("answers -ENODEV to a SET_ADDRESS on an empty port", () => {
    const { exchange } = rig();
    const rsp = exchange((s) =>
      encodeRequest(
        {
          kind: "control",
          id: 0 as UrbId,
          port: 1 as PortNum,
          device: 0 as DevAddr,
          endpoint: 0 as EndpointNum,
          direction: Direction.Out,
          bufferLength: 0,
          buffer: { kind: "none" },
          shortNotOk: false,
          setup: { bmRequestType: 0, bRequest: 5, wValue: 300, wIndex: 0, wLength: 0 },
        },
        s,
      ),
    );
    expect(rsp.status).toBe(ENODEV);
  });

  it("never pins a grant for a request it rejects", () => {
    const { exchange, grants, handles } = rig();
    const ref = grants.grant(handles.backendDomid as DomId, 10 as GuestFrame, 1, false);
    const rsp = exchange((s) =>
      encodeRequest(
        bulkIn({ port: 3, buffer: { kind: "inline", segments: [{ ref, offset: 0, length: 512 }] } }),
        s,
      ),
    );
    expect(rsp.status).toBe(ENODEV);
    expect(grants.tryRevoke(ref)).toBe(true);
  });

  it("latches a fault and stops consuming when reqProd is impossible", () => {
    const { handles, backend } = rig();
    Atomics.store(new Int32Array(handles.urbRing), kReqProd, 100_000);
    const events: string[] = [];
    backend.onEvent((e) => events.push(e.type));
    backend.poll();
    backend.poll();
    expect(backend.ringFault).toBe(RingFault.REQUEST_PROD_OVERFLOW);
    expect(events).toEqual(["ring-fault"]); // reported once
    expect(backend.stats.requests).toBe(0);
  });
});
