/**
 * A small guest USB core on top of the virtual host controller: what a guest
 * kernel does with a root-hub port (wait for connect, reset, enumerate with
 * GET_DESCRIPTOR / SET_ADDRESS / SET_CONFIGURATION) and convenience calls for
 * control, bulk and interrupt transfers with buffers in guest memory. The
 * example, the end-to-end tests and the benches drive the engine through it,
 * exactly as a VMM's guest would (STYLE: one guest-side mock for all of them).
 */

import type { ControllerHandles } from "../connection/handles.js";
import { GuestMemory } from "../dma-map/guest-memory.js";
import { frameToOffset, guestFrame, offsetInFrame, offsetToFrame } from "../dma-map/types.js";
import type { VirtualHostController } from "../frontend/index.js";
import type { UrbCompletion } from "../frontend/types.js";
import { OK, statusText, type UrbStatus } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import {
  CONFIGURATION_DESCRIPTOR_LENGTH,
  DEVICE_DESCRIPTOR_LENGTH,
  DescriptorType,
  ENDPOINT_TYPE_MASK,
  EndpointType,
  getDescriptorSetup,
  LANGID_EN_US,
  requestIsIn,
  type SetupPacket,
  setAddressSetup,
  setConfigurationSetup,
  streamsOfExponent,
} from "../usb/index.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { GuestBufferAllocator, type GuestRange } from "./guest-memory-allocator.js";

/** A guest transfer that completed with a status other than OK; the message names the status. */
export class GuestTransferError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_GUEST_TRANSFER";
  constructor(
    readonly what: string,
    readonly status: UrbStatus,
  ) {
    super("ERR_USBVIRT_GUEST_TRANSFER", `${what} failed: ${statusText(status)}`);
  }
}
registerErrorClass(GuestTransferError);

export interface EndpointInfo {
  readonly address: number;
  readonly attributes: number;
  readonly maxPacketSize: number;
  readonly interval: number;
  /** Bulk streams from its SuperSpeed endpoint companion (2^MaxStreams; 0: none or not SuperSpeed). */
  readonly maxStreams: number;
}

export interface InterfaceInfo {
  readonly number: number;
  readonly alternate: number;
  readonly cls: number;
  readonly subclass: number;
  readonly protocol: number;
  readonly endpoints: EndpointInfo[];
}

export interface EnumeratedDevice {
  readonly port: PortNum;
  readonly address: DevAddr;
  readonly vendorId: number;
  readonly productId: number;
  readonly deviceClass: number;
  readonly maxPacketSize0: number;
  readonly configurationValue: number;
  readonly interfaces: InterfaceInfo[];
  readonly product: string;
}

/** Walk a configuration descriptor set into interfaces and endpoints (bounded by its length). */
export function parseConfiguration(bytes: Uint8Array): { value: number; interfaces: InterfaceInfo[] } {
  const interfaces: InterfaceInfo[] = [];
  let at = 0;
  let current: InterfaceInfo | null = null;
  while (at + 2 <= bytes.length) {
    const len = bytes[at]!;
    const type = bytes[at + 1]!;
    if (len < 2 || at + len > bytes.length) throw new Error(`malformed descriptor at offset ${at}`);
    if (type === DescriptorType.INTERFACE) {
      current = {
        number: bytes[at + 2]!,
        alternate: bytes[at + 3]!,
        cls: bytes[at + 5]!,
        subclass: bytes[at + 6]!,
        protocol: bytes[at + 7]!,
        endpoints: [],
      };
      interfaces.push(current);
    } else if (type === DescriptorType.ENDPOINT && current !== null) {
      current.endpoints.push({
        address: bytes[at + 2]!,
        attributes: bytes[at + 3]!,
        maxPacketSize: bytes[at + 4]! | (bytes[at + 5]! << 8),
        interval: bytes[at + 6]!,
        maxStreams: 0,
      });
    } else if (type === DescriptorType.SS_ENDPOINT_COMPANION && current !== null && len >= 4) {
      // The companion follows its endpoint (USB 3.2 §9.6.7); for bulk, bits 4..0 are MaxStreams.
      const last = current.endpoints.at(-1);
      if (last !== undefined && (last.attributes & ENDPOINT_TYPE_MASK) === EndpointType.BULK)
        current.endpoints[current.endpoints.length - 1] = {
          ...last,
          maxStreams: streamsOfExponent(bytes[at + 3]!),
        };
    }
    at += len;
  }
  return { value: bytes[5] ?? 0, interfaces };
}

export class GuestUsbDriver {
  readonly memory: GuestMemory;
  readonly buffers: GuestBufferAllocator;

  constructor(
    readonly hcd: VirtualHostController,
    handles: ControllerHandles,
  ) {
    this.memory = new GuestMemory({ regions: handles.memory });
    // Everything below the frontend's scratch frames is the guest's to use.
    this.buffers = new GuestBufferAllocator(
      frameToOffset(guestFrame(1)),
      frameToOffset(guestFrame(handles.scratchFirstFrame)),
    );
  }

  /** The bytes of a guest range, to fill or read. */
  bytes(range: GuestRange): Uint8Array {
    const view = this.memory.tryFrameView(
      offsetToFrame(range.offset),
      offsetInFrame(range.offset),
      range.length,
    );
    if (view === undefined) throw new Error(`guest range at ${range.offset} is outside guest memory`);
    return view;
  }

  /** Resolve once `port` reports a connected device (or reject after `timeoutMs`). */
  async waitForConnect(port: PortNum, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.hcd.portStatus(port).connected) {
      if (Date.now() > deadline) throw new Error(`no device connected on port ${port} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  async submitChecked(
    what: string,
    urb: Parameters<VirtualHostController["submit"]>[0],
  ): Promise<UrbCompletion> {
    const c = await this.hcd.submit(urb);
    if (c.status !== OK) throw new GuestTransferError(what, c.status);
    return c;
  }

  /** A control transfer on endpoint 0; IN returns the data the device sent. */
  async control(
    port: PortNum,
    device: DevAddr,
    setup: SetupPacket,
    dataOut?: Uint8Array,
    what = `control request 0x${setup.bRequest.toString(16)}`,
  ): Promise<Uint8Array> {
    const directionIn = requestIsIn(setup.bmRequestType);
    const length = directionIn ? setup.wLength : (dataOut?.length ?? 0);
    const range = length > 0 ? this.buffers.allocate(length) : null;
    try {
      if (range !== null && !directionIn && dataOut !== undefined) this.bytes(range).set(dataOut);
      const c = await this.submitChecked(what, {
        type: "control",
        port,
        device,
        endpoint: 0 as EndpointNum,
        directionIn,
        setup,
        buffer: range === null ? [] : [range],
      });
      return range === null ? new Uint8Array(0) : this.bytes(range).slice(0, c.actualLength);
    } finally {
      if (range !== null) this.buffers.release(range);
    }
  }

  async getDescriptor(
    port: PortNum,
    device: DevAddr,
    type: number,
    index: number,
    length: number,
    langId = 0,
  ) {
    return await this.control(
      port,
      device,
      getDescriptorSetup(type, index, length, langId),
      undefined,
      `GET_DESCRIPTOR(${type}, ${index})`,
    );
  }

  async getString(port: PortNum, device: DevAddr, index: number): Promise<string> {
    if (index === 0) return "";
    const d = await this.getDescriptor(port, device, DescriptorType.STRING, index, 255, LANGID_EN_US);
    return Buffer.from(d.subarray(2, d[0])).toString("utf16le");
  }

  /** What a guest's hub driver and USB core do on connect: reset, address, describe, configure. */
  async enumerate(port: PortNum, address: DevAddr): Promise<EnumeratedDevice> {
    await this.waitForConnect(port);
    await this.hcd.resetPort(port);
    const zero = 0 as DevAddr;
    const head = await this.getDescriptor(port, zero, DescriptorType.DEVICE, 0, 8);
    await this.control(port, zero, setAddressSetup(address), undefined, "SET_ADDRESS");
    const dev = await this.getDescriptor(port, address, DescriptorType.DEVICE, 0, DEVICE_DESCRIPTOR_LENGTH);
    if (dev.length !== DEVICE_DESCRIPTOR_LENGTH || dev[1] !== DescriptorType.DEVICE)
      throw new Error(`port ${port}: bad device descriptor`);
    const configHead = await this.getDescriptor(
      port,
      address,
      DescriptorType.CONFIGURATION,
      0,
      CONFIGURATION_DESCRIPTOR_LENGTH,
    );
    const total = configHead[2]! | (configHead[3]! << 8);
    const config = await this.getDescriptor(port, address, DescriptorType.CONFIGURATION, 0, total);
    const { value, interfaces } = parseConfiguration(config);
    await this.control(port, address, setConfigurationSetup(value), undefined, "SET_CONFIGURATION");
    return {
      port,
      address,
      vendorId: dev[8]! | (dev[9]! << 8),
      productId: dev[10]! | (dev[11]! << 8),
      deviceClass: dev[4]!,
      maxPacketSize0: head[7]!,
      configurationValue: value,
      interfaces,
      product: await this.getString(port, address, dev[15]!),
    };
  }

  /** Bulk or interrupt OUT of `data` from a guest buffer. */
  async transferOut(
    port: PortNum,
    device: DevAddr,
    endpoint: number,
    data: Uint8Array,
    type: "bulk" | "interrupt" = "bulk",
  ) {
    const range = this.buffers.allocate(data.length);
    try {
      this.bytes(range).set(data);
      const common = {
        port,
        device,
        endpoint: endpoint as EndpointNum,
        directionIn: false,
        buffer: [range],
      } as const;
      const c = await this.submitChecked(
        `${type} OUT ep${endpoint}`,
        type === "bulk" ? { type, ...common } : { type, interval: 1, ...common },
      );
      return c.actualLength;
    } finally {
      this.buffers.release(range);
    }
  }

  /** Bulk or interrupt IN of up to `length` bytes into a guest buffer; returns a copy of what arrived. */
  async transferIn(
    port: PortNum,
    device: DevAddr,
    endpoint: number,
    length: number,
    type: "bulk" | "interrupt" = "bulk",
  ) {
    const range = this.buffers.allocate(length);
    try {
      const common = {
        port,
        device,
        endpoint: endpoint as EndpointNum,
        directionIn: true,
        buffer: [range],
      } as const;
      const c = await this.submitChecked(
        `${type} IN ep${endpoint}`,
        type === "bulk" ? { type, ...common } : { type, interval: 1, ...common },
      );
      return this.bytes(range).slice(0, c.actualLength);
    } finally {
      this.buffers.release(range);
    }
  }
}
