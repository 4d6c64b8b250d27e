/**
 * Shared set-up for frontend tests: a controller and a fake backend over one
 * connection's handles, a pump that alternates them until both are idle, and
 * URB builders over guest memory.
 */

import { type ControllerHandles, createControllerHandles } from "../../src/connection/handles.js";
import { GuestMemory } from "../../src/dma-map/guest-memory.js";
import type { GuestOffset } from "../../src/dma-map/types.js";
import { VirtualHostController } from "../../src/frontend/controller.js";
import type { BufferSegment, ControllerOptions, Urb } from "../../src/frontend/types.js";
import type { EndpointNum } from "../../src/urb/types.js";
import { UsbSpeed } from "../../src/usb/index.js";
import { addr, port } from "../support/brands.js";
import { tick } from "../support/eventually.js";
import { FakeBackend, type FakeMode } from "./fake-backend.js";

export const FRAME = 4096;

export interface Rig {
  readonly handles: ControllerHandles;
  readonly hc: VirtualHostController;
  readonly fake: FakeBackend;
  readonly memory: GuestMemory;
}

export function rig(mode: FakeMode = "normal", options: ControllerOptions = {}): Rig {
  const handles = createControllerHandles({ ports: 4, memory: 2048, scratchFrames: 16, grantEntries: 4096 });
  const hc = new VirtualHostController(handles, { maxSpinMicros: 0, ...options });
  const fake = new FakeBackend(handles, mode);
  return { handles, hc, fake, memory: new GuestMemory({ regions: handles.memory }) };
}

/** Alternate backend and frontend until neither has anything to do twice in a row (bounded). */
export async function pump(r: Rig, maxRounds = 200): Promise<void> {
  let idle = 0;
  for (let round = 0; round < maxRounds && idle < 2; round++) {
    const work = r.fake.step() + r.hc.poll();
    await tick();
    idle = work === 0 ? idle + 1 : 0;
  }
}

export const ep = (n: number) => n as EndpointNum;
export const at = (n: number) => n as GuestOffset;

export function seg(offset: number, length: number): BufferSegment {
  return { offset: at(offset), length };
}

export function bulk(
  p: number,
  device: number,
  endpoint: number,
  directionIn: boolean,
  buffer: BufferSegment[],
): Urb {
  return { type: "bulk", port: port(p), device: addr(device), endpoint: ep(endpoint), directionIn, buffer };
}

/** Guest bytes [offset, offset + length) as a view. */
export function guest(r: Rig, offset: number, length: number): Uint8Array {
  return r.memory.regionView(0).subarray(offset, offset + length);
}

/** Plug a device, reset its port and give it `address`, as a hub driver would. */
export async function enumerate(
  r: Rig,
  p: number,
  address: number,
  speed: UsbSpeed = UsbSpeed.HIGH,
): Promise<void> {
  r.fake.plug(p, speed);
  await pump(r);
  const reset = r.hc.resetPort(p);
  await pump(r);
  await reset;
  const set = r.hc.submit({
    type: "control",
    port: port(p),
    device: addr(0),
    endpoint: ep(0),
    directionIn: false,
    setup: { bmRequestType: 0, bRequest: 5, wValue: address, wIndex: 0, wLength: 0 },
  });
  await pump(r);
  const done = await set;
  if (done.status !== 0) throw new Error(`SET_ADDRESS failed with ${done.status}`);
}
