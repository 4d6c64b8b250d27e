/**
 * The bounded soak (src/soak/soak.ts): ~20 s of mixed traffic on every emulated device with hotplug
 * and unlinks, every transfer's data checked, then everything back to baseline. `npm run soak --
 * --minutes N` runs the same for longer. USBVIRT_SOAK_MS / USBVIRT_SOAK_SEED override duration and seed.
 */
import { describe, expect, it } from "vitest";
import { runSoak } from "../../src/soak/soak.js";

const DURATION = Number(process.env.USBVIRT_SOAK_MS ?? 20_000);
const SEED = Number(process.env.USBVIRT_SOAK_SEED ?? 20_260_101);

describe("soak", () => {
  it(
    "moves verified data on every device through hotplug and unlinks, and returns to baseline",
    async () => {
      const lines: string[] = [];
      const report = await runSoak({ durationMs: DURATION, seed: SEED, log: (l) => lines.push(l) });
      console.log(lines.join("\n"));
      expect(report.failures).toEqual([]);
      expect(report.ok).toBe(true);
      for (const k of [
        "loopbackEchoes",
        "unlinks",
        "keyReports",
        "sectorsWritten",
        "sectorsRead",
        "hotplugs",
        "hotplugPortEchoes",
      ]) {
        expect(report.counts[k] ?? 0, k).toBeGreaterThan(0);
      }
      expect(report.end).toMatchObject({
        frontendInFlight: 0,
        frontendPending: 0,
        grantsOut: 0,
        backendInFlight: 0,
      });
      expect(report.end.liveWorkers).toBe(report.end.baselineWorkers);
    },
    DURATION + 60_000,
  );
});
