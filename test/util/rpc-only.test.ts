/**
 * Guards that make the error handler impossible to forget: comlink is
 * imported only by src/util/rpc.ts (which installs the handler on load), and
 * every error class in src/ registers itself so the receiving thread can
 * rebuild it by name.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = join(import.meta.dirname, "../../src");

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory() ? sources(join(dir, d.name)) : d.name.endsWith(".ts") ? [join(dir, d.name)] : [],
  );
}

describe("comlink users", () => {
  it("only src/util/rpc.ts imports comlink", () => {
    const importers = sources(SRC)
      .filter((f) => !f.endsWith(".d.ts") && /from\s+["']comlink/.test(readFileSync(f, "utf8")))
      .map((f) => f.slice(SRC.length + 1));
    expect(importers).toEqual(["util/rpc.ts"]);
  });

  it("every error class in src/ registers itself for rebuilding across threads", () => {
    const missing: string[] = [];
    let classes = 0;
    for (const f of sources(SRC)) {
      const text = readFileSync(f, "utf8");
      for (const m of text.matchAll(/export class (\w+) extends (\w*Error)\b/g)) {
        classes++;
        if (!text.includes(`registerErrorClass(${m[1]});`))
          missing.push(`${m[1]} (${f.slice(SRC.length + 1)})`);
      }
    }
    expect(classes).toBeGreaterThan(10);
    expect(missing).toEqual([]);
  });
});
