/**
 * What backend loss takes back (xen-hcd's xenhcd_destroy_rings path): the
 * mechanics behind the controller's backendLost(), shared by both ways a
 * backend is lost (the control plane says so, or a ring fault the controller
 * found itself). Every record on the ring is taken off it without waiting
 * for an answer that will never come, every grant is force-revoked (the dead
 * backend's map counts never drop), and a latched fault on either ring
 * becomes the loss reason. The controller then completes what was taken with
 * -ESHUTDOWN, disconnects its ports, and re-initialises the rings when the
 * old backend is known dead.
 */
import type { GrantTableOwner } from "../dma-map/grant-table.js";
import type { GrantRef } from "../dma-map/types.js";
import { RingFault, ringFaultMessage } from "../rings/faults.js";
import type { FrontRing } from "../rings/front-ring.js";
import type { UrbStatus } from "../urb/status.js";
import type { BackendLossReason } from "./types.js";
import { Phase, type UrbRecord } from "./urb-record.js";

/**
 * Take every record off the ring: each goes OFF without its id or grants; data records not yet delivered
 * go into `victims`, unlinks' answer callbacks into `unlinks`.
 */
export function takeAllInFlight(
  inFlight: (UrbRecord | undefined)[],
  victims: UrbRecord[],
  unlinks: ((status: UrbStatus) => void)[],
): void {
  for (let id = 0; id < inFlight.length; id++) {
    const record = inFlight[id];
    if (record === undefined) continue;
    inFlight[id] = undefined;
    record.phase = Phase.OFF;
    record.id = -1;
    record.grants.length = 0;
    if (record.urb === null) unlinks.push(record.unlinkDone!);
    else if (!record.delivered) victims.push(record);
  }
}

/** Take every grant back, not only the ones the records track: the dead backend's map counts never drop. */
export function forceRevokeAll(grants: GrantTableOwner): void {
  for (let ref = 0; ref < grants.entries; ref++) {
    if (grants.isGranted(ref as GrantRef)) grants.forceRevoke(ref as GrantRef);
  }
}

/** The loss reason when either ring latched a fault (ours or the backend's), else null. */
export function ringFaultReason(urbRing: FrontRing, connRing: FrontRing): BackendLossReason | null {
  const urbFault = urbRing.fault !== RingFault.NONE ? urbRing.fault : urbRing.sharedFault();
  const connFault = connRing.fault !== RingFault.NONE ? connRing.fault : connRing.sharedFault();
  if (urbFault === 0 && connFault === 0) return null;
  const ring = urbFault !== 0 ? "urb" : "conn";
  const fault = urbFault !== 0 ? urbFault : connFault;
  return { cause: "ring-fault", message: `${ring} ring fault: ${ringFaultMessage(fault)}`, ring, fault };
}
