/**
 * `npm run bench [-- --quick]`: every suite in one process, one machine
 * header, tables side by side.
 */
import { e2eSuite } from "./e2e.js";
import { grantSuite } from "./grant.js";
import { machineHeader, type SuiteOptions } from "./harness.js";
import { ringSuite } from "./ring.js";

interface Suite {
  readonly name: string;
  run(opts: SuiteOptions): Promise<unknown>;
}

const suites: Suite[] = [ringSuite, grantSuite, e2eSuite];

async function main(): Promise<void> {
  const quick = process.argv.includes("--quick");
  console.log(`# usbvirt benchmarks${quick ? " (--quick: a moment per task, figures not meaningful)" : ""}`);
  console.log(machineHeader());
  for (const suite of suites) await suite.run({ quick });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
