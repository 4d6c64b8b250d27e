/**
 * `usbvirt ctl assign` / `release` with a real VMM: QEMU (TCG) boots the test guest with a usb-redir device
 * whose chardev listens (server=on), as a VM waiting for a device does. A running `serve --control` is told
 * to assign its emulated loopback to that chardev: the guest kernel enumerates it through QEMU's xHCI and the
 * loopback check echoes bulk transfers through it. Then ctl releases the loopback and assigns the storage
 * device to the same chardev: the guest sees a USB disk appear and keeps an O_DIRECT write. Skips where QEMU
 * or the guest image is missing, unless tools are required (CI).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { freePort, serveInProcess } from "../cli/helpers.js";
import { skipWithout } from "../support/tools.js";
import { bootGuest, describeRun, requireGuest, vmmGuest } from "./qemu-guest.js";

const availability = vmmGuest();

async function ctl(control: string, ...args: string[]): Promise<string> {
  let text = "";
  const code = await run(["ctl", "--control", control, ...args], {
    out: (t) => {
      text += t;
    },
    err: (t) => {
      text += t;
    },
  });
  return `${code} ${text.trim()}`;
}

describe.skipIf(skipWithout("the ctl assign QEMU test", availability))(
  "usbvirt ctl assign to a QEMU guest",
  () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-vmm-ctl-"));
    let stopServe: (() => Promise<number>) | null = null;
    afterAll(async () => {
      await stopServe?.();
      rmSync(dir, { recursive: true, force: true });
    });

    it("assign gives the loopback to the VM's listening chardev, release takes it back, then the storage goes there", async () => {
      const guest = requireGuest(availability);
      const control = join(dir, "control.sock");
      const serve = await serveInProcess([
        "--control",
        control,
        "--state-dir",
        join(dir, "state"),
        "--storage-size",
        "8M",
      ]);
      stopServe = serve.stop;
      const port = await freePort();
      const to = `qemu:127.0.0.1:${port}`;
      // QEMU is not listening yet: the assignment dials with a backoff until it is.
      const assigned = await ctl(control, "assign", "loopback", "--to", to);
      const swaps: string[] = [];
      const run = await bootGuest({
        guest,
        name: "ctl-assign",
        checks: ["loopback", "storage"],
        extraArgs: [
          "-chardev",
          `socket,id=vm0,host=127.0.0.1,port=${port},server=on,wait=off`,
          "-device",
          "usb-redir,chardev=vm0,bus=xhci.0",
        ],
        timeoutMs: 180_000,
        onLine: (line) => {
          if (!line.startsWith("STEP loopback ")) return;
          void (async () => {
            swaps.push(await ctl(control, "release", "loopback"));
            swaps.push(await ctl(control, "assign", "storage", "--to", to));
          })().catch((e: Error) => swaps.push(`error: ${e.message}`));
        },
      });
      const log = serve.c.logger.lines;
      const why = `${describeRun(run)}\nusbvirt log:\n${log.join("\n")}`;
      expect(assigned, why).toBe(`0 loopback: assigned to ${to}`);
      expect(run.steps.get("loopback"), why).toMatchObject({ ok: true });
      expect(swaps, why).toEqual(["0 loopback: released", `0 storage: assigned to ${to}`]);
      expect(run.steps.get("storage"), why).toMatchObject({ ok: true });
      // At the end the guest's USB bus has the storage and no longer the loopback: release took it away.
      expect(run.steps.get("usb-ids")?.detail, why).toContain("1209:0003@");
      expect(run.steps.get("usb-ids")?.detail, why).not.toContain("1209:0001@");
      expect(run.done, why).toBe(true);
      expect(log.filter((l) => /redirected usbvirt loopback/.test(l)).length, why).toBeGreaterThanOrEqual(1);
      expect(log.filter((l) => /redirected usbvirt mass storage/.test(l)).length, why).toBeGreaterThanOrEqual(
        1,
      );
      expect(
        log.some((l) => l.includes(`control: released loopback from ${to}`)),
        why,
      ).toBe(true);
    }, 240_000);
  },
);
