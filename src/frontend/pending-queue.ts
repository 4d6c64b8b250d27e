/**
 * The frontend's pending queue (xen-hcd's pending_submit_list): URBs and unlinks that could not go on the
 * ring yet (no slot, id, grants or scratch frames), in FIFO order. A record leaves it by being sent
 * (flush), by an unlink while it waits, by a port disconnect or by backend loss; those last three only mark
 * it OFF, and flush skips it. The array is compacted from the head now and then (amortised O(1) dequeue),
 * so a long queue costs no shifting per URB.
 */
import type { UrbStatus } from "../urb/status.js";
import { Phase, type UrbRecord } from "./urb-record.js";
import type { UrbSender } from "./urb-sender.js";

/** Entries above this in the pending array trigger a compaction (amortised O(1) dequeue). */
const PENDING_COMPACT_AT = 1024;

export class PendingQueue {
  /** Entries before `head` are done; entries not PENDING are skipped. */
  private queue: UrbRecord[] = [];
  private head = 0;
  /** Records still PENDING (the controller's stats().pending). */
  live = 0;

  push(record: UrbRecord): void {
    record.phase = Phase.PENDING;
    this.queue.push(record);
    this.live++;
  }

  /** A PENDING record leaves without being sent (unlinked while it waits). */
  withdraw(record: UrbRecord): void {
    record.phase = Phase.OFF;
    this.live--;
  }

  /** Withdraw every PENDING data record of `port` into `into` (a port disconnect). */
  withdrawPort(port: number, into: UrbRecord[]): void {
    const queue = this.queue;
    for (let i = this.head; i < queue.length; i++) {
      const record = queue[i]!;
      if (record.phase === Phase.PENDING && record.urb !== null && record.urb.port === port) {
        this.withdraw(record);
        into.push(record);
      }
    }
  }

  /**
   * Empty the queue (backend loss): every PENDING record goes OFF; data records not yet delivered go into
   * `victims`, unlinks' answer callbacks into `unlinks`.
   */
  withdrawAll(victims: UrbRecord[], unlinks: ((status: UrbStatus) => void)[]): void {
    const queue = this.queue;
    for (let i = this.head; i < queue.length; i++) {
      const record = queue[i]!;
      if (record.phase !== Phase.PENDING) continue;
      record.phase = Phase.OFF;
      if (record.urb === null) unlinks.push(record.unlinkDone!);
      else if (!record.delivered) victims.push(record);
    }
    this.queue = [];
    this.head = 0;
    this.live = 0;
  }

  /**
   * Send pending records in order until one cannot go; unlinks behind a data URB that cannot go yet
   * overtake it (into the slots kept for them). Bounded by the queue length. True when any was sent
   * (the caller publishes).
   */
  flush(sender: UrbSender): boolean {
    let sent = false;
    const queue = this.queue;
    let blocked = false;
    while (this.head < queue.length) {
      const record = queue[this.head]!;
      if (record.phase === Phase.PENDING) {
        if (!sender.trySend(record)) {
          blocked = true;
          break;
        }
        this.live--;
        sent = true;
      }
      queue[this.head++] = undefined as unknown as UrbRecord;
    }
    for (let i = this.head; blocked && i < queue.length; i++) {
      const record = queue[i]!;
      if (record.phase !== Phase.PENDING || record.urb !== null) continue;
      if (!sender.trySendUnlink(record)) break;
      this.live--;
      sent = true;
    }
    if (this.head === queue.length) {
      queue.length = 0;
      this.head = 0;
    } else if (this.head >= PENDING_COMPACT_AT) {
      this.queue = queue.slice(this.head);
      this.head = 0;
    }
    return sent;
  }
}
