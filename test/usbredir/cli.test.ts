/**
 * `usbvirt redirect`: usage errors, listen mode in-process (a usb-guest moves data, the next connection
 * gets the device after the first leaves), connect mode (usbvirt dials a listening "QEMU", and dials
 * again with backoff after the link drops), and the real process answering SIGINT with exit 0.
 */
import { createServer, type Server, type Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { usbipSpecFromUrl } from "../../src/cli/redirect.js";
import { run } from "../../src/cli/run.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { RedirStatus } from "../../src/usbredir/protocol.js";
import { capture, redirectInProcess, spawnChild } from "../cli/helpers.js";
import { eventually } from "../support/eventually.js";

describe("usbvirt redirect: usage", () => {
  it("refuses a missing device, a missing or doubled mode, and a malformed usbip URL, with exit 2", async () => {
    for (const [args, message] of [
      [["--listen", "0"], /--device SPEC is required/],
      [["--device", "keyboard"], /give one of --listen/],
      [["--device", "keyboard", "--listen", "0", "--connect", "127.0.0.1:1"], /exclude each other/],
      [["--device", "usbip://host/notabusid", "--listen", "0"], /is not usbip:\/\/HOST/],
      [["--device", "mouse", "--listen", "0"], /cannot read device "mouse"/],
      [["--device", "keyboard", "--connect", "127.0.0.1"], /--connect/],
    ] as const) {
      const c = capture();
      expect(await run(["redirect", ...args], c.io)).toBe(2);
      expect(c.err).toMatch(message);
      expect(c.err).toContain("usbvirt redirect:");
    }
  });

  it("reads usbip://HOST[:PORT]/BUSID as a device imported over USB/IP", () => {
    expect(usbipSpecFromUrl("usbip://10.0.0.2/1-1")).toEqual({
      kind: "usbip",
      host: "10.0.0.2",
      port: 3240,
      busid: "1-1",
    });
    expect(usbipSpecFromUrl("usbip://[::1]:3241/2-1.4")).toEqual({
      kind: "usbip",
      host: "::1",
      port: 3241,
      busid: "2-1.4",
    });
    expect(usbipSpecFromUrl("loopback")).toBeNull();
  });
});

describe("usbvirt redirect: listen and connect", () => {
  it("listens, serves a guest, prints the QEMU command line, and exits 0 on SIGINT", async () => {
    const r = redirectInProcess(["--device", "loopback", "--listen", "127.0.0.1:0"]);
    const server = await r.ready;
    const port = server.address!.port;
    expect(r.c.out).toContain(`-chardev socket,id=usbredir0,host=127.0.0.1,port=${port}`);
    expect(r.c.out).toContain("-device usb-redir,chardev=usbredir0");
    const g = await UsbredirClient.connect(port);
    expect((await g.bulk(0x01, new Uint8Array([5, 6])).reply).status).toBe(RedirStatus.SUCCESS);
    expect([...(await g.bulk(0x81, 512).reply).data]).toEqual([5, 6]);
    expect(r.c.logger.lines.some((l) => /usbredir peer "usbvirt test guest"/.test(l))).toBe(true);
    g.close();
    expect(await r.stop()).toBe(0);
  });

  it("connect mode: dials the VMM, and dials again with backoff when the link drops", async () => {
    const accepted: Socket[] = [];
    let onAccept: (() => void) | null = null;
    const vmm: Server = createServer((s) => {
      accepted.push(s);
      onAccept?.();
    });
    await new Promise<void>((r) => vmm.listen(0, "127.0.0.1", r));
    const port = (vmm.address() as { port: number }).port;
    const nextAccept = () => new Promise<void>((r) => (onAccept = r));
    const first = nextAccept();
    const r = redirectInProcess(["--device", "keyboard", "--connect", `127.0.0.1:${port}`]);
    await r.ready;
    await first;
    const g1 = await UsbredirClient.over(accepted[0]!);
    expect(g1.device?.productId).toBe(2);
    const second = nextAccept();
    g1.close();
    await second;
    const g2 = await UsbredirClient.over(accepted[1]!);
    expect(g2.device?.productId).toBe(2);
    expect(r.c.logger.lines.filter((l) => /connected to 127\.0\.0\.1/.test(l)).length).toBe(2);
    g2.close();
    expect(await r.stop()).toBe(0);
    vmm.close();
  });

  it("connect mode keeps trying while nothing listens, logging each failure", async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const r = redirectInProcess(["--device", "keyboard", "--connect", `127.0.0.1:${port}`]);
    await r.ready;
    await eventually(
      () => r.c.logger.lines.filter((l) => /cannot connect to/.test(l)).length >= 2,
      10_000,
      "two failed connection attempts",
    );
    const vmm = createServer();
    const accepted = new Promise<Socket>((res) => vmm.once("connection", res));
    await new Promise<void>((res) => vmm.listen(port, "127.0.0.1", res));
    const g = await UsbredirClient.over(await accepted);
    expect(g.device?.productId).toBe(2);
    g.close();
    expect(await r.stop()).toBe(0);
    vmm.close();
  });

  it("the real process exits 0 on SIGINT after releasing the device", async () => {
    const child = spawnChild(["redirect", "--device", "keyboard", "--listen", "0"]);
    const m = await child.waitFor(/listening on 127\.0\.0\.1:(\d+)/, "out");
    const g = await UsbredirClient.connect(Number(m[1]));
    expect(g.device?.productId).toBe(2);
    child.child.kill("SIGINT");
    expect(await child.exited).toBe(0);
    expect(child.err()).toMatch(/SIGINT: shutting down/);
    expect(child.err()).toMatch(/released/);
  });
});

describe("usbvirt redirect --metrics", () => {
  it("serves the metrics and the status page of its one device: who holds it, and its counters", async () => {
    const r = redirectInProcess(["--device", "loopback", "--listen", "0", "--metrics", "0"]);
    const server = await r.ready;
    const at = /status page: (http:\/\/[^\s]+)\//.exec(r.c.out)![1]!;
    const before = (await (await fetch(`${at}/status.json`)).json()) as {
      devices: { busid: string; state: string; holder: string | null; identity: string }[];
    };
    expect(before.devices).toMatchObject([
      { busid: "1-1", state: "free", holder: null, identity: "1209:0001" },
    ]);
    const g = await UsbredirClient.connect(server.address!.port);
    expect((await g.bulk(0x01, new Uint8Array(100)).reply).status).toBe(RedirStatus.SUCCESS);
    const after = (await (await fetch(`${at}/status.json`)).json()) as typeof before & {
      devices: { urbs: number | null; log: { message: string }[] }[];
    };
    expect(after.devices[0]).toMatchObject({
      state: "imported",
      holder: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
    });
    expect(after.devices[0]!.urbs).toBeGreaterThan(0);
    expect(after.devices[0]!.log.some((l) => /redirected usbvirt loopback/.test(l.message))).toBe(true);
    const metrics = await (await fetch(`${at}/metrics`)).text();
    expect(metrics).toMatch(/usbvirt_device_clients\{busid="1-1",device="usbvirt loopback 1209:0001"\} 1/);
    const page = await (await fetch(`${at}/`)).text();
    expect(page).toContain("usbvirt loopback 1209:0001");
    g.close();
    expect(await r.stop()).toBe(0);
  });
});
