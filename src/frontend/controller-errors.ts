/**
 * The virtual host controller's own error classes (src/util/errors.ts: each class owns its code): a port
 * reset that failed, and a lifecycle call made in the wrong state.
 */

import { statusText, type UrbStatus } from "../urb/status.js";
import type { PortNum } from "../urb/types.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";

/** A port reset that did not complete with status 0. */
export class PortResetError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_PORT_RESET";
  constructor(
    readonly port: PortNum,
    readonly status: UrbStatus,
  ) {
    super("ERR_USBVIRT_PORT_RESET", `reset of port ${port} failed: ${statusText(status)}`);
  }
}
registerErrorClass(PortResetError);

/** A lifecycle call made in the wrong state (backendReady while connected, …). */
export class ControllerStateError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_CONTROLLER_STATE";
  constructor(message: string) {
    super("ERR_USBVIRT_CONTROLLER_STATE", message);
  }
}
registerErrorClass(ControllerStateError);
