/**
 * `usbvirt serve` to Linux's own USB/IP client: QEMU (TCG) boots a Debian kernel that imports usbvirt's
 * storage (backed by a file with a known pattern), keyboard and loopback into vhci-hcd. The guest has no
 * network: each device has a virtio-serial port whose chardev reaches the server on 127.0.0.1 (through a
 * relay that connects when the guest first speaks); in the guest, guest-tool sends OP_REQ_IMPORT on the
 * port, relays it to one end of a socketpair and hands the other end to vhci's `attach` file. Then the same
 * checks as the usbredir guest, through the guest's own drivers: the storage disk keeps a 4 KiB O_DIRECT
 * write (and is restored: the file is unchanged afterwards), a key pressed through the keyboard's device
 * command arrives as an input event, and the loopback echoes bulk transfers of 1 to 16384 bytes (usbfs).
 * The server is the CLI's `serve`, run in-process so the test can press the key. Skips where QEMU or the
 * guest image is missing, unless USBVIRT_REQUIRE_TOOLS=1 (CI).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { serveInProcess } from "../cli/helpers.js";
import { holdFor } from "../support/eventually.js";
import { skipWithout } from "../support/tools.js";
import { type LazyRelay, startLazyRelay } from "./lazy-relay.js";
import { bootGuest, describeRun, requireGuest, vmmGuest } from "./qemu-guest.js";

const KEY_A = 30; // linux/input-event-codes.h; HID usage 0x04
const availability = vmmGuest();

describe.skipIf(skipWithout("the vhci-hcd QEMU test", availability))(
  "Linux's vhci-hcd imports from usbvirt serve",
  () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-vmm-vhci-"));
    const relays: LazyRelay[] = [];
    let stopServe: (() => Promise<number>) | null = null;
    afterAll(async () => {
      for (const r of relays) await r.close();
      await stopServe?.();
      rmSync(dir, { recursive: true, force: true });
    });

    it("the guest kernel's USB/IP client uses usbvirt's storage, keyboard and loopback", async () => {
      const guest = requireGuest(availability);
      const disk = join(dir, "disk.img");
      const content = Buffer.alloc(8 << 20);
      for (let i = 0; i < content.length; i++) content[i] = (i * 31 + 7) & 0xff;
      writeFileSync(disk, content);
      const serve = await serveInProcess([
        ...["--device", "storage", "--device", "keyboard", "--device", "loopback"],
        ...["--storage-file", disk, "--storage-size", "8M"],
      ]);
      stopServe = serve.stop;
      const busids = serve.server.devices.map((d) => d.busid);
      expect(busids).toEqual(["1-1", "1-2", "1-3"]);
      const keyboardPort = serve.server.devices[1]!.port;
      for (const _ of busids) relays.push(await startLazyRelay(serve.server.address));

      const typed: string[] = [];
      let importedWhileRunning: readonly string[] = [];
      const run = await bootGuest({
        guest,
        name: "vhci-devices",
        usbip: busids.map((busid, i) => ({ busid, port: relays[i]!.port })),
        checks: ["vhci", "storage", "keyboard", "loopback"],
        // Seconds for each device to appear once attached (about 2 s each here): generous for a busy machine,
        // and a boot that fails every check still ends (3 waits) before the timeout, with its kernel log.
        waitS: 45,
        timeoutMs: 300_000,
        onLine: (line) => {
          if (line.startsWith("STEP usb-ids ")) importedWhileRunning = serve.server.stats().imported;
          if (!line.startsWith("STEP keyboard-ready ok")) return;
          void (async () => {
            await serve.server.connection.deviceCommand(keyboardPort, "pressKeys", 0, [0x04]);
            await holdFor(50); // the key is held down for 50 ms: a premise, not a wait for anything
            await serve.server.connection.deviceCommand(keyboardPort, "releaseAll");
            typed.push("a");
          })().catch((e: Error) => typed.push(`error: ${e.message}`));
        },
      });
      const why = `${describeRun(run)}\nusbvirt log:\n${serve.c.logger.lines.join("\n")}`;
      expect(run.done, why).toBe(true);
      // Each import announced the device's speed: storage and loopback high, the keyboard full.
      expect(run.steps.get("vhci-1-1")?.detail, why).toMatch(/^1209:0003 imported .*, high speed \(3\)/);
      expect(run.steps.get("vhci-1-2")?.detail, why).toMatch(/^1209:0002 imported .*, full speed \(2\)/);
      expect(run.steps.get("vhci-1-3")?.detail, why).toMatch(/^1209:0001 imported .*, high speed \(3\)/);
      expect(run.steps.get("storage"), why).toMatchObject({ ok: true });
      expect(run.steps.get("keyboard-ready")?.detail, why).toMatch(/^\/dev\/input\/event\d+$/);
      expect(typed, why).toEqual(["a"]);
      expect(run.steps.get("key"), why).toEqual({ ok: true, detail: `code=${KEY_A}` });
      expect(run.steps.get("loopback"), why).toMatchObject({ ok: true });
      // vhci's bus shows each device at the speed it was attached with (sysfs speed, Mb/s).
      for (const id of ["1209:0003@", "1209:0002@", "1209:0001@"]) {
        expect(run.steps.get("usb-ids")?.detail, why).toContain(id);
      }
      expect(run.steps.get("usb-ids")?.detail, why).toMatch(/1209:0003@\S+\/480\b/);
      expect(run.steps.get("usb-ids")?.detail, why).toMatch(/1209:0002@\S+\/12\b/);
      expect(run.steps.get("usb-ids")?.detail, why).toMatch(/1209:0001@\S+\/480\b/);
      expect(
        [...run.steps.values()].filter((s) => !s.ok),
        why,
      ).toEqual([]);
      // The server saw the three imports from the guest, each on its own connection.
      expect([...importedWhileRunning].sort(), why).toEqual(["1-1", "1-2", "1-3"]);
      expect(
        relays.map((r) => r.upstreams),
        why,
      ).toEqual([1, 1, 1]);
      for (const busid of busids) expect(serve.c.logger.matching(`imported ${busid}`).length, why).toBe(1);
      // Linux's client made no request the server had to refuse or warn about.
      expect(serve.c.logger.records.filter((r) => r.level !== "info").map((r) => r.message)).toEqual([]);
      for (const r of relays) await r.close();
      relays.length = 0;
      expect(await serve.stop(), why).toBe(0);
      stopServe = null;
      expect(readFileSync(disk).equals(content), "the guest restored the block it wrote").toBe(true);
    }, 330_000);

    it("a SuperSpeed storage (speed 4, from a config file) is attached to a vhci SuperSpeed port: sysfs speed 5000", async () => {
      const guest = requireGuest(availability);
      const disk = join(dir, "disk-super.img");
      const content = Buffer.alloc(8 << 20);
      for (let i = 0; i < content.length; i++) content[i] = (i * 13 + 5) & 0xff;
      writeFileSync(disk, content);
      const config = join(dir, "serve-super.json");
      const storage = {
        kind: "emulated",
        name: "storage",
        options: { file: disk, sizeBytes: 8 << 20, speed: 4 },
      };
      writeFileSync(config, JSON.stringify({ devices: [storage] }));
      const serve = await serveInProcess(["--config", config]);
      stopServe = serve.stop;
      const busids = serve.server.devices.map((d) => d.busid);
      expect(busids).toEqual(["1-1"]);
      relays.push(await startLazyRelay(serve.server.address));
      const run = await bootGuest({
        guest,
        name: "vhci-superspeed-storage",
        usbip: [{ busid: "1-1", port: relays[0]!.port }],
        checks: ["vhci", "storage"],
        waitS: 45,
        timeoutMs: 300_000,
      });
      const why = `${describeRun(run)}\nusbvirt log:\n${serve.c.logger.lines.join("\n")}`;
      expect(run.done, why).toBe(true);
      // The record said USB_SPEED_SUPER (5): guest-tool picked a port of vhci's SuperSpeed root hub.
      expect(run.steps.get("vhci-1-1")?.detail, why).toMatch(/^1209:0003 imported .*, super speed \(5\)/);
      expect(run.steps.get("usb-ids")?.detail, why).toMatch(/1209:0003@\S+\/5000\b/);
      expect(run.steps.get("storage"), why).toMatchObject({ ok: true });
      expect(
        [...run.steps.values()].filter((s) => !s.ok),
        why,
      ).toEqual([]);
      for (const r of relays) await r.close();
      relays.length = 0;
      expect(await serve.stop(), why).toBe(0);
      stopServe = null;
      expect(readFileSync(disk).equals(content), "the guest restored the block it wrote").toBe(true);
    }, 330_000);
  },
);
