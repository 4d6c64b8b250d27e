/**
 * The external-tool switch (tools.ts): a missing tool skips its tests with the reason, or fails them under
 * USBVIRT_REQUIRE_TOOLS=1; and every conditional skip in test/ goes through skipWithout, so no test can
 * skip for a missing tool in CI without failing.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { tsFiles } from "./source-files.js";
import { allOf, command, found, missing, need, skipWithout, toolsRequired } from "./tools.js";

const TEST = join(import.meta.dirname, "..");

describe("tools", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("finds an executable on the PATH, and says what to install when none is there", () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-tools-"));
    try {
      writeFileSync(join(dir, "plain"), "");
      writeFileSync(join(dir, "tool"), "#!/bin/sh\n");
      chmodSync(join(dir, "tool"), 0o755);
      const env = { PATH: `/nonexistent:${dir}` };
      expect(command(["missing-tool", "tool"], "apt-get install tool", env)).toEqual(
        found(join(dir, "tool")),
      );
      expect(command(["plain"], "apt-get install plain", env)).toEqual(
        missing("plain is not installed (apt-get install plain)"),
      );
      expect(command([join(dir, "tool")], "x", { PATH: "" })).toEqual(found(join(dir, "tool")));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("skips a test whose tool is missing, with a warning; runs it (to fail) when tools are required", () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const gone = missing("usbip is not installed (apt-get install usbip)");
    expect(toolsRequired({})).toBe(false);
    expect(skipWithout("the usbip test", gone, {})).toBe(true);
    expect(warn).toHaveBeenCalledWith(
      "skipping the usbip test: usbip is not installed (apt-get install usbip) (USBVIRT_REQUIRE_TOOLS=1 makes this a failure)",
    );
    expect(toolsRequired({ USBVIRT_REQUIRE_TOOLS: "1" })).toBe(true);
    expect(skipWithout("the usbip test", gone, { USBVIRT_REQUIRE_TOOLS: "1" })).toBe(false);
    expect(() => need(gone)).toThrow(
      "a tool this test needs is missing: usbip is not installed (apt-get install usbip)",
    );
    expect(skipWithout("the usbip test", found("/usr/sbin/usbip"), {})).toBe(false);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(allOf(found("a"), found(2))).toEqual(found(["a", 2]));
    expect(allOf(found("a"), gone, missing("other"))).toEqual(gone);
  });
});

/** The argument text of the call that starts at `open` (the index of its "("). */
function argumentOf(text: string, open: number): string {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === "(") depth++;
    else if (text[i] === ")" && --depth === 0) return text.slice(open + 1, i);
  }
  return text.slice(open + 1);
}

describe("every conditional skip in test/", () => {
  it("goes through skipWithout (a platform check aside), so USBVIRT_REQUIRE_TOOLS turns it into a failure", () => {
    const offenders: string[] = [];
    for (const file of tsFiles(TEST)) {
      if (file === import.meta.filename) continue;
      const text = readFileSync(file, "utf8");
      // A skip decided inside a test (ctx.skip(), context.skip()) cannot be turned into a failure: flagged.
      for (const m of text.matchAll(/\b(?:ctx|context)\s*\.\s*skip\(/g))
        offenders.push(
          `${relative(TEST, file)}:${text.slice(0, m.index).split("\n").length}: a skip inside a test`,
        );
      // describe / it / test, maybe through .concurrent or .sequential, then .skipIf( .runIf( or .skip(
      const calls =
        /\b(?:describe|it|test)(?:\s*\.\s*(?:concurrent|sequential))*\s*\.\s*(skipIf|runIf|skip)\(/g;
      for (const m of text.matchAll(calls)) {
        const arg = argumentOf(text, m.index + m[0].length - 1);
        const line = text.slice(0, m.index).split("\n").length;
        const where = `${relative(TEST, file)}:${line}`;
        if (m[1] === "skip") offenders.push(`${where}: an unconditional .skip(`);
        else if (!arg.includes("skipWithout(") && !/^process\.platform [!=]== "\w+"$/.test(arg.trim()))
          offenders.push(`${where}: .${m[1]}(${arg.trim()})`);
      }
    }
    expect(offenders, "use skipWithout(what, tool) from test/support/tools.ts").toEqual([]);
  });
});
