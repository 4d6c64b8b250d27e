/**
 * The virtual root hub's port state (xen-hcd.c's rhport_status + vdevice_status):
 * connection and speed come from conn-ring events, enable/reset from port
 * resets, the device address from SET_ADDRESS completions. Change bits stay
 * set until the VMM clears them (ClearPortFeature(C_*)), as on a real hub.
 *
 * A port reset finishes twice on the wire (the reset URB is answered 0, then
 * the backend posts a conn event with the speed), in either order as seen by
 * a consumer that drains two rings. Whichever arrives first ends the reset
 * (sets C_RESET); the other only refreshes the speed, so a change bit the VMM
 * cleared in between never comes back.
 */

import { type DevAddr, MAX_PORT, type PortNum } from "../urb/types.js";
import { UsbSpeed } from "../usb/index.js";
import { InvalidOptionError } from "../util/errors.js";
import type { PortChange, PortStatus } from "./types.js";

interface PortState {
  connected: boolean;
  enabled: boolean;
  speed: number;
  resetting: boolean;
  address: DevAddr;
  cConnection: boolean;
  cEnable: boolean;
  cReset: boolean;
  /** Reset URBs sent whose "reset done" conn event has not arrived yet. */
  resetEventsOwed: number;
}

/** What a conn event meant for its port. */
export type ConnEventKind = "connect" | "disconnect" | "reset-done" | "unchanged";

const NO_ADDRESS = 0 as DevAddr;

export class RootHub {
  private readonly state: PortState[] = [];

  constructor(readonly ports: number) {
    if (!Number.isInteger(ports) || ports < 1 || ports > MAX_PORT) {
      throw new InvalidOptionError(
        `handles.ports must be an integer in [1, ${MAX_PORT}], got ${String(ports)}`,
      );
    }
    for (let i = 0; i <= ports; i++) {
      this.state.push({
        connected: false,
        enabled: false,
        speed: UsbSpeed.NONE,
        resetting: false,
        address: NO_ADDRESS,
        cConnection: false,
        cEnable: false,
        cReset: false,
        resetEventsOwed: 0,
      });
    }
  }

  /** Throws for a port outside 1..ports (API misuse, not peer data). */
  checkPort(port: number): PortNum {
    if (!Number.isInteger(port) || port < 1 || port > this.ports) {
      throw new InvalidOptionError(`port must be an integer in [1, ${this.ports}], got ${String(port)}`);
    }
    return port as PortNum;
  }

  private at(port: number): PortState {
    return this.state[port]!;
  }

  status(port: PortNum): PortStatus {
    const s = this.at(port);
    return {
      port,
      connected: s.connected,
      enabled: s.enabled,
      speed: s.speed,
      resetting: s.resetting,
      address: s.address,
      changes: { connection: s.cConnection, enable: s.cEnable, reset: s.cReset },
    };
  }

  address(port: PortNum): DevAddr {
    return this.at(port).address;
  }

  /** Apply a checked conn event (port in range, speed known). */
  connEvent(port: PortNum, speed: number): ConnEventKind {
    const s = this.at(port);
    if (speed === UsbSpeed.NONE) {
      if (!s.connected && !s.resetting && s.resetEventsOwed === 0) return "unchanged";
      s.connected = false;
      s.enabled = false;
      s.speed = UsbSpeed.NONE;
      s.resetting = false;
      s.address = NO_ADDRESS;
      s.resetEventsOwed = 0;
      s.cConnection = true;
      return "disconnect";
    }
    if (s.resetEventsOwed > 0) {
      s.resetEventsOwed--;
      s.connected = true;
      s.speed = speed;
      if (s.resetting) this.finishReset(s);
      return "reset-done";
    }
    // A connect, or a new device on a port the backend re-plugged: it starts disabled at address 0.
    s.connected = true;
    s.speed = speed;
    s.enabled = false;
    s.address = NO_ADDRESS;
    s.cConnection = true;
    return "connect";
  }

  private finishReset(s: PortState): void {
    s.resetting = false;
    s.enabled = s.connected;
    s.address = NO_ADDRESS;
    s.cReset = true;
  }

  /** A reset URB is on its way: the port is disabled until it completes. */
  resetStarted(port: PortNum): void {
    const s = this.at(port);
    s.resetting = true;
    s.enabled = false;
    s.resetEventsOwed++;
  }

  /** The reset URB completed with `ok` (status 0) or failed. */
  resetCompleted(port: PortNum, ok: boolean): void {
    const s = this.at(port);
    if (ok) {
      if (s.resetting) this.finishReset(s);
      return;
    }
    // No "reset done" event follows a failed reset.
    s.resetEventsOwed = Math.max(0, s.resetEventsOwed - 1);
    s.resetting = false;
  }

  setAddress(port: PortNum, address: DevAddr): void {
    this.at(port).address = address;
  }

  disable(port: PortNum): boolean {
    const s = this.at(port);
    if (!s.enabled) return false;
    // ClearPortFeature(PORT_ENABLE): a requested disable sets no C_ENABLE (only hardware-caused ones do).
    s.enabled = false;
    return true;
  }

  clearChange(port: PortNum, which: PortChange): boolean {
    const s = this.at(port);
    const was = which === "connection" ? s.cConnection : which === "enable" ? s.cEnable : s.cReset;
    if (which === "connection") s.cConnection = false;
    else if (which === "enable") s.cEnable = false;
    else s.cReset = false;
    return was;
  }

  /** Backend gone: every connected port sees a disconnect. Returns the ports that changed. */
  disconnectAll(): PortNum[] {
    const changed: PortNum[] = [];
    for (let port = 1; port <= this.ports; port++) {
      if (this.connEvent(port as PortNum, UsbSpeed.NONE) === "disconnect") changed.push(port as PortNum);
    }
    return changed;
  }
}
