/**
 * What a doorbell waiter (and an adaptive spin) watches: a ring end, or several at once. A module of its
 * own so that doorbell.ts and spin.ts, which both take one, need not import each other.
 */

/** A ring end (or several, anyOf) a thread waits on. */
export interface Waitable {
  /** Cheap look, no side effects on the peer: is there work (or a fault) now? */
  hasPending(): boolean;
  /** Arm notification (event index) and look once more: true means do not sleep. */
  armAndCheck(): boolean;
}

/** Several waitables behind one doorbell. */
export function anyOf(items: readonly Waitable[]): Waitable {
  return {
    hasPending: () => items.some((w) => w.hasPending()),
    armAndCheck: () => {
      // Arm them all before deciding, so none can be missed between checks.
      let pending = false;
      for (const w of items) pending = w.armAndCheck() || pending;
      return pending;
    },
  };
}
