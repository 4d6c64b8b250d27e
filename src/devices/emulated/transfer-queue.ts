/**
 * A device's queue of transfers waiting for data (an IN waiting for bytes to send, an OUT waiting for
 * room): a FIFO that skips the transfers that settled meanwhile.
 */

import type { PendingTransfer } from "./pending-transfer.js";

/**
 * FIFO of pending transfers that silently drops the ones that settled meanwhile (cancelled, flushed), so
 * devices need no per-queue cancel bookkeeping. Its length is bounded by the transfers the host keeps in
 * flight.
 */
export class TransferQueue {
  private items: PendingTransfer[] = [];

  push(t: PendingTransfer): void {
    this.items.push(t);
  }

  /** The oldest transfer still pending, or undefined. */
  peek(): PendingTransfer | undefined {
    while (this.items.length > 0 && this.items[0]!.settled) this.items.shift();
    return this.items[0];
  }

  shift(): PendingTransfer | undefined {
    const t = this.peek();
    if (t !== undefined) this.items.shift();
    return t;
  }
}
