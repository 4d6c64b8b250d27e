/**
 * The fuzz suites' shared driver: seeded (USBVIRT_FUZZ_SEED) and time-boxed
 * (USBVIRT_FUZZ_MS) fast-check runs of an async property.
 */
import fc from "fast-check";

export const SEED = Number(process.env.USBVIRT_FUZZ_SEED ?? 0x5eed_0b);
export const TIME_MS = Number(process.env.USBVIRT_FUZZ_MS ?? 6000);

/** Run `oneRun` on generated inputs until the time box is over (or one fails, which throws with the seed). */
export async function fuzzFor<T>(
  label: string,
  arb: fc.Arbitrary<T>,
  oneRun: (run: T) => Promise<void>,
): Promise<void> {
  console.log(`[fuzz ${label}] seed ${SEED}, time box ${TIME_MS} ms (USBVIRT_FUZZ_SEED / USBVIRT_FUZZ_MS)`);
  // interruptAfterTimeLimit abandons the run in progress: keep it, and let it finish before checking.
  let current: Promise<void> = Promise.resolve();
  await fc.assert(
    fc.asyncProperty(arb, (run) => {
      current = oneRun(run);
      return current;
    }),
    {
      seed: SEED,
      numRuns: 1_000_000,
      interruptAfterTimeLimit: TIME_MS,
      markInterruptAsFailure: false,
      endOnFailure: true,
    },
  );
  await current;
}
