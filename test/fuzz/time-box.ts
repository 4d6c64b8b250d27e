/**
 * The fuzz suites' shared driver: seeded (USBVIRT_FUZZ_SEED) and time-boxed
 * (USBVIRT_FUZZ_MS) fast-check runs of an async property, alone or beside an honest client.
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

/**
 * `fuzzFor` beside a client that keeps being served (an honest client, a bystander): its rounds per
 * second alone for `baselineMs`, then during the fuzzing; logs both with the suite's `stats`. A hostile
 * input may slow the engine or the server, never stall the others: the suite asserts on the two rates.
 */
export async function fuzzBeside<T>(
  beside: { readonly name: string; rounds(): number },
  baselineMs: number,
  label: string,
  arb: fc.Arbitrary<T>,
  oneRun: (run: T) => Promise<void>,
  stats: object,
): Promise<{ baselineRate: number; rate: number }> {
  const base0 = beside.rounds();
  await new Promise((r) => setTimeout(r, baselineMs));
  const baselineRate = (beside.rounds() - base0) / (baselineMs / 1000);
  const start0 = beside.rounds();
  const t0 = Date.now();
  await fuzzFor(label, arb, oneRun);
  const rate = (beside.rounds() - start0) / ((Date.now() - t0) / 1000);
  console.log(
    `[fuzz ${label}] ${JSON.stringify(stats)}; ${beside.name} ${baselineRate.toFixed(0)} rounds/s before, ${rate.toFixed(0)} during`,
  );
  return { baselineRate, rate };
}
