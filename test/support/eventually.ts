/**
 * Waiting for a condition instead of sleeping: tests synchronise on what they wait for (an event, a
 * counter, a state), never on a guessed delay. The deadline only turns a hang into a named failure.
 */

/** Resolve as soon as `check` holds (polled every 2 ms); reject, naming `what`, after `ms`. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  ms = 5000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Let pending microtasks and one turn of the event loop (setImmediate) run: for tests on one thread. */
export function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Let `ms` of real time pass, to observe that nothing happens in it (a URB that must stay pending, a
 * watchdog that must not fire). A premise of the test, named so it is never mistaken for (or used as)
 * synchronisation: to wait for something to happen, use eventually().
 */
export function holdFor(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
