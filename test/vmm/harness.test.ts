/**
 * The real-VMM harness (qemu-guest.ts) and the guest's checks (scripts/vmm/init.sh), proven on QEMU's own
 * emulated USB devices: one boot with `usb-storage` (a raw file) and `usb-kbd` on the qemu-xhci, a key
 * typed through QEMU's monitor once the guest has its keyboard's event node open, and the guest's loopback
 * code (guest-tool) run against Linux's own f_loopback gadget on dummy_hcd inside the guest. The usbredir
 * tests use the same guest with usbvirt's devices instead. Skips where QEMU or the guest image is missing, unless
 * USBVIRT_REQUIRE_TOOLS=1 (CI).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { skipWithout } from "../support/tools.js";
import { bootGuest, describeRun, parseStep, qemuArgs, requireGuest, vmmGuest } from "./qemu-guest.js";

const KEY_A = 30; // linux/input-event-codes.h

describe("the QEMU command line and the guest's marker lines", () => {
  const guest = { qemu: "/q", kernel: "/k", initrd: "/i" };

  it("puts one usb-redir device per port on the xHCI, each a TCP client of 127.0.0.1", () => {
    const args = qemuArgs(guest, { checks: ["storage", "keyboard"], redirPorts: [4000, 4001] });
    const joined = args.join(" ");
    expect(joined).toContain("-accel tcg -cpu max -m 512 -smp 1 -nodefaults -nic none -display none");
    expect(joined).toContain("-device qemu-xhci,id=xhci");
    expect(joined).toContain(
      "-chardev socket,id=r0,host=127.0.0.1,port=4000 -device usb-redir,chardev=r0,bus=xhci.0 " +
        "-chardev socket,id=r1,host=127.0.0.1,port=4001 -device usb-redir,chardev=r1,bus=xhci.0",
    );
    expect(args[args.indexOf("-append") + 1]).toContain("usbvirt.checks=storage,keyboard usbvirt.wait=30");
  });

  it("gives each USB/IP device a virtio-serial port named for its bus id, and the guest the bus ids", () => {
    const usbip = [
      { busid: "1-1", port: 5000 },
      { busid: "1-2", port: 5001 },
    ];
    const args = qemuArgs(guest, { checks: ["vhci"], usbip });
    expect(args.join(" ")).toContain(
      "-device virtio-serial-pci,id=vser " +
        "-chardev socket,id=u0,host=127.0.0.1,port=5000 -device virtserialport,bus=vser.0,chardev=u0,name=usbip.1-1 " +
        "-chardev socket,id=u1,host=127.0.0.1,port=5001 -device virtserialport,bus=vser.0,chardev=u1,name=usbip.1-2",
    );
    expect(args[args.indexOf("-append") + 1]).toContain("usbvirt.usbip=1-1,1-2");
    expect(qemuArgs(guest, { checks: [] }).join(" ")).not.toContain("virtio-serial");
    expect(() => qemuArgs(guest, { checks: [], usbip: [{ busid: "1-1 x", port: 5000 }] })).toThrow(
      /bad bus id/,
    );
    expect(() => qemuArgs(guest, { checks: [], usbip: [{ busid: "1-1", port: 0 }] })).toThrow(/bad port 0/);
  });

  it("refuses a port or check name that would corrupt the command line", () => {
    expect(() => qemuArgs(guest, { checks: [], redirPorts: [70000] })).toThrow(/bad port 70000/);
    expect(() => qemuArgs(guest, { checks: ["storage loopback"] })).toThrow(/bad check name/);
  });

  it("puts the checks' parameters on the kernel command line, and refuses ones that would corrupt it", () => {
    const args = qemuArgs(guest, {
      checks: ["storage-read"],
      params: { "read-disks": "usbvirt:5553425649520001,pypeer:5059504545520001", "read-rounds": 5 },
    });
    expect(args[args.indexOf("-append") + 1]).toContain(
      "usbvirt.checks=storage-read usbvirt.wait=30 " +
        "usbvirt.read-disks=usbvirt:5553425649520001,pypeer:5059504545520001 usbvirt.read-rounds=5",
    );
    expect(() => qemuArgs(guest, { checks: [], params: { "read-mib": "1 quiet" } })).toThrow(/bad value/);
    expect(() => qemuArgs(guest, { checks: [], params: { "Read mib": 1 } })).toThrow(/bad key/);
    expect(() => qemuArgs(guest, { checks: [], params: { checks: "storage" } })).toThrow(/bad key/);
  });

  it("parses STEP lines and nothing else", () => {
    expect(parseStep("STEP key ok code=30")).toEqual({
      name: "key",
      result: { ok: true, detail: "code=30" },
    });
    expect(parseStep("STEP storage fail no USB disk after 30 s")).toEqual({
      name: "storage",
      result: { ok: false, detail: "no USB disk after 30 s" },
    });
    expect(parseStep("STEP modules ok")).toEqual({ name: "modules", result: { ok: true, detail: "" } });
    expect(parseStep("[    2.1] STEP key ok code=30")).toBeNull();
    expect(parseStep("STEP key maybe")).toBeNull();
  });
});

const availability = vmmGuest();

describe.skipIf(skipWithout("the QEMU guest harness test", availability))(
  "a QEMU guest with QEMU's own USB devices",
  () => {
    const dir = mkdtempSync(join(tmpdir(), "usbvirt-vmm-harness-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it("sees usb-storage as a disk that keeps a 4 KiB O_DIRECT write, a key typed on usb-kbd, and a gadget's bulk echo", async () => {
      const guest = requireGuest(availability);
      // An 8 MiB disk filled with a known pattern: the guest must leave it as it found it.
      const disk = join(dir, "disk.raw");
      const content = Buffer.alloc(8 << 20);
      for (let i = 0; i < content.length; i++) content[i] = (i * 31 + 7) & 0xff;
      writeFileSync(disk, content);
      const typed: string[] = [];
      const run = await bootGuest({
        guest,
        name: "harness-qemu-devices",
        checks: ["storage", "keyboard", "gadget-loopback"],
        timeoutMs: 100_000,
        monitor: true,
        extraArgs: [
          ...["-drive", `if=none,id=d0,format=raw,file=${disk}`],
          ...["-device", "usb-storage,bus=xhci.0,drive=d0"],
          ...["-device", "usb-kbd,bus=xhci.0"],
        ],
        onLine: (line, control) => {
          if (!line.startsWith("STEP keyboard-ready ok")) return;
          control.hmp("sendkey a").then(
            (out) => typed.push(out),
            (e: Error) => typed.push(`error: ${e.message}`),
          );
        },
      });
      const why = describeRun(run);
      expect(run.done, why).toBe(true);
      expect(run.steps.get("modules")?.ok, why).toBe(true);
      expect(run.steps.get("storage"), why).toMatchObject({ ok: true });
      expect(run.steps.get("storage")?.detail, why).toContain("4096 bytes at block 256 of /dev/sd");
      expect(run.steps.get("keyboard-ready")?.detail, why).toMatch(/^\/dev\/input\/event\d+$/);
      expect(typed, why).toHaveLength(1);
      expect(run.steps.get("key"), why).toEqual({ ok: true, detail: `code=${KEY_A}` });
      expect(run.steps.get("gadget-loopback"), why).toMatchObject({ ok: true });
      expect(run.steps.get("gadget-loopback")?.detail, why).toContain(
        "15 bulk transfers 0x02 -> 0x81 echoed intact",
      );
      // QEMU's usb-storage (46f4:0001) and usb-kbd (0627:0001).
      expect(run.steps.get("usb-ids")?.detail, why).toContain("46f4:0001@");
      expect(run.steps.get("usb-ids")?.detail, why).toContain("0627:0001@");
      expect(
        [...run.steps.values()].filter((s) => !s.ok),
        why,
      ).toEqual([]);
      expect(readFileSync(disk).equals(content), "the guest restored the block it wrote").toBe(true);
    }, 120_000);
  },
);
