/** The package's own sources, for the tests that read them as text (layers, vocabulary, frame arithmetic). */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

/** The `src` folder. */
export const SRC = join(import.meta.dirname, "../../src");

/** Every `.ts` file below `dir`, as paths. */
export function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...tsFiles(path));
    else if (name.endsWith(".ts")) out.push(path);
  }
  return out;
}
