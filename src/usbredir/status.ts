/**
 * The usbredir boundary's status translation, as one table: the engine's URB status (Linux errno values,
 * src/urb/status.ts) → the usbredir status a reply carries (USBREDIR.md; QEMU maps everything but success,
 * stall and babble to an I/O error). Every engine status in the table is checked at load; anything not in
 * it answers IOERROR.
 */
import {
  ECONNRESET,
  EINVAL,
  ENOENT,
  EOVERFLOW,
  EPIPE,
  ETIME,
  ETIMEDOUT,
  isKnownStatus,
  OK,
  type UrbStatus,
} from "../urb/status.js";
import { RedirStatus } from "./protocol.js";

export const REDIR_STATUS_TABLE: ReadonlyMap<UrbStatus, RedirStatus> = new Map<UrbStatus, RedirStatus>([
  [OK, RedirStatus.SUCCESS],
  [ECONNRESET, RedirStatus.CANCELLED],
  [ENOENT, RedirStatus.CANCELLED],
  [EPIPE, RedirStatus.STALL],
  [ETIMEDOUT, RedirStatus.TIMEOUT],
  [ETIME, RedirStatus.TIMEOUT],
  [EOVERFLOW, RedirStatus.BABBLE],
  [EINVAL, RedirStatus.INVAL],
]);
// Checked at load: every key is a URB status.
for (const status of REDIR_STATUS_TABLE.keys()) {
  if (!isKnownStatus(status)) throw new Error(`usbredir status table: ${status} is not a URB status`);
}

/** Engine status → usbredir status (IOERROR for anything the table does not name). */
export function redirStatusOf(status: number): RedirStatus {
  return REDIR_STATUS_TABLE.get(status as UrbStatus) ?? RedirStatus.IOERROR;
}
