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

/**
 * A child's whole run: `{ ok: true, ...result }` when `run` resolves (exit 0), `{ ok: false, error }` when it
 * rejects (exit 1) or has not settled after `watchdogMs` (exit 2: the parent reads a hang as a verdict).
 */
export function exitWithVerdictOf(run: Promise<Readonly<Record<string, unknown>>>, watchdogMs: number): void {
  const watchdog = setTimeout(
    () => exitWithVerdict({ ok: false, error: "timed out in the child" }, 2),
    watchdogMs,
  );
  run.then(
    (v) => {
      clearTimeout(watchdog);
      exitWithVerdict({ ok: true, ...v }, 0);
    },
    (err: unknown) => {
      clearTimeout(watchdog);
      exitWithVerdict({ ok: false, error: String(err) }, 1);
    },
  );
}
