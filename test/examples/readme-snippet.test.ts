/**
 * The README's "Embedding in a VMM" snippet is examples/embed-minimal.ts,
 * character for character, and that file runs: as a child process it
 * enumerates the loopback, moves data, closes and exits 0 by itself (the
 * spawn's timeout only turns a hang into a failure: status null).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../../", import.meta.url));
const EXAMPLE = "examples/embed-minimal.ts";

/** The first ```ts block of the README section `## heading` (up to the next `## `). */
function fencedBlock(markdown: string, heading: string): string {
  const start = markdown.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`README has no "## ${heading}" section`);
  const rest = markdown.slice(start + 1);
  const next = rest.indexOf("\n## ");
  const section = next < 0 ? rest : rest.slice(0, next);
  const block = /\n```ts\n([\s\S]*?)\n```\n/.exec(section);
  if (block === null) throw new Error(`"## ${heading}" has no \`\`\`ts block`);
  return `${block[1]}\n`;
}

describe("README embedding snippet", () => {
  it("is exactly examples/embed-minimal.ts", () => {
    const readme = readFileSync(`${root}README.md`, "utf8");
    expect(fencedBlock(readme, "Embedding in a VMM")).toBe(readFileSync(`${root}${EXAMPLE}`, "utf8"));
  });

  it("runs: enumerates, writes and reads back over bulk, closes, exits 0 on its own", () => {
    const run = spawnSync(process.execPath, ["--import", "tsx", EXAMPLE], {
      cwd: root,
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(run.stderr).toBe("");
    expect(run.stdout).toMatch(/^enumerated 1209:1 "usbvirt loopback"$/m);
    expect(run.stdout).toMatch(/^OUT: status 0, 4096 B; IN: status 0, 4096 B$/m);
    expect(run.stdout).toMatch(/^read back what was written$/m);
    expect(run.status).toBe(0);
  });
});
