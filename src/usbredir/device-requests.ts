/**
 * A usbredir connection's device-state requests, performed on the device through the engine as the
 * guest asked: get / set configuration and alternate setting (a set answers ep_info, and interface_info
 * for a configuration, before its status, as QEMU expects), reset (in-flight URBs cancelled, the port
 * reset and addressed, the configuration restored), bulk streams (alloc / free_bulk_streams on the
 * bulk endpoints the bit set names, each checked against its companion's streams, answered with one
 * bulk_streams_status), and the engine requests announcing a device needs.
 * The server runs them one at a time per connection; the device model they keep true is the one the data
 * path checks packets against (data-packets.ts).
 */
import type { VirtualHostController } from "../frontend/index.js";
import { GuestTransferError, type GuestUsbDriver } from "../guest/guest-driver.js";
import type { FaceLogger } from "../network-face/log.js";
import { EPROTO, OK, type UrbStatus } from "../urb/status.js";
import type { DevAddr, EndpointNum, PortNum } from "../urb/types.js";
import {
  getConfigurationSetup,
  getInterfaceSetup,
  type SetupPacket,
  setAddressSetup,
  setConfigurationSetup,
  setInterfaceSetup,
} from "../usb/index.js";
import { type DataPackets, hex, redirStatusOf } from "./data-packets.js";
import {
  encodeAltSettingStatus,
  encodeBulkStreamsStatus,
  encodeEpInfo,
  encodeInterfaceInfo,
  encodeStatusPair,
  epIndex,
  hasCap,
  type Id,
  RedirCap,
  RedirEpType,
  RedirStatus,
  RedirType,
} from "./protocol.js";
import type { Session } from "./session.js";

/** What the requests need of the server. */
export interface DeviceRequestsHost {
  /** Stop the connection's interrupt and iso streams (before the endpoints change). */
  stopStreams(s: Session): void;
  /** The guest loses the device (a USB disconnect); the connection stays. */
  disconnectGuest(s: Session): void;
}

export class DeviceRequests {
  constructor(
    private readonly hcd: VirtualHostController,
    private readonly guest: GuestUsbDriver,
    private readonly port: PortNum,
    private readonly address: DevAddr,
    /** The device's name (log lines). */
    private readonly name: string,
    private readonly log: FaceLogger,
    /** The data path, which holds the device model. */
    private readonly packets: DataPackets,
    private readonly host: DeviceRequestsHost,
  ) {}

  /**
   * alloc_bulk_streams: stream ids 1..`streams` on every endpoint of `eps` (bit n: ep_info index n), or on
   * none (what was allocated is freed again) and inval.
   */
  async allocStreams(
    s: Session,
    id: Id,
    request: { eps: number; streams: number; addresses: readonly number[] },
  ): Promise<void> {
    const { eps, streams } = request;
    let status: number = RedirStatus.SUCCESS;
    const done: number[] = [];
    for (const address of request.addresses) {
      const got = await this.hcd.allocStreams(this.port, address, streams);
      if (got !== OK) {
        s.warnings.warn(`${s.peer}: alloc_bulk_streams on ${hex(address)}: the device answered ${got}`);
        status = redirStatusOf(got);
        break;
      }
      done.push(address);
    }
    if (status !== RedirStatus.SUCCESS)
      for (const address of done) await this.hcd.freeStreams(this.port, address);
    if (!s.closed) s.send(encodeBulkStreamsStatus(s.negotiated!, id, eps, streams, status));
  }

  /** free_bulk_streams: the streams of every endpoint of `eps` go. */
  async freeStreams(s: Session, id: Id, eps: number, addresses: readonly number[]): Promise<void> {
    let status: number = RedirStatus.SUCCESS;
    for (const address of addresses) {
      const got = await this.hcd.freeStreams(this.port, address);
      if (got !== OK) status = redirStatusOf(got);
    }
    if (!s.closed) s.send(encodeBulkStreamsStatus(s.negotiated!, id, eps, 0, status));
  }

  /**
   * The bulk endpoints `eps` names, each offering at least `streams` streams; null if not (said once per
   * connection's warning budget: the caller answers inval at once, nothing is queued).
   */
  streamEndpoints(s: Session, eps: number, streams: number): number[] | null {
    const refuse = (why: string) => {
      s.warnings.warn(`${s.peer}: bulk streams on endpoint set 0x${(eps >>> 0).toString(16)}: ${why}`);
      return null;
    };
    if (!hasCap(s.negotiated!.caps, RedirCap.BULK_STREAMS)) return refuse("bulk_streams was not negotiated");
    if (!s.announced) return refuse("no device is connected");
    if (eps === 0) return refuse("no endpoint named");
    const addresses: number[] = [];
    for (const [address, ep] of this.packets.model.endpoints) {
      if (((eps >>> epIndex(address)) & 1) === 0) continue;
      if (ep.type !== RedirEpType.BULK || ep.maxStreams === 0)
        return refuse(`${hex(address)} has no streams`);
      if (streams > ep.maxStreams)
        return refuse(`${hex(address)} offers ${ep.maxStreams} streams, not ${streams}`);
      addresses.push(address);
    }
    // A bit for an endpoint the active settings do not have.
    if (addresses.length !== popCount(eps)) return refuse("an endpoint is not one of the active settings");
    return addresses;
  }

  /** GET_CONFIGURATION asked of the device itself, as the VMM asked. */
  async getConfiguration(s: Session, id: Id): Promise<void> {
    const got = s.announced ? await this.readByte(getConfigurationSetup()) : null;
    if (s.closed) return;
    const status = got === null ? RedirStatus.INVAL : redirStatusOf(got.status);
    const value = got?.value ?? this.packets.model.configuration;
    s.send(encodeStatusPair(s.negotiated!, RedirType.CONFIGURATION_STATUS, id, status, value));
  }

  /** GET_INTERFACE through the engine, for an interface of the active configuration. */
  async getAlternate(s: Session, id: Id, itf: number): Promise<void> {
    const known = this.packets.model.alternates.has(itf);
    const got = s.announced && known ? await this.readByte(getInterfaceSetup(itf)) : null;
    if (s.closed) return;
    const status = got === null ? RedirStatus.INVAL : redirStatusOf(got.status);
    s.send(encodeAltSettingStatus(s.negotiated!, id, status, itf, got?.value ?? 0xff));
  }

  async resetAndAddress(): Promise<void> {
    if (!this.hcd.portStatus(this.port).connected) throw new Error(`${this.name} is not connected`);
    await this.hcd.resetPort(this.port);
    await this.guest.control(
      this.port,
      0 as DevAddr,
      setAddressSetup(this.address),
      undefined,
      "SET_ADDRESS",
    );
  }

  /** A one-byte standard IN request (GET_CONFIGURATION, GET_INTERFACE) through the engine. */
  async readByte(setup: SetupPacket): Promise<{ status: UrbStatus; value: number }> {
    try {
      const data = await this.guest.control(this.port, this.address, setup);
      return data.length === 1 ? { status: OK, value: data[0]! } : { status: EPROTO, value: 0xff };
    } catch (err) {
      if (err instanceof GuestTransferError) return { status: err.status, value: 0xff };
      throw err;
    }
  }

  /** A no-data standard request through the engine; resolves with its status. */
  async standardRequest(setup: SetupPacket): Promise<UrbStatus> {
    const c = await this.hcd.submit({
      type: "control",
      port: this.port,
      device: this.address,
      endpoint: 0 as EndpointNum,
      directionIn: false,
      setup,
      buffer: [],
    });
    return c.status;
  }

  async setConfiguration(s: Session, id: Id, value: number): Promise<void> {
    const n = s.negotiated!;
    let status: RedirStatus = RedirStatus.INVAL;
    if (s.announced && this.packets.model.hasConfiguration(value)) {
      this.host.stopStreams(s);
      status = redirStatusOf(await this.standardRequest(setConfigurationSetup(value)));
      if (s.closed) return;
      if (status === RedirStatus.SUCCESS) this.applyConfiguration(s, value);
    }
    s.send(encodeStatusPair(n, RedirType.CONFIGURATION_STATUS, id, status, this.packets.model.configuration));
  }

  /** The configuration changed (or was set again): the guest hears the new endpoints before the status. */
  applyConfiguration(s: Session, value: number): void {
    const changed = value !== this.packets.model.configuration;
    this.packets.model.configure(value);
    if (changed) {
      s.send(encodeEpInfo(s.negotiated!, this.packets.model.endpoints, this.packets.model.controlMaxPacket));
      s.send(encodeInterfaceInfo(s.negotiated!, this.packets.model.interfaces));
    }
  }

  async setAlternate(s: Session, id: Id, itf: number, alt: number): Promise<void> {
    const n = s.negotiated!;
    let status: RedirStatus = RedirStatus.INVAL;
    if (s.announced && this.packets.model.findInterface(itf, alt) !== undefined) {
      this.host.stopStreams(s);
      status = redirStatusOf(await this.standardRequest(setInterfaceSetup(itf, alt)));
      if (s.closed) return;
      if (status === RedirStatus.SUCCESS) this.applyAlternate(s, itf, alt);
    }
    s.send(encodeAltSettingStatus(n, id, status, itf, this.packets.model.alternates.get(itf) ?? alt));
  }

  applyAlternate(s: Session, itf: number, alt: number): void {
    this.packets.model.selectAlternate(itf, alt);
    s.send(encodeEpInfo(s.negotiated!, this.packets.model.endpoints, this.packets.model.controlMaxPacket));
  }

  /** The guest reset the port: cancel what is in flight, reset in the engine, keep the configuration. */
  async reset(s: Session): Promise<void> {
    if (!s.announced) return;
    this.host.stopStreams(s);
    for (const r of s.inflight.values()) if (r.urb !== null) void this.hcd.unlink(r.urb);
    const configuration = this.packets.model.configuration;
    const alternates = [...this.packets.model.alternates].some(([, alt]) => alt !== 0);
    try {
      await this.resetAndAddress();
      if (configuration !== 0) {
        const status = await this.standardRequest(setConfigurationSetup(configuration));
        if (status !== OK) throw new Error(`SET_CONFIGURATION(${configuration}) after reset: ${status}`);
      }
    } catch (err) {
      this.log.error(`${s.peer}: reset of ${this.name} failed: ${(err as Error).message}`, s.fields());
      this.host.disconnectGuest(s);
      return;
    }
    this.packets.model.configure(configuration);
    if (alternates && !s.closed)
      s.send(encodeEpInfo(s.negotiated!, this.packets.model.endpoints, this.packets.model.controlMaxPacket));
  }
}

function popCount(bits: number): number {
  let n = 0;
  for (let v = bits >>> 0; v !== 0; v &= v - 1) n++;
  return n;
}
