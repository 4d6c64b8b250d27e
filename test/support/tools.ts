/**
 * The external tools some tests need (umockdev and its Python testbed, Linux's usbip, SPIN and gcc,
 * systemd-socket-activate, Chromium, QEMU and its guest, the optional koffi): found, or why not with the
 * install step. Where one is missing, the tests that need it are skipped with that reason — unless
 * USBVIRT_REQUIRE_TOOLS=1 (.ci/run sets it): then they run and fail, naming what is missing, so a broken
 * install step cannot pass as a green run. Every skip for a missing tool in test/ goes through
 * skipWithout (test/support/tools.test.ts reads the sources to keep it so).
 */
import { accessSync, constants } from "node:fs";
import { delimiter, isAbsolute, join } from "node:path";

/** A tool: its value (a path, a probe's result), or the reason it cannot be used here. */
export type Tool<T = string> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly reason: string };

export const found = <T>(value: T): Tool<T> => ({ ok: true, value });
export const missing = (reason: string): Tool<never> => ({ ok: false, reason });

/** True when a missing tool must fail its tests (USBVIRT_REQUIRE_TOOLS=1), not skip them. */
export function toolsRequired(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.USBVIRT_REQUIRE_TOOLS === "1";
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The first of `names` that is an executable on the PATH (or an absolute path that is one), else
 * missing with `install` (e.g. "apt-get install usbip") in the reason.
 */
export function command(
  names: readonly string[],
  install: string,
  env: NodeJS.ProcessEnv = process.env,
): Tool<string> {
  const dirs = (env.PATH ?? "").split(delimiter).filter((d) => d !== "");
  for (const name of names) {
    if (isAbsolute(name)) {
      if (executable(name)) return found(name);
      continue;
    }
    for (const dir of dirs) if (executable(join(dir, name))) return found(join(dir, name));
  }
  return missing(`${names.join(" or ")} is not installed (${install})`);
}

/** Every one of `tools`, or the first one's reason that is missing. */
export function allOf<T extends readonly Tool<unknown>[]>(
  ...tools: T
): Tool<{ [K in keyof T]: T[K] extends Tool<infer V> ? V : never }> {
  const values: unknown[] = [];
  for (const t of tools) {
    if (!t.ok) return t;
    values.push(t.value);
  }
  return found(values as { [K in keyof T]: T[K] extends Tool<infer V> ? V : never });
}

/**
 * For `describe.skipIf` / `it.skipIf`: true (skip, with a warning naming `what` and the reason) when
 * `tool` is missing and tools are not required; false when it is there, or required (then need() in the
 * test fails it with the reason).
 */
export function skipWithout(
  what: string,
  tool: Tool<unknown>,
  env: NodeJS.ProcessEnv = process.env,
): boolean {
  if (tool.ok || toolsRequired(env)) return false;
  console.warn(`skipping ${what}: ${tool.reason} (USBVIRT_REQUIRE_TOOLS=1 makes this a failure)`);
  return true;
}

/** The tool's value; throws with the reason when it is missing (a required tool that is not there). */
export function need<T>(tool: Tool<T>): T {
  if (tool.ok) return tool.value;
  throw new Error(`a tool this test needs is missing: ${tool.reason}`);
}
