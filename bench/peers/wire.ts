/**
 * The peers' shared parts: the message a peer design carries from its
 * frontend to its backend and on to its port (a plain object, structured
 * clone), and the port step itself: the same emulated loopback device the
 * engine's port worker drives, submitted to the same way. Every peer uses
 * these, so the designs differ only in how the messages travel.
 */

import type { TransferRequest, UsbDevice } from "../../src/devices/device.js";
import { createEmulatedDevice } from "../../src/devices/emulated/index.js";
import type { SetupPacket } from "../../src/usb/index.js";

/** One URB as a peer design carries it: the request, and OUT data as a copy. */
export interface PeerUrb {
  readonly id: number;
  readonly port: number;
  readonly kind: "control" | "bulk";
  readonly endpoint: number;
  readonly directionIn: boolean;
  readonly setup: SetupPacket | null;
  readonly length: number;
  /** OUT data (copied by structured clone on every hop). */
  readonly data: Uint8Array | null;
}

export interface PeerResult {
  readonly id: number;
  readonly status: number;
  readonly actualLength: number;
  /** IN data (copied on every hop back). */
  readonly data: Uint8Array | null;
}

/** ENODEV, as the engine's backend answers a URB for an empty port. */
const ENODEV = -19;

/** The backend's part: route by port (the peers have one device, on port 1). */
export function routes(urb: PeerUrb): boolean {
  return urb.port === 1;
}

export function noDevice(urb: PeerUrb): PeerResult {
  return { id: urb.id, status: ENODEV, actualLength: 0, data: null };
}

/** The port's device: an emulated loopback, opened and configured (echo mode) as the guest would. */
export async function openLoopback(): Promise<UsbDevice> {
  const device = createEmulatedDevice("loopback");
  await device.open();
  const status = await device.setConfiguration(1);
  if (status !== 0) throw new Error(`loopback SET_CONFIGURATION failed: ${status}`);
  return device;
}

const EMPTY = new Uint8Array(0);

/** The port step: submit to the device, answer with the result and any IN data. */
export function submitToDevice(device: UsbDevice, urb: PeerUrb): Promise<PeerResult> {
  const buffer = urb.directionIn ? new Uint8Array(urb.length) : (urb.data ?? EMPTY);
  const request: TransferRequest = {
    kind: urb.kind,
    endpoint: urb.endpoint,
    directionIn: urb.directionIn,
    setup: urb.setup,
    buffer,
    shortNotOk: false,
    zeroPacket: false,
    interval: 0,
    isoPackets: null,
    streamId: 0,
  };
  return new Promise((resolve) => {
    device.submit(request, (r) =>
      resolve({
        id: urb.id,
        status: r.status,
        actualLength: r.actualLength,
        data: urb.directionIn && r.actualLength > 0 ? buffer.subarray(0, r.actualLength) : null,
      }),
    );
  });
}
