/**
 * What the usb-guest (QEMU) is told about the device and what it may ask of it: the active
 * configuration and alternate settings, the endpoint table they produce (ep_info), the interfaces
 * (interface_info) and the device_connect fields. The server keeps one per redirected device and
 * updates it as set_configuration, set_alt_setting and reset go through the engine.
 */
import type { DeviceDescription } from "../guest/device-description.js";
import type { InterfaceInfo } from "../guest/guest-driver.js";
import {
  type DeviceConnectInfo,
  type EndpointEntry,
  type InterfaceEntry,
  RedirEpType,
  RedirSpeed,
} from "./protocol.js";

/** usbif speed (PortStatus.speed: 1 low, 2 full, 3 high, 4 super) → usbredir speed. */
export function redirSpeedOf(usbifSpeed: number): number {
  switch (usbifSpeed) {
    case 1:
      return RedirSpeed.LOW;
    case 2:
      return RedirSpeed.FULL;
    case 3:
      return RedirSpeed.HIGH;
    case 4:
      return RedirSpeed.SUPER;
    default:
      return RedirSpeed.UNKNOWN;
  }
}

export class RedirDeviceModel {
  /** bConfigurationValue now active (0: unconfigured). */
  configuration = 0;
  /** Interface number → active alternate setting. */
  readonly alternates = new Map<number, number>();
  private table = new Map<number, EndpointEntry>();

  constructor(
    readonly description: DeviceDescription,
    /** usbredir speed of the port. */
    readonly speed: number,
  ) {}

  get connectInfo(): DeviceConnectInfo {
    const d = this.description;
    return {
      speed: this.speed,
      deviceClass: d.deviceClass,
      deviceSubClass: d.deviceSubClass,
      deviceProtocol: d.deviceProtocol,
      vendorId: d.vendorId,
      productId: d.productId,
      bcdDevice: d.bcdDevice,
    };
  }

  /** Endpoint 0's packet size: 512 at SuperSpeed (bMaxPacketSize0 9 means 2^9), 64 below. */
  get controlMaxPacket(): number {
    return this.speed === RedirSpeed.SUPER ? 512 : 64;
  }

  /** Whether `value` names one of the device's configurations (0 unconfigures). */
  hasConfiguration(value: number): boolean {
    return value === 0 || this.description.configurations.some((c) => c.value === value);
  }

  /** The interface descriptor for (number, alternate) in the active configuration. */
  findInterface(number: number, alternate: number): InterfaceInfo | undefined {
    return this.activeInterfaces().find((i) => i.number === number && i.alternate === alternate);
  }

  /** Make `value` the active configuration, every interface at alternate 0. */
  configure(value: number): void {
    this.configuration = value;
    this.alternates.clear();
    for (const itf of this.activeInterfaces()) this.alternates.set(itf.number, 0);
    this.rebuild();
  }

  selectAlternate(number: number, alternate: number): void {
    this.alternates.set(number, alternate);
    this.rebuild();
  }

  /** The endpoint by address in the active settings (undefined: not an endpoint of it). */
  endpoint(address: number): EndpointEntry | undefined {
    return this.table.get(address);
  }

  get endpoints(): ReadonlyMap<number, EndpointEntry> {
    return this.table;
  }

  /** interface_info: one entry per interface of the active configuration, at its active alternate. */
  get interfaces(): InterfaceEntry[] {
    return this.current().map((i) => ({
      number: i.number,
      cls: i.cls,
      subclass: i.subclass,
      protocol: i.protocol,
    }));
  }

  private activeInterfaces(): readonly InterfaceInfo[] {
    return this.description.configurations.find((c) => c.value === this.configuration)?.interfaces ?? [];
  }

  private current(): InterfaceInfo[] {
    const out: InterfaceInfo[] = [];
    for (const [number, alternate] of this.alternates) {
      const itf = this.findInterface(number, alternate);
      if (itf !== undefined) out.push(itf);
    }
    return out.slice(0, 32);
  }

  private rebuild(): void {
    const table = new Map<number, EndpointEntry>();
    const high = this.speed >= RedirSpeed.HIGH && this.speed !== RedirSpeed.UNKNOWN;
    for (const itf of this.current()) {
      for (const ep of itf.endpoints) {
        const type = ep.attributes & 3;
        const size = ep.maxPacketSize & 0x7ff;
        // High-speed periodic endpoints move up to three packets per microframe (USB 2.0 §5.9).
        const mult =
          high && (type === RedirEpType.ISO || type === RedirEpType.INTERRUPT)
            ? 1 + ((ep.maxPacketSize >> 11) & 3)
            : 1;
        table.set(ep.address, {
          type,
          interval: ep.interval,
          interface: itf.number,
          maxPacketSize: size * mult,
          maxStreams: ep.maxStreams,
        });
      }
    }
    this.table = table;
  }
}
