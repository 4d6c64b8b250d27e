/**
 * contrib's systemd units as systemd and usbvirt read them: each ExecStart is a usbvirt command line whose
 * every flag exists, and `systemd-analyze verify` (when installed) finds nothing wrong in serve's service
 * and socket or in redirect's templates instantiated for a port, but the binary's path, which is where a
 * package would install usbvirt.
 */
import { execFile } from "node:child_process";
import { copyFile, mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { command, need, skipWithout } from "../support/tools.js";
import { capture, ROOT } from "./helpers.js";

const CONTRIB = join(ROOT, "contrib");

/** The usbvirt arguments of a unit's ExecStart (continued lines joined). */
async function execStartArgs(unit: string): Promise<string[]> {
  const text = (await readFile(join(CONTRIB, unit), "utf8")).replace(/\\\n\s*/g, "");
  const line = /^ExecStart=(\S+)\s+(.*)$/m.exec(text);
  expect(line?.[1], `${unit}: ExecStart`).toBe("/usr/bin/usbvirt");
  return line![2]!.trim().split(/\s+/);
}

describe("contrib's systemd units", () => {
  it.each([
    ["usbvirt.service", "serve"],
    ["usbvirt-redirect@.service", "redirect"],
  ])("%s runs `usbvirt %s` with flags it has", async (unit, command) => {
    const args = await execStartArgs(unit);
    expect(args[0]).toBe(command);
    // --help after the unit's flags: exit 0 (the help) only when every flag before it parses.
    const c = capture();
    expect(await run([...args, "--help"], c.io), c.err).toBe(0);
    expect(c.out).toContain(`usage: usbvirt ${command}`);
  });

  it("the redirect service reads the instance's config file", async () => {
    const args = await execStartArgs("usbvirt-redirect@.service");
    expect(args.slice(1, 3)).toEqual(["--config", "/etc/usbvirt/redirect/%i.json"]);
  });

  const analyze = command(["systemd-analyze"], "apt-get install systemd");

  it.skipIf(skipWithout("systemd-analyze verify of contrib's units", analyze))(
    "systemd-analyze verify finds nothing wrong but the binary's path",
    async () => {
      const dir = await mkdtemp(join(tmpdir(), "usbvirt-units-"));
      for (const f of [
        "usbvirt.service",
        "usbvirt.socket",
        "usbvirt-redirect@.service",
        "usbvirt-redirect@.socket",
      ]) {
        await copyFile(join(CONTRIB, f), join(dir, f));
      }
      const units = [
        "usbvirt.socket",
        "usbvirt.service",
        "usbvirt-redirect@4000.socket",
        "usbvirt-redirect@4000.service",
      ];
      const result = await promisify(execFile)(
        need(analyze),
        ["verify", "--man=no", ...units.map((u) => join(dir, u))],
        {
          cwd: dir,
        },
      ).then(
        (r) => ({ code: 0, text: `${r.stdout}${r.stderr}` }),
        (e: { code?: number; stdout?: string; stderr?: string }) => ({
          code: e.code ?? -1,
          text: `${e.stdout ?? ""}${e.stderr ?? ""}`,
        }),
      );
      const problems = result.text
        .split("\n")
        .filter((l) => l.trim() !== "" && !/Command \/usr\/bin\/usbvirt is not executable/.test(l));
      expect(problems).toEqual([]);
    },
  );
});
