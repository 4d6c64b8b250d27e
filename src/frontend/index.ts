/**
 * src/frontend: the guest-facing virtual USB host controller (usbfront).
 * A VMM builds a VirtualHostController from the ControllerHandles of a
 * connection, submits URBs over guest memory and watches the root hub.
 */
export { ControllerStateError, PortResetError, VirtualHostController } from "./controller.js";
export type { ConnEventKind } from "./root-hub.js";
export type * from "./types.js";
export { checkUrb, type UrbLimits, type UrbRefusal } from "./validate.js";
