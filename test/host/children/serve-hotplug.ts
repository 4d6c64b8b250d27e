/**
 * Child process under test/host/children/testbed.py --start-unplugged (interactive umockdev): the real
 * `usbvirt serve --device 1209:7301` (run() in-process, real libusb) while the device is not plugged in,
 * and a `usbvirt attach` client (attachRemote, reconnecting) in the same process.
 *   1. serve starts anyway; the device list is empty.          STAGE plug
 *   2. the device is exported as 1-1; attach imports it and moves bulk data through the testbed's echo.
 *                                                                STAGE unplug
 *   3. the device list is empty again; the importer saw the device go.
 *                                                                STAGE plug
 *   4. 1-1 is back; attach reconnected on its own and moves data again.
 * With `reenumerate SELECTOR` it follows (or not) a device that re-enumerates with another id at the same
 * path (see reenumerate()).
 * With `storm N` as argument it instead runs serve --match-new, plugs and unplugs the device N times
 * without waiting for serve (only for libusb to see each uevent), plugs it once more, and checks that
 * exactly one export is left and nothing leaked.
 * Prints `VERDICT <json>`.
 */
import { once } from "node:events";
import { type CliIo, run } from "../../../src/cli/run.js";
import { HostHotplugWatcher } from "../../../src/devices/host/hotplug.js";
import { CollectingLogger } from "../../../src/network-face/log.js";
import { listRemote } from "../../../src/usbip/client.js";
import { type AttachedDevice, attachRemote } from "../../../src/usbip-attach/attach.js";
import type { UsbipServer } from "../../../src/usbip-server/server.js";
import { eventually } from "../../support/eventually.js";
import { exitWithVerdict } from "../../support/verdict.js";
import { PID, VID } from "../fixture.js";

const events: string[] = [];
const log = new CollectingLogger();

/** until(what, check): eventually with the child's 20 s default and the name first. */
const until = (what: string, check: () => boolean | Promise<boolean>, ms = 20_000) =>
  eventually(check, ms, what);

async function serve(args: readonly string[]) {
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
  const exit = run(["serve", "--port", "0", ...args], io);
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

const busids = async (port: number) => (await listRemote({ host: "127.0.0.1", port })).map((d) => d.busid);

async function echo(att: AttachedDevice, seed: number): Promise<boolean> {
  const payload = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + seed) & 0xff);
  await att.guest.transferOut(att.port, att.address, 2, payload);
  const back = await att.guest.transferIn(att.port, att.address, 1, 64);
  return Buffer.compare(back, payload) === 0;
}

async function lifecycle(): Promise<Record<string, unknown>> {
  const { server, stop } = await serve(["--device", `${VID.toString(16)}:${PID.toString(16)}`]);
  const port = server.address.port;
  let att: AttachedDevice | null = null;
  try {
    const before = await busids(port);
    process.stdout.write("STAGE plug\n");
    await until("1-1 listed", async () => (await busids(port)).includes("1-1"));
    att = await attachRemote({
      host: "127.0.0.1",
      port,
      busid: "1-1",
      timeoutMs: 3000,
      keepaliveMs: 2000,
      retryMinMs: 50,
      retryMaxMs: 400,
      log: (l) => events.push(`attach: ${l}`),
    });
    const first = [att.device.vendorId, att.device.productId];
    const echoed = await echo(att, 1);
    const disconnected = once(att.events, "disconnected");
    process.stdout.write("STAGE unplug\n");
    const [gone] = (await disconnected) as [string];
    await until("1-1 withdrawn", async () => (await busids(port)).length === 0);
    const reconnected = once(att.events, "reconnected");
    process.stdout.write("STAGE plug\n");
    await reconnected;
    const after = await busids(port);
    const echoedAgain = await echo(att, 2);
    return {
      before,
      first,
      echoed,
      gone,
      after,
      again: [att.device.vendorId, att.device.productId],
      echoedAgain,
      log: log.lines,
    };
  } finally {
    await att?.close();
    await stop();
  }
}

async function storm(n: number): Promise<Record<string, unknown>> {
  const { server, stop } = await serve(["--match-new"]);
  const port = server.address.port;
  try {
    const grants = server.connection.frontend!.grants;
    const grantsFreeBefore = grants.freeCount;
    const workersBefore = (await server.connection.stats()).liveWorkers;
    // Each uevent is sent once libusb has taken the one before (umockdev's uevent socket holds only a few),
    // not once serve has acted on it: serve's exports lag behind a stream of plugs and unplugs.
    let attaches = 0;
    let detaches = 0;
    const watcher = new HostHotplugWatcher((e) => {
      if (e.type === "attach") attaches++;
      else detaches++;
    });
    watcher.start();
    try {
      for (let i = 0; i < n; i++) {
        process.stdout.write("STAGE plug\n");
        await until(`libusb saw plug ${i + 1}`, () => attaches === i + 1);
        process.stdout.write("STAGE unplug\n");
        await until(`libusb saw unplug ${i + 1}`, () => detaches === i + 1);
      }
    } finally {
      watcher.stop();
    }
    process.stdout.write("STAGE plug\n");
    // Settled: exactly one export, and it stays one (every event of the storm was applied in order).
    await until("one export after the storm", async () => (await busids(port)).length === 1, 150_000);
    // The port workers of the withdrawn exports exit asynchronously: wait until only the live one is left.
    await until(
      "one port worker left",
      async () => (await server.connection.stats()).liveWorkers === 1,
      20_000,
    );
    return {
      listed: await busids(port),
      exported: server.devices.map((d) => d.busid),
      workersBefore,
      workersAfter: (await server.connection.stats()).liveWorkers,
      grantsLeaked: grantsFreeBefore - grants.freeCount,
      withdrawn: log.matching("withdrew ").length,
      exports: log.matching("exported as").length,
      coalesced: log.matching("plugged in and out again before it could be exported").length,
      failedExports: log.matching("could not export it").length,
      matchNewWarnings: log.matching("--match-new with no allow rule").length,
      warnings: log.lines.filter(
        (l) =>
          l.startsWith("warn") &&
          !l.includes("could not export it") &&
          !l.includes("--match-new with no allow rule"),
      ),
    };
  } finally {
    await stop();
  }
}

/** The device list as "busid vid:pid". */
async function listing(port: number): Promise<string[]> {
  const hex4 = (n: number) => n.toString(16).padStart(4, "0");
  return (await listRemote({ host: "127.0.0.1", port })).map(
    (d) => `${d.busid} ${hex4(d.idVendor)}:${hex4(d.idProduct)}`,
  );
}

/**
 * A device that re-enumerates with another id at the same port path (the testbed's `--alt`, a DFU mode):
 * serve --device SELECTOR; plug the device, unplug it, plug the other one at the same path (`STAGE plug
 * alt`), unplug it, plug the first one again. The device list is read at each step; with a path selector
 * the re-enumerated device is also imported and moves data.
 */
async function reenumerate(selector: string): Promise<Record<string, unknown>> {
  const { server, stop } = await serve(["--device", selector]);
  const port = server.address.port;
  let attaches = 0;
  let detaches = 0;
  const watcher = new HostHotplugWatcher((e) => {
    if (e.type === "attach") attaches++;
    else detaches++;
  });
  watcher.start();
  try {
    const before = await listing(port);
    process.stdout.write("STAGE plug\n");
    await until("1-1 listed", async () => (await listing(port)).length === 1);
    const first = await listing(port);
    process.stdout.write("STAGE unplug\n");
    await until("1-1 withdrawn", async () => (await listing(port)).length === 0);
    process.stdout.write("STAGE plug alt\n");
    let dfuImported: number | null = null;
    let dfuEchoed = false;
    if (selector.includes(":")) {
      // serve applies hotplug events in order and says why it leaves this one alone: wait for that line.
      await until("libusb saw the re-enumerated device", () => attaches === 2);
      await until("serve judged it", () => log.matching("not exported").length === 1);
    } else {
      await until("the re-enumerated device listed", async () => (await listing(port)).length === 1);
      const att = await attachRemote({
        host: "127.0.0.1",
        port,
        busid: "1-1",
        timeoutMs: 3000,
        reconnect: false,
      });
      try {
        dfuImported = att.device.productId;
        dfuEchoed = await echo(att, 3);
      } finally {
        await att.close();
      }
    }
    const dfu = await listing(port);
    process.stdout.write("STAGE unplug\n");
    await until("libusb saw it go", () => detaches === 2);
    await until("nothing listed", async () => (await listing(port)).length === 0);
    process.stdout.write("STAGE plug\n");
    await until("1-1 listed again", async () => (await listing(port)).length === 1);
    return { before, first, dfu, dfuImported, dfuEchoed, back: await listing(port), log: log.lines };
  } finally {
    watcher.stop();
    await stop();
  }
}

const args = process.argv.slice(2);
const stormCount = args[0] === "storm" ? Number(args[1]) : 0;
const watchdog = setTimeout(
  () => {
    exitWithVerdict({ ok: false, error: "timed out in the child", events }, 2);
  },
  stormCount > 0 ? 170_000 : 40_000,
);
(stormCount > 0 ? storm(stormCount) : args[0] === "reenumerate" ? reenumerate(args[1]!) : lifecycle()).then(
  (v) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: true, ...v, events }, 0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: false, error: String(err), events, log: log.lines }, 1);
  },
);
