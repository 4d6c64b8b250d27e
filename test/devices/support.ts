/**
 * Drives a UsbDevice directly (no workers): builds TransferRequests, records completions, and checks the
 * contract on every completion (never synchronous, exactly once).
 */
import { expect } from "vitest";
import type {
  IsoPacketRequest,
  TransferRequest,
  TransferResult,
  UsbDevice,
} from "../../src/devices/device.js";
import type { SetupPacket, TransferKind } from "../../src/usb/index.js";
import { tick } from "../support/eventually.js";

export interface Submitted {
  readonly handle: number;
  readonly buffer: Uint8Array;
  readonly result: Promise<TransferResult>;
  /** How many times `done` ran so far. */
  calls(): number;
}

export function request(
  kind: TransferKind,
  endpoint: number,
  directionIn: boolean,
  buffer: Uint8Array,
  extra: Partial<TransferRequest> = {},
): TransferRequest {
  return {
    kind,
    endpoint,
    directionIn,
    setup: null,
    buffer,
    shortNotOk: false,
    zeroPacket: false,
    interval: 1,
    isoPackets: null,
    streamId: 0,
    ...extra,
  };
}

/** Submit and record; fails the test if `done` runs synchronously or more than once. */
export function submit(device: UsbDevice, req: TransferRequest): Submitted {
  let calls = 0;
  let inSubmit = true;
  let resolve!: (r: TransferResult) => void;
  const result = new Promise<TransferResult>((r) => {
    resolve = r;
  });
  const handle = device.submit(req, (r) => {
    calls++;
    if (inSubmit) throw new Error("done called synchronously from submit");
    if (calls > 1) throw new Error("done called twice");
    resolve(r);
  });
  inSubmit = false;
  return { handle, buffer: req.buffer, result, calls: () => calls };
}

export function setupPacket(
  bmRequestType: number,
  bRequest: number,
  wValue: number,
  wIndex: number,
  wLength: number,
): SetupPacket {
  return { bmRequestType, bRequest, wValue, wIndex, wLength };
}

/** A control transfer; for IN `data` is the wLength, for OUT the bytes sent. */
export async function control(
  device: UsbDevice,
  setup: SetupPacket,
  data?: Uint8Array,
): Promise<{ result: TransferResult; data: Uint8Array }> {
  const directionIn = (setup.bmRequestType & 0x80) !== 0;
  const buffer = directionIn ? new Uint8Array(setup.wLength) : (data ?? new Uint8Array(0));
  const s = submit(device, request("control", 0, directionIn, buffer, { setup }));
  const result = await s.result;
  return { result, data: buffer.subarray(0, result.actualLength) };
}

export async function getDescriptor(
  device: UsbDevice,
  type: number,
  index: number,
  wLength: number,
  wIndex = 0,
  bmRequestType = 0x80,
): Promise<{ result: TransferResult; data: Uint8Array }> {
  return control(device, setupPacket(bmRequestType, 0x06, (type << 8) | index, wIndex, wLength));
}

export function bulk(
  device: UsbDevice,
  endpointAddress: number,
  buffer: Uint8Array,
  extra: Partial<TransferRequest> = {},
) {
  return submit(
    device,
    request("bulk", endpointAddress & 0x0f, (endpointAddress & 0x80) !== 0, buffer, extra),
  );
}

export function interrupt(device: UsbDevice, endpointAddress: number, length: number) {
  return submit(
    device,
    request("interrupt", endpointAddress & 0x0f, (endpointAddress & 0x80) !== 0, new Uint8Array(length)),
  );
}

export function iso(
  device: UsbDevice,
  endpointAddress: number,
  packets: readonly IsoPacketRequest[],
  buffer: Uint8Array,
) {
  return submit(
    device,
    request("isochronous", endpointAddress & 0x0f, (endpointAddress & 0x80) !== 0, buffer, {
      isoPackets: packets,
    }),
  );
}

export async function expectPending(s: Submitted): Promise<void> {
  await tick();
  await tick();
  expect(s.calls()).toBe(0);
}

export const u16 = (b: Uint8Array, at: number): number => b[at]! | (b[at + 1]! << 8);
