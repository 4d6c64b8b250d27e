/**
 * Child process under test/host/children/testbed.py (interactive umockdev, the device plugged in): the
 * real `usbvirt serve --control` (run() in-process, real libusb) steered by `usbvirt ctl`:
 *   1. list: the host device is available; serve exports nothing.
 *   2. bind 1209:7301: Linux's `usbip list -r` sees it; a client imports it and moves bulk data; list says
 *      it is imported, by whom.
 *   3. unbind: the importer sees the connection close; `usbip list -r` sees nothing.
 *   4. bind 1-1 (by port path), serve stopped and started again on the same --state-dir: the binding is
 *      restored, `usbip list -r` sees it, a client imports it and moves data again.
 * Prints `VERDICT <json>`.
 */
import { execFile } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CliIo, run } from "../../../src/cli/run.js";
import { CollectingLogger } from "../../../src/network-face/log.js";
import type { ListResult } from "../../../src/toolstack/protocol.js";
import { type AttachedDevice, attachRemote } from "../../../src/usbip-attach/attach.js";
import type { UsbipServer } from "../../../src/usbip-server/server.js";
import { exitWithVerdict } from "../../support/verdict.js";

const events: string[] = [];
const log = new CollectingLogger();
const dir = mkdtempSync(join(tmpdir(), "usbvirt-ctl-host-"));
const control = join(dir, "control.sock");

async function serve() {
  let stop!: (s: string) => void;
  const stopped = new Promise<string>((r) => {
    stop = r;
  });
  let up!: (s: UsbipServer) => void;
  const listening = new Promise<UsbipServer>((r) => {
    up = r;
  });
  const io: CliIo = {
    out: () => undefined,
    err: (t) => events.push(`serve stderr: ${t.trim()}`),
    logger: log,
    stopSignal: () => stopped,
    onListening: (s) => up(s),
  };
  const exit = run(["serve", "--port", "0", "--control", control, "--state-dir", join(dir, "state")], io);
  const server = await Promise.race([
    listening,
    exit.then((code) => {
      throw new Error(`serve exited ${code}`);
    }),
  ]);
  return {
    server,
    stop: async () => {
      stop("SIGINT");
      return await exit;
    },
  };
}

async function ctl(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await run(["ctl", "--control", control, ...args], {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
  });
  return { code, out, err };
}

/** Linux's own usbip tool: `usbip --tcp-port PORT list -r 127.0.0.1`. */
function usbipList(port: number): Promise<string> {
  return new Promise((resolve) => {
    execFile(
      "usbip",
      ["--tcp-port", String(port), "list", "-r", "127.0.0.1"],
      { timeout: 10_000 },
      (err, out, errOut) =>
        resolve(`${out}${errOut}${err !== null && err.code !== 1 ? `(${err.message})` : ""}`),
    );
  });
}

async function echo(att: AttachedDevice, seed: number): Promise<boolean> {
  const payload = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + seed) & 0xff);
  await att.guest.transferOut(att.port, att.address, 2, payload);
  const back = await att.guest.transferIn(att.port, att.address, 1, 64);
  return Buffer.compare(back, payload) === 0;
}

const attach = (port: number) =>
  attachRemote({ host: "127.0.0.1", port, busid: "1-1", timeoutMs: 3000, reconnect: false });

async function steer(): Promise<Record<string, unknown>> {
  const first = await serve();
  let att: AttachedDevice | null = null;
  const out: Record<string, unknown> = {};
  try {
    const port = first.server.address.port;
    out.listBefore = (await ctl("list")).out;
    out.usbipBefore = await usbipList(port);
    out.bind = await ctl("bind", "1209:7301");
    out.usbipBound = await usbipList(port);
    att = await attach(port);
    out.echoed = await echo(att, 1);
    const list = JSON.parse((await ctl("list", "--json")).out) as ListResult;
    out.listImported = list.devices.find((d) => d.kind === "host");
    out.listTable = (await ctl("list")).out;
    const gone = new Promise<string>((r) => att!.events.once("disconnected", (why: string) => r(why)));
    out.unbind = await ctl("unbind", "1209:7301");
    out.gone = await gone;
    await att.close();
    att = null;
    out.usbipUnbound = await usbipList(port);
    out.bindAgain = await ctl("bind", "1-1");
  } finally {
    await att?.close();
    out.firstExit = await first.stop();
  }
  const second = await serve();
  try {
    const port = second.server.address.port;
    out.usbipRestored = await usbipList(port);
    att = await attach(port);
    out.echoedRestored = await echo(att, 2);
    out.listRestored = (await ctl("list")).out;
  } finally {
    await att?.close();
    out.secondExit = await second.stop();
  }
  return out;
}

const watchdog = setTimeout(() => {
  exitWithVerdict({ ok: false, error: "timed out in the child", events, log: log.lines }, 2);
}, 100_000);
steer().then(
  (v) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: true, ...v, events, log: log.lines }, 0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: false, error: String(err), events, log: log.lines }, 1);
  },
);
