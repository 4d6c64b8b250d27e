/**
 * How a test's child process reports: one `VERDICT <json>` line on stdout, then exit. The line is
 * flushed before the exit: stdout to a pipe is non-blocking, and process.exit() drops whatever the pipe
 * had no room for yet, so a verdict longer than the pipe holds (64 KiB; a verdict that carries a log
 * grows with the time the run took) would be cut and the parent would see an exit without a verdict.
 */

let leaving = false;

/** Print `VERDICT <json>` and exit with `code` once stdout has taken the whole line; later calls are ignored. */
export function exitWithVerdict(verdict: Readonly<Record<string, unknown>>, code: number): void {
  if (leaving) return;
  leaving = true;
  process.stdout.write(`VERDICT ${JSON.stringify(verdict)}\n`, () => process.exit(code));
}
