/**
 * Resolving worker entry points both from the TypeScript sources (tests run
 * them through vitest, workers through the tsx loader) and from the compiled
 * `dist/` tree (the CLI, benches, an installed package).
 */
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { Worker, type WorkerOptions } from "node:worker_threads";

/**
 * URL of a sibling module of `callerUrl` named `name` (without extension),
 * with the caller's own extension: `.ts` under the sources, `.js` in dist.
 */
export function siblingModule(callerUrl: string, name: string): URL {
  const ext = callerUrl.endsWith(".ts") ? ".ts" : ".js";
  return new URL(`${name}${ext}`, callerUrl);
}

/**
 * Start a worker from a module URL. A `.ts` module (only when running from the
 * sources, i.e. under vitest) is loaded through tsx's loader, registered inside
 * the worker before the entry is imported: `--import` in a worker's execArgv
 * registers its hooks too late for the entry module on Node 20.
 */
export function startWorker(moduleUrl: URL, options: WorkerOptions = {}): Worker {
  if (!moduleUrl.pathname.endsWith(".ts")) return new Worker(moduleUrl, options);
  // require.resolve picks tsx's CommonJS build; the worker needs its ESM twin beside it.
  const tsxApiCjs = createRequire(import.meta.url).resolve("tsx/esm/api");
  const tsxApi = pathToFileURL(tsxApiCjs.replace(/\.cjs$/, ".mjs")).href;
  const boot = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(moduleUrl.href)}); });`;
  return new Worker(boot, { ...options, eval: true });
}
