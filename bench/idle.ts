/**
 * Idle cost: a connection with 8 attached loopback ports and no traffic.
 * After a short settle (the adaptive spins decay to zero and every thread
 * parks), the process's CPU time (process.cpuUsage covers every thread,
 * workers included) over a few seconds, as a percentage of one core.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Connection } from "../src/engine/connection.js";
import type { Result, SuiteOptions } from "./harness.js";

const PORTS = 8;

export const idleSuite = {
  name: "idle",
  async run(opts: SuiteOptions): Promise<Result[]> {
    const conn = await Connection.create({ ports: PORTS });
    for (let p = 1; p <= PORTS; p++) await conn.attach(p, { kind: "emulated", name: "loopback" });
    await sleep(opts.quick ? 200 : 500);
    const windowMs = opts.quick ? 1000 : 3000;
    const before = process.cpuUsage();
    const start = process.hrtime.bigint();
    await sleep(windowMs);
    const used = process.cpuUsage(before);
    const elapsedUs = Number(process.hrtime.bigint() - start) / 1000;
    await conn.close();
    const percent = ((used.user + used.system) / elapsedUs) * 100;
    console.log(
      `\n## idle: ${PORTS} attached loopback ports, no traffic, ${(elapsedUs / 1e6).toFixed(1)} s\n` +
        `CPU ${percent.toFixed(2)} % of one core (user ${(used.user / 1000).toFixed(1)} ms, system ${(used.system / 1000).toFixed(1)} ms)`,
    );
    return [{ name: "idle.cpu_percent", value: percent, unit: "% of a core" }];
  },
};
