/**
 * What both server fuzz suites (usbip, usbredir) run beside the attack: an honest client that moves
 * verified data in rounds the whole time, and the rate check that says it kept moving (a hostile
 * connection may slow the server, never stall its other clients).
 */

import type fc from "fast-check";
import { fuzzFor } from "./time-box.js";

/** An honest client's loop: `round(i)` moves and checks one round of data, throwing when it is wrong. */
export class HonestLoop {
  /** Verified rounds so far. */
  rounds = 0;
  /** What ended the loop early, or null. */
  error: unknown = null;
  private running = true;
  private readonly done: Promise<void>;

  constructor(round: (i: number) => Promise<void>) {
    this.done = (async () => {
      let i = 0;
      while (this.running) {
        await round(++i);
        this.rounds++;
      }
    })().catch((err: unknown) => {
      this.error = err;
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
  }
}

/**
 * The honest client's rounds per second alone for `baselineMs`, then `fuzzFor(label, arb, oneRun)` and
 * its rate during the attack; logs both with the suite's `stats`.
 */
export async function fuzzBeside<T>(
  honest: HonestLoop,
  baselineMs: number,
  label: string,
  arb: fc.Arbitrary<T>,
  oneRun: (run: T) => Promise<void>,
  stats: object,
): Promise<{ baselineRate: number; rate: number }> {
  const base0 = honest.rounds;
  await new Promise((r) => setTimeout(r, baselineMs));
  const baselineRate = (honest.rounds - base0) / (baselineMs / 1000);
  const start0 = honest.rounds;
  const t0 = Date.now();
  await fuzzFor(label, arb, oneRun);
  const rate = (honest.rounds - start0) / ((Date.now() - t0) / 1000);
  console.log(
    `[fuzz ${label}] ${JSON.stringify(stats)}; honest client ${baselineRate.toFixed(0)} rounds/s before, ${rate.toFixed(0)} during`,
  );
  return { baselineRate, rate };
}
