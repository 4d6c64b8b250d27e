/**
 * `usbvirt redirect` to a real VMM: QEMU (TCG) boots a Debian kernel whose qemu-xhci has three usb-redir
 * devices, each a chardev connected to one UsbredirServer on 127.0.0.1: usbvirt's storage (backed by a
 * file with a known pattern), keyboard and loopback. The guest (scripts/vmm/init.sh) must enumerate each
 * through QEMU's xHCI and its own drivers: the storage disk keeps a 4 KiB O_DIRECT write (and is
 * restored: the file is unchanged afterwards), a key pressed through the keyboard's deviceCommand arrives
 * as an input event, and the loopback echoes bulk transfers of 1 to 16384 bytes (usbfs, guest-tool).
 * Every transfer crossed the engine: the servers' URB counters say how many. Skips where QEMU or the
 * guest image is missing, unless USBVIRT_REQUIRE_TOOLS=1 (CI).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { DeviceSpec } from "../../src/devices/spec.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import { UsbredirServer } from "../../src/usbredir/server.js";
import { holdFor } from "../support/eventually.js";
import { skipWithout } from "../support/tools.js";
import { bootGuest, describeRun, requireGuest, vmmGuest } from "./qemu-guest.js";

const KEY_A = 30; // linux/input-event-codes.h; HID usage 0x04
const availability = vmmGuest();

describe.skipIf(skipWithout("the usbredir QEMU test", availability))(
  "usbvirt redirect to a QEMU guest",
  () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-vmm-redir-"));
    const servers: UsbredirServer[] = [];
    afterAll(async () => {
      for (const s of servers) await s.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it("the guest kernel uses usbvirt's storage, keyboard and loopback through QEMU's xHCI", async () => {
      const guest = requireGuest(availability);
      const disk = join(dir, "disk.img");
      const content = Buffer.alloc(8 << 20);
      for (let i = 0; i < content.length; i++) content[i] = (i * 29 + 3) & 0xff;
      writeFileSync(disk, content);
      const log = new CollectingLogger();
      const start = (device: DeviceSpec) =>
        UsbredirServer.start({ device, listen: { port: 0 }, logger: log });
      const storage = await start({ kind: "emulated", name: "storage", options: { file: disk } });
      servers.push(storage);
      const keyboard = await start({ kind: "emulated", name: "keyboard" });
      servers.push(keyboard);
      const loopback = await start({ kind: "emulated", name: "loopback" });
      servers.push(loopback);
      const typed: string[] = [];
      const run = await bootGuest({
        guest,
        name: "usbredir-devices",
        redirPorts: [storage, keyboard, loopback].map((s) => s.address!.port),
        checks: ["storage", "keyboard", "loopback"],
        timeoutMs: 150_000,
        onLine: (line) => {
          if (!line.startsWith("STEP keyboard-ready ok")) return;
          void (async () => {
            await keyboard.deviceCommand("pressKeys", 0, [0x04]);
            await holdFor(50); // the key is held down for 50 ms: a premise, not a wait for anything
            await keyboard.deviceCommand("releaseAll");
            typed.push("a");
          })().catch((e: Error) => typed.push(`error: ${e.message}`));
        },
      });
      const why = `${describeRun(run)}\nusbvirt log:\n${log.lines.join("\n")}`;
      expect(run.done, why).toBe(true);
      expect(run.steps.get("storage"), why).toMatchObject({ ok: true });
      expect(run.steps.get("keyboard-ready")?.detail, why).toMatch(/^\/dev\/input\/event\d+$/);
      expect(typed, why).toEqual(["a"]);
      expect(run.steps.get("key"), why).toEqual({ ok: true, detail: `code=${KEY_A}` });
      expect(run.steps.get("loopback"), why).toMatchObject({ ok: true });
      for (const id of ["1209:0001@", "1209:0002@", "1209:0003@"]) {
        expect(run.steps.get("usb-ids")?.detail, why).toContain(id);
      }
      expect(
        [...run.steps.values()].filter((s) => !s.ok),
        why,
      ).toEqual([]);
      // Each device was announced to QEMU and released when it went away.
      expect(log.lines.filter((l) => /redirected usbvirt/.test(l)).length, why).toBeGreaterThanOrEqual(3);
      expect(log.lines.filter((l) => /usbredir peer "qemu usb-redir guest/.test(l)).length, why).toBe(3);
      for (const s of servers) await s.close();
      expect(readFileSync(disk).equals(content), "the guest restored the block it wrote").toBe(true);
    }, 180_000);

    it("a SuperSpeed storage (speed 4) lands on the xHCI's USB 3 port: sysfs speed 5000, Bulk-Only I/O works", async () => {
      const guest = requireGuest(availability);
      const disk = join(dir, "disk-super.img");
      const content = Buffer.alloc(8 << 20);
      for (let i = 0; i < content.length; i++) content[i] = (i * 31 + 7) & 0xff;
      writeFileSync(disk, content);
      const log = new CollectingLogger();
      const storage = await UsbredirServer.start({
        device: { kind: "emulated", name: "storage", options: { file: disk, speed: 4 } },
        listen: { port: 0 },
        logger: log,
      });
      servers.push(storage);
      const run = await bootGuest({
        guest,
        name: "usbredir-superspeed-storage",
        redirPorts: [storage.address!.port],
        checks: ["storage"],
        timeoutMs: 150_000,
      });
      const why = `${describeRun(run)}\nusbvirt log:\n${log.lines.join("\n")}`;
      expect(run.done, why).toBe(true);
      expect(run.steps.get("usb-ids")?.detail, why).toMatch(/1209:0003@\S+\/5000/);
      expect(run.steps.get("storage"), why).toMatchObject({ ok: true });
      expect(
        [...run.steps.values()].filter((s) => !s.ok),
        why,
      ).toEqual([]);
      await storage.close();
      expect(readFileSync(disk).equals(content), "the guest restored the block it wrote").toBe(true);
    }, 180_000);
  },
);
