/**
 * `usbvirt ctl` against a running `serve --control` (in-process, a fake host listing): list says every
 * device's state; bind exports an emulated device on a spare port (a USB/IP client lists and imports it),
 * detach cuts the importer off, unbind withdraws it (the importer sees the connection close); assign gives
 * a device to a VM whose chardev listens (a usbredir guest on an accepted socket, TCP or Unix: it sees the
 * device and moves data), release takes it back; a held device is refused naming its holder, a device
 * the filter denies naming the rule; and serve, restarted on the same --state-dir, is as it was left.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CliIo, run } from "../../src/cli/run.js";
import { claimHostDevice } from "../../src/devices/host/device-claim.js";
import type { ListResult } from "../../src/toolstack/protocol.js";
import { listRemote } from "../../src/usbip/client.js";
import { type AttachedDevice, attachRemote } from "../../src/usbip-attach/attach.js";
import type { HotplugSource } from "../../src/usbip-server/host-exports.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { RedirStatus } from "../../src/usbredir/protocol.js";
import { eventually } from "../support/eventually.js";
import { capture, redirectInProcess } from "./helpers.js";

const HUB = { vendorId: 0x05e3, productId: 0x0608, deviceClass: 9, portPath: "1-4", product: "USB2.0 Hub" };
const STICK = {
  vendorId: 0x0781,
  productId: 0x5567,
  deviceClass: 0,
  interfaceClasses: [8],
  portPath: "1-3",
  busNumber: 1,
  deviceAddress: 3,
};

const quietSource: HotplugSource = { watch: () => () => undefined, list: async () => [HUB, STICK] };

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "usbvirt-ctl-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function serve(args: readonly string[]) {
  let stop!: (s: string) => void;
  const stopped = new Promise<string>((r) => {
    stop = r;
  });
  let up!: (s: UsbipServer) => void;
  const listening = new Promise<UsbipServer>((r) => {
    up = r;
  });
  const c = capture({
    listHostDevices: async () => [HUB, STICK],
    hotplugSource: quietSource,
    stopSignal: () => stopped,
    onListening: (s) => up(s),
  });
  const control = join(dir, "control.sock");
  const exit = run(
    ["serve", "--port", "0", "--control", control, "--state-dir", join(dir, "state"), ...args],
    c.io,
  );
  const server = await Promise.race([
    listening,
    exit.then((code) => {
      throw new Error(`serve exited ${code}: ${c.err}`);
    }),
  ]);
  return {
    server,
    c,
    control,
    stop: async () => {
      stop("SIGINT");
      return await exit;
    },
  };
}

/** `usbvirt ctl --control PATH ARGS`: exit status and output. */
async function ctl(control: string, ...args: string[]) {
  let out = "";
  let err = "";
  const io: CliIo = {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
  };
  const code = await run(["ctl", "--control", control, ...args], io);
  return { code, out, err };
}

async function listJson(control: string): Promise<ListResult> {
  const r = await ctl(control, "list", "--json");
  expect(r.code).toBe(0);
  return JSON.parse(r.out) as ListResult;
}

/** A VM's usb-redir chardev in listen mode (server=on): each connection gets a usbredir guest. */
async function fakeVm(where: { path: string } | { port: 0 }) {
  const guests: UsbredirClient[] = [];
  const server: Server = createServer((socket: Socket) => {
    UsbredirClient.over(socket).then(
      (g) => guests.push(g),
      () => socket.destroy(),
    );
  });
  await new Promise<void>((r) =>
    "path" in where ? server.listen(where.path, () => r()) : server.listen(0, "127.0.0.1", () => r()),
  );
  const address = server.address();
  const to = "path" in where ? `unix:${where.path}` : `qemu:127.0.0.1:${(address as { port: number }).port}`;
  return {
    to,
    guests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function echoes(g: UsbredirClient, bytes: number[]): Promise<boolean> {
  const out = await g.bulk(0x01, new Uint8Array(bytes)).reply;
  const back = await g.bulk(0x81, 512).reply;
  return out.status === RedirStatus.SUCCESS && JSON.stringify([...back.data]) === JSON.stringify(bytes);
}

describe("usbvirt ctl steers a running serve", () => {
  it("list, bind, import, detach, unbind: the USB/IP client sees each change", async () => {
    const { server, control, c, stop } = await serve([]);
    let att: AttachedDevice | null = null;
    try {
      const port = server.address.port;
      const table = await ctl(control, "list");
      expect(table.code).toBe(0);
      expect(table.out.split("\n")[0]).toMatch(/^KIND\s+DEVICE\s+DESCRIPTION\s+STATE$/);
      expect(table.out).toMatch(/host\s+1-3\s+0781:5567\s+available/);
      expect(table.out).toMatch(
        /host\s+1-4\s+05e3:0608 USB2.0 Hub\s+denied by the filter: the built-in rule: deny hubs/,
      );
      expect(table.out).toMatch(/emulated\s+keyboard\s+emulated keyboard\s+available/);
      expect(await listRemote({ host: "127.0.0.1", port })).toEqual([]);

      expect(await ctl(control, "bind", "keyboard")).toEqual({
        code: 0,
        out: "keyboard: bound as 1-1\n",
        err: "",
      });
      expect((await listRemote({ host: "127.0.0.1", port })).map((d) => d.busid)).toEqual(["1-1"]);
      const refused = await ctl(control, "bind", "keyboard");
      expect(refused).toEqual({
        code: 1,
        out: "",
        err: "usbvirt ctl: bind refused (in-use): keyboard is in use by USB/IP bus id 1-1\n",
      });
      const hub = await ctl(control, "bind", "1-4");
      expect(hub.err).toBe(
        "usbvirt ctl: bind refused (denied): 1-4 is denied by the filter: the built-in rule: deny hubs (class 0x09)\n",
      );

      att = await attachRemote({ host: "127.0.0.1", port, busid: "1-1", timeoutMs: 3000, reconnect: false });
      await eventually(
        async () => (await listJson(control)).devices.some((d) => d.state === "imported"),
        5000,
        "the import listed",
      );
      const imported = (await listJson(control)).devices.find((d) => d.device === "keyboard")!;
      expect(imported).toMatchObject({
        state: "imported",
        busid: "1-1",
        client: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      });
      expect(Date.parse(imported.since!)).not.toBeNaN();

      const gone = new Promise<string>((r) => att!.events.once("disconnected", (why: string) => r(why)));
      const detached = await ctl(control, "detach", "1-1");
      expect(detached.code).toBe(0);
      expect(detached.out).toMatch(/^1-1: 127\.0\.0\.1:\d+ detached\n$/);
      expect(await gone).toMatch(/closed the connection/);
      await att.close();
      att = null;
      // Still bound: another import works.
      att = await attachRemote({ host: "127.0.0.1", port, busid: "1-1", timeoutMs: 3000, reconnect: false });
      const goneAgain = new Promise<string>((r) => att!.events.once("disconnected", (why: string) => r(why)));
      expect(await ctl(control, "unbind", "1-1")).toEqual({ code: 0, out: "1-1: unbound\n", err: "" });
      expect(await goneAgain).toMatch(/closed the connection/);
      expect(await listRemote({ host: "127.0.0.1", port })).toEqual([]);
      expect((await listJson(control)).devices.find((d) => d.device === "keyboard")!.state).toBe("available");
      expect((await ctl(control, "unbind", "1-1")).err).toBe(
        "usbvirt ctl: unbind refused (unknown-device): bus id 1-1 is not bound\n",
      );
      expect(c.logger.matching("control: bound keyboard as 1-1")).toHaveLength(1);
      // A selector with terminal escapes reaches neither the terminal nor the log raw.
      const hostile = await ctl(control, "bind", "\u001b[2Jevil");
      expect(hostile.code).toBe(1);
      expect(hostile.err).not.toContain("\u001b");
      expect(hostile.err).toContain("\\u001b[2Jevil");
      const logged = c.logger.matching("[2Jevil");
      expect(logged.length).toBeGreaterThan(0);
      expect(logged.every((l) => !l.includes("\u001b"))).toBe(true);
    } finally {
      await att?.close();
      expect(await stop()).toBe(0);
    }
  });

  it("assign gives a device to a VM's listening chardev (TCP and Unix), release takes it back; a held device is refused", async () => {
    const { control, stop } = await serve(["--device", "keyboard"]);
    const tcpVm = await fakeVm({ port: 0 });
    const unixVm = await fakeVm({ path: join(dir, "vm.sock") });
    try {
      expect((await ctl(control, "assign", "keyboard", "--to", tcpVm.to)).err).toBe(
        "usbvirt ctl: assign refused (in-use): keyboard is in use by USB/IP bus id 1-1\n",
      );
      expect(await ctl(control, "assign", "loopback", "--to", tcpVm.to)).toEqual({
        code: 0,
        out: `loopback: assigned to ${tcpVm.to}\n`,
        err: "",
      });
      await eventually(() => tcpVm.guests.length === 1, 10_000, "the VM got the device");
      const g = tcpVm.guests[0]!;
      expect([g.device?.vendorId, g.device?.productId]).toEqual([0x1209, 0x0001]);
      expect(await echoes(g, [1, 2, 3])).toBe(true);
      const row = (await listJson(control)).devices.find((d) => d.device === "loopback")!;
      expect(row).toMatchObject({ state: "assigned", vm: tcpVm.to });
      expect((await ctl(control, "bind", "loopback")).err).toBe(
        `usbvirt ctl: bind refused (in-use): loopback is in use by VM ${tcpVm.to}\n`,
      );
      expect((await ctl(control, "assign", "loopback", "--to", unixVm.to)).err).toContain("in use by VM");

      const closed = g.closedPromise();
      expect(await ctl(control, "release", "loopback")).toEqual({
        code: 0,
        out: "loopback: released\n",
        err: "",
      });
      await closed;
      expect((await listJson(control)).devices.find((d) => d.device === "loopback")!.state).toBe("available");

      expect((await ctl(control, "assign", "loopback", "--to", unixVm.to)).code).toBe(0);
      await eventually(() => unixVm.guests.length === 1, 10_000, "the Unix VM got the device");
      expect(await echoes(unixVm.guests[0]!, [9, 8])).toBe(true);
      expect((await ctl(control, "release", "loopback")).code).toBe(0);
      expect((await ctl(control, "release", "loopback")).err).toBe(
        "usbvirt ctl: release refused (unknown-device): loopback is not assigned\n",
      );
    } finally {
      expect(await stop()).toBe(0);
      await tcpVm.close();
      await unixVm.close();
    }
  });

  it("comes back after a restart as it was left: runtime binds, unbinds of the config's devices, assignments", async () => {
    const vm = await fakeVm({ port: 0 });
    try {
      const first = await serve(["--device", "storage", "--storage-size", "1M"]);
      expect((await ctl(first.control, "unbind", "storage")).code).toBe(0);
      expect((await ctl(first.control, "bind", "keyboard")).out).toBe("keyboard: bound as 1-1\n");
      expect((await ctl(first.control, "assign", "loopback", "--to", vm.to)).code).toBe(0);
      await eventually(() => vm.guests.length === 1, 10_000, "the VM got the device");
      const saved = JSON.parse(readFileSync(join(dir, "state", "state.json"), "utf8"));
      expect(saved).toEqual({
        version: 1,
        bound: [{ device: "keyboard", busid: "1-1" }],
        unbound: ["1-1"],
        assigned: [{ device: "loopback", to: vm.to }],
      });
      expect(await first.stop()).toBe(0);
      await vm.guests[0]!.closedPromise();

      const second = await serve(["--device", "storage", "--storage-size", "1M"]);
      try {
        const port = second.server.address.port;
        expect(
          (await listRemote({ host: "127.0.0.1", port })).map(
            (d) => `${d.busid} ${d.idProduct.toString(16)}`,
          ),
        ).toEqual([
          "1-1 2", // the keyboard (1209:0002) on the port it had, storage's (unbound, it left its port free)
        ]);
        await eventually(() => vm.guests.length === 2, 10_000, "the VM got the device again");
        expect(await echoes(vm.guests[1]!, [4, 5])).toBe(true);
        const states = (await listJson(second.control)).devices.map((d) => `${d.device} ${d.state}`);
        expect(states).toEqual(
          expect.arrayContaining(["keyboard bound", "loopback assigned", "storage available"]),
        );
        expect(second.c.logger.matching("control: restored")).toHaveLength(3);
      } finally {
        expect(await second.stop()).toBe(0);
      }
    } finally {
      await vm.close();
    }
  });

  it("the status page, /status.json and the metrics show the same states as list, and count actions and refusals", async () => {
    const { control, c, stop } = await serve(["--metrics", "127.0.0.1:0"]);
    try {
      const at = /metrics: (http:\/\/127\.0\.0\.1:\d+)\/metrics/.exec(c.out)![1]!;
      expect((await ctl(control, "bind", "keyboard")).code).toBe(0);
      expect((await ctl(control, "bind", "keyboard")).code).toBe(1); // in use: a refusal
      expect((await ctl(control, "bind", "1-4")).code).toBe(1); // the hub: denied
      const status = (await (await fetch(`${at}/status.json`)).json()) as {
        control: { socket: string; counters: Record<string, number>; devices: unknown[] };
      };
      expect(status.control.socket).toBe(control);
      expect(status.control.counters).toMatchObject({
        binds: 1,
        unbinds: 0,
        assigns: 0,
        releases: 0,
        refusals: 2,
      });
      expect(status.control.devices).toEqual((await listJson(control)).devices);
      const page = await (await fetch(`${at}/`)).text();
      expect(page).toContain(
        '<tr data-device="keyboard"><td>emulated</td><td>keyboard</td><td>emulated keyboard</td><td class="state bound">bound as 1-1</td></tr>',
      );
      expect(page).toContain("denied: the built-in rule: deny hubs");
      expect((await ctl(control, "unbind", "keyboard")).code).toBe(0);
      const metrics = await (await fetch(`${at}/metrics`)).text();
      expect(metrics).toContain('usbvirt_control_actions_total{action="bind"} 1\n');
      expect(metrics).toContain('usbvirt_control_actions_total{action="unbind"} 1\n');
      expect(metrics).toContain('usbvirt_control_actions_total{action="assign"} 0\n');
      expect(metrics).toContain("usbvirt_control_refusals_total 2\n");
    } finally {
      expect(await stop()).toBe(0);
    }
  });

  it("a host device another holder claimed (device-claim: another connection or process) is listed in use and refused, naming it", async () => {
    const before = process.env.USBVIRT_HOST_LOCK_DIR;
    process.env.USBVIRT_HOST_LOCK_DIR = join(dir, "locks");
    const claim = claimHostDevice({ busNumber: 1, deviceAddress: 3 }, "usbvirt redirect (pid 4242)");
    const { control, stop } = await serve([]);
    try {
      if (!claim.ok) throw new Error(`the test could not claim the device: ${JSON.stringify(claim)}`);
      expect((await ctl(control, "list")).out).toMatch(
        /host\s+1-3\s+0781:5567\s+in use: held by usbvirt redirect \(pid 4242\)/,
      );
      expect((await ctl(control, "bind", "0781:5567")).err).toBe(
        "usbvirt ctl: bind refused (in-use): 0781:5567 is in use by usbvirt redirect (pid 4242)\n",
      );
      expect((await ctl(control, "assign", "1-3", "--to", "qemu:127.0.0.1:9")).err).toBe(
        "usbvirt ctl: assign refused (in-use): 1-3 is in use by usbvirt redirect (pid 4242)\n",
      );
      claim.claim.release();
      expect((await ctl(control, "list")).out).toMatch(/host\s+1-3\s+0781:5567\s+available/);
    } finally {
      if (claim.ok) claim.claim.release();
      if (before === undefined) delete process.env.USBVIRT_HOST_LOCK_DIR;
      else process.env.USBVIRT_HOST_LOCK_DIR = before;
      expect(await stop()).toBe(0);
    }
  });

  it("redirect --control: list shows its device with its VM; assign and release work, bind does not apply", async () => {
    const control = join(dir, "redirect.sock");
    const r = redirectInProcess([
      "--device",
      "keyboard",
      "--listen",
      "127.0.0.1:0",
      "--control",
      control,
      "--state-dir",
      join(dir, "state"),
    ]);
    await r.ready;
    const vm = await fakeVm({ port: 0 });
    try {
      expect((await ctl(control, "list")).out).toMatch(
        /emulated\s+keyboard\s+emulated keyboard\s+assigned to this usbvirt redirect's VM/,
      );
      expect((await ctl(control, "bind", "loopback")).err).toBe(
        "usbvirt ctl: bind refused (not-supported): bind needs a USB/IP server (usbvirt serve); this daemon has none\n",
      );
      expect((await ctl(control, "assign", "keyboard", "--to", vm.to)).err).toBe(
        "usbvirt ctl: assign refused (in-use): keyboard is in use by this usbvirt redirect's VM\n",
      );
      expect((await ctl(control, "assign", "loopback", "--to", vm.to)).code).toBe(0);
      await eventually(() => vm.guests.length === 1, 10_000, "the VM got the device");
      expect(await echoes(vm.guests[0]!, [7])).toBe(true);
      expect((await ctl(control, "release", "loopback")).code).toBe(0);
      await vm.guests[0]!.closedPromise();
    } finally {
      expect(await r.stop()).toBe(0);
      await vm.close();
    }
  });

  it("a host device bound while not plugged in waits, is listed waiting, and still waits after a restart", async () => {
    const first = await serve([]);
    try {
      expect(await ctl(first.control, "bind", "1209:7301")).toEqual({
        code: 0,
        out: "1209:7301: bound as 1-1, waiting for it to be plugged in\n",
        err: "",
      });
      expect((await ctl(first.control, "list")).out).toMatch(
        /host\s+1209:7301\s+not plugged in\s+bound as 1-1, not plugged in/,
      );
      expect((await ctl(first.control, "bind", "1209:7301")).err).toBe(
        "usbvirt ctl: bind refused (in-use): 1209:7301 is in use by USB/IP bus id 1-1 (waiting for it)\n",
      );
    } finally {
      expect(await first.stop()).toBe(0);
    }
    const second = await serve([]);
    try {
      expect((await ctl(second.control, "list")).out).toMatch(
        /host\s+1209:7301\s+not plugged in\s+bound as 1-1, not plugged in/,
      );
      expect(await ctl(second.control, "unbind", "1209:7301")).toEqual({
        code: 0,
        out: "1-1: unbound\n",
        err: "",
      });
      expect((await ctl(second.control, "list")).out).not.toContain("1209:7301");
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });

  it("says why it cannot reach the daemon, and refuses a verb it does not know", async () => {
    const missing = await ctl(join(dir, "none.sock"), "list");
    expect(missing).toEqual({
      code: 1,
      out: "",
      err: `usbvirt ctl: cannot connect to ${join(dir, "none.sock")}: no such socket (is usbvirt serve running with --control?)\n`,
    });
    const bad = await ctl(join(dir, "none.sock"), "format");
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/unknown verb 'format'/);
  });
});
