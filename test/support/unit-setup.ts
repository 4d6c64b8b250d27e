/**
 * Setup of the `unit` vitest project: a unit test runs on this thread alone. Starting a worker thread, a
 * child process or a socket throws, naming what was tried, so a test that needs one is moved to the
 * integration project (vitest.config.ts) instead of slowing the fast run down or making it flaky.
 * The builtin modules' exports are replaced and synced into their ESM bindings (syncBuiltinESMExports).
 */
import childProcess from "node:child_process";
import { syncBuiltinESMExports } from "node:module";
import net from "node:net";
import workerThreads from "node:worker_threads";

function refuse(what: string): never {
  throw new Error(`unit tests run on one thread: ${what} is for the integration project (vitest.config.ts)`);
}

const wt = workerThreads as { Worker: unknown };
wt.Worker = class {
  constructor() {
    refuse("a worker thread");
  }
};
const cp = childProcess as unknown as Record<string, unknown>;
for (const name of ["spawn", "spawnSync", "exec", "execSync", "execFile", "execFileSync", "fork"]) {
  cp[name] = () => refuse(`child_process.${name}`);
}
const n = net as unknown as Record<string, unknown>;
for (const name of ["createServer", "connect", "createConnection"]) {
  n[name] = () => refuse(`net.${name}`);
}
syncBuiltinESMExports();
