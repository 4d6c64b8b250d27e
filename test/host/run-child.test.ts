/**
 * How the host tests run their children (run-child.ts, test/support/verdict.ts): a child's verdict
 * arrives whole whatever its size — the line is flushed into the pipe before the child exits
 * (process.exit drops what a non-blocking pipe has not taken yet, so a verdict larger than the pipe's
 * 64 KiB would be cut, and the parent would see a child that exited 0 without a verdict); a line cut
 * short is reported as such; a Python child writes no bytecode into the tree.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";
import { tsFiles } from "../support/source-files.js";
import { command, need, skipWithout } from "../support/tools.js";
import { childFailure, runChild, verdictIn } from "./run-child.js";

const CHILD = fileURLToPath(new URL("../support/verdict-child.ts", import.meta.url));

it("a 4 MiB verdict line reaches the parent whole, and the child exits 0", async () => {
  const bytes = 4 * 1024 * 1024;
  const out = await runChild(process.execPath, ["--import", "tsx", CHILD, String(bytes)]);
  expect(out.code).toBe(0);
  expect(out.verdict?.ok).toBe(true);
  expect((out.verdict?.padding as string | undefined)?.length).toBe(bytes);
});

it("a verdict line cut short is no verdict, and the failure message says it was cut", () => {
  const stdout = 'STAGE plug\nVERDICT {"ok":true,"log":["a","b';
  const out = { verdict: verdictIn(stdout), code: 0, stdout, stderr: "", ms: 5 };
  expect(out.verdict).toBeNull();
  expect(childFailure("the child", out)).toBe(
    "the child failed (exit 0, 5 ms): its VERDICT line was cut short or is not JSON (32 bytes)\n",
  );
  expect(verdictIn(`${stdout}"]}\n`)).toEqual({ ok: true, log: ["a", "b"] });
  expect(childFailure("the child", { ...out, stdout: "STAGE plug\n" })).toContain(": no VERDICT line");
});

const python = command(["python3"], "apt-get install python3");

it.skipIf(skipWithout("the Python bytecode test", python))(
  "a Python child imports a module without writing __pycache__ beside it",
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-pyc-"));
    // Not inherited from this environment: runChild itself must see to it.
    const inherited = process.env.PYTHONDONTWRITEBYTECODE;
    delete process.env.PYTHONDONTWRITEBYTECODE;
    try {
      writeFileSync(join(dir, "helper.py"), "VALUE = 42\n");
      const script = `import sys; sys.path.insert(0, ${JSON.stringify(dir)}); import helper; print("VERDICT", '{"ok": true}')`;
      const out = await runChild(need(python), ["-c", script]);
      expect(out.verdict).toEqual({ ok: true });
      expect(existsSync(join(dir, "__pycache__"))).toBe(false);
    } finally {
      if (inherited !== undefined) process.env.PYTHONDONTWRITEBYTECODE = inherited;
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

it("every test child prints its verdict through exitWithVerdict, none with its own write and exit", () => {
  const test = fileURLToPath(new URL("..", import.meta.url));
  const own = tsFiles(test).filter(
    (f) => !f.endsWith("support/verdict.ts") && /\.write\(\s*`VERDICT /.test(readFileSync(f, "utf8")),
  );
  expect(own.map((f) => f.slice(test.length))).toEqual([]);
});
