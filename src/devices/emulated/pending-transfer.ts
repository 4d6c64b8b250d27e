/**
 * A transfer's life inside an emulated device, from submit to its single completion (the
 * src/devices/device.ts contract): `PendingTransfer` settles exactly once and hands its result to `done`
 * in a later microtask, holding it back while asynchronous I/O still uses the guest buffer;
 * `TransferTable` is the device's in-flight list and the batched delivery of results.
 */

import { EREMOTEIO, OK, type UrbStatus } from "../../urb/status.js";
import { endpointAddress } from "../../usb/index.js";
import type { TransferDone, TransferHandle, TransferRequest, TransferResult } from "../device.js";

/** The address a transfer targets: endpoint number with bit 7 set for IN; 0 for control. */
export function endpointAddressOf(request: TransferRequest): number {
  if (request.kind === "control") return 0;
  return endpointAddress(request.endpoint, request.directionIn);
}

/**
 * One submitted transfer, from submit to its single completion. Devices keep these in their queues while
 * a transfer is pending and call `complete`/`ok`/`fail` when it ends; after that the buffer is no longer
 * theirs (zero-copy view into guest memory) and every further completion attempt is ignored.
 */
export class PendingTransfer {
  private timer: NodeJS.Timeout | null = null;
  private isSettled = false;
  /** Asynchronous I/O (file store) writing into or reading from `buffer` right now. */
  private ioActive = 0;
  /** A result that arrived (cancel, flush) while I/O was using the buffer: delivered when the I/O ends. */
  private deferred: TransferResult | null = null;
  /** The result waiting for the device's delivery microtask. */
  private delivering: TransferResult | null = null;
  /** @internal Links in the device's in-flight list (TransferTable), in submit order. */
  prevInflight: PendingTransfer | null = null;
  /** @internal */
  nextInflight: PendingTransfer | null = null;

  constructor(
    readonly handle: TransferHandle,
    readonly request: TransferRequest,
    readonly endpointAddress: number,
    private readonly done: TransferDone,
    private readonly table: TransferTable,
  ) {}

  get settled(): boolean {
    return this.isSettled;
  }

  get buffer(): Uint8Array {
    return this.request.buffer;
  }

  /** Settle with `result`; `done` runs in a later microtask, never inside the caller's stack. */
  complete(result: TransferResult): void {
    if (this.isSettled) return;
    this.isSettled = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    // The guest buffer is ours until done runs: never hand it back while I/O still touches it.
    if (this.ioActive > 0) this.deferred = result;
    else this.deliver(result);
  }

  /** Mark asynchronous I/O on `buffer` as started; pair with `endIo`. */
  beginIo(): void {
    this.ioActive++;
  }

  /**
   * Mark the I/O as finished. Returns false when the transfer settled meanwhile (cancelled or flushed):
   * its result is delivered now and the device must drop the transfer.
   */
  endIo(): boolean {
    if (this.ioActive > 0) this.ioActive--;
    if (this.ioActive === 0 && this.deferred !== null) {
      const result = this.deferred;
      this.deferred = null;
      this.deliver(result);
    }
    return !this.isSettled;
  }

  private deliver(result: TransferResult): void {
    this.delivering = result;
    this.table.deliverLater(this);
  }

  /** @internal The device's delivery microtask hands the result over (exactly once: deliver runs once). */
  runDone(): void {
    const result = this.delivering!;
    this.delivering = null;
    this.done(result);
  }

  /** Success with `actualLength` bytes; a short IN with SHORT_NOT_OK becomes -EREMOTEIO (the bytes still count). */
  ok(actualLength: number): void {
    const r = this.request;
    const short = r.directionIn && r.shortNotOk && actualLength < r.buffer.length;
    this.complete({ status: short ? EREMOTEIO : OK, actualLength });
  }

  fail(status: UrbStatus, actualLength = 0): void {
    this.complete({ status, actualLength });
  }

  /** Disarm the timer set with `after`, if any. */
  clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Run `fn` after `ms` unless the transfer settles first. The timer never keeps the process alive. */
  after(ms: number, fn: () => void): void {
    if (this.isSettled) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.isSettled) fn();
    }, ms);
    this.timer.unref();
  }
}

/**
 * A device's transfers in flight and the delivery of their results, without garbage per transfer: an
 * intrusive list in submit order (a Map keyed by handle churned its hash table on every URB), and one
 * queueMicrotask per batch of results rather than per transfer (Node's costs an AsyncResource, a bound
 * function and a closure each). Results still reach `done` in settle order, in a later microtask.
 * @internal Only the device base (emulated-device.ts) holds one.
 */
export class TransferTable {
  private head: PendingTransfer | null = null;
  private tail: PendingTransfer | null = null;
  private count = 0;
  private ready: PendingTransfer[] = [];
  private spare: PendingTransfer[] = [];
  private runQueued = false;

  /** `delivered` runs after each done (even one that threw). */
  constructor(private readonly delivered: () => void) {}

  get size(): number {
    return this.count;
  }

  add(t: PendingTransfer): void {
    t.prevInflight = this.tail;
    if (this.tail === null) this.head = t;
    else this.tail.nextInflight = t;
    this.tail = t;
    this.count++;
  }

  /** Linear, but cancel is rare and the list holds only what the host keeps in flight (≤ 256 per port). */
  find(handle: TransferHandle): PendingTransfer | undefined {
    for (let t = this.head; t !== null; t = t.nextInflight) if (t.handle === handle) return t;
    return undefined;
  }

  /** A copy in submit order, for walks that settle transfers as they go. */
  snapshot(): PendingTransfer[] {
    const all: PendingTransfer[] = [];
    for (let t = this.head; t !== null; t = t.nextInflight) all.push(t);
    return all;
  }

  /** Queue `t` (settled, result attached) for its done in a later microtask. */
  deliverLater(t: PendingTransfer): void {
    this.ready.push(t);
    if (this.runQueued) return;
    this.runQueued = true;
    queueMicrotask(this.run);
  }

  private readonly run = (): void => {
    this.runQueued = false;
    // Transfers settled by the dones below go to a fresh batch and a later microtask, never this loop.
    const batch = this.ready;
    this.ready = this.spare;
    for (let i = 0; i < batch.length; i++) {
      const t = batch[i]!;
      this.remove(t);
      try {
        t.runDone();
      } catch (err) {
        // As when each done had its own microtask: the error is uncaught, the other dones still run.
        queueMicrotask(() => {
          throw err;
        });
      }
      this.delivered();
    }
    batch.length = 0;
    this.spare = batch;
  };

  private remove(t: PendingTransfer): void {
    if (t.prevInflight === null) this.head = t.nextInflight;
    else t.prevInflight.nextInflight = t.nextInflight;
    if (t.nextInflight === null) this.tail = t.prevInflight;
    else t.nextInflight.prevInflight = t.prevInflight;
    t.prevInflight = null;
    t.nextInflight = null;
    this.count--;
  }
}
