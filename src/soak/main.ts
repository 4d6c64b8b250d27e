/**
 * `npm run soak -- --minutes N [--seed S]`: run the soak (src/soak/soak.ts) for N minutes (default 1),
 * print progress and the report, exit 0 only if every check held.
 */
import { runSoak } from "./soak.js";

function option(name: string): string | undefined {
  const args = process.argv.slice(2);
  const at = args.indexOf(`--${name}`);
  if (at >= 0) return args[at + 1];
  return args.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
}

const minutes = Number(option("minutes") ?? 1);
const seedText = option("seed");
if (!Number.isFinite(minutes) || minutes <= 0) {
  process.stderr.write("usage: npm run soak -- [--minutes N] [--seed S]\n");
  process.exit(2);
}
const report = await runSoak({
  durationMs: Math.round(minutes * 60_000),
  ...(seedText !== undefined ? { seed: Number(seedText) } : {}),
  log: (line) => process.stdout.write(`${new Date().toISOString()} ${line}\n`),
});
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.exit(report.ok ? 0 : 1);
