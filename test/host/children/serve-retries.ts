/**
 * Child process under test/host/children/testbed.py (interactive umockdev, the device plugged in, the
 * ioctl log in USBVIRT_TESTBED_LOG): the real `usbvirt serve --device 1209:7301` (run() in-process, real
 * libusb) and a device whose port worker dies for real (Connection.crashPort) while it stays plugged in.
 *   1. claims refused (the testbed answers EBUSY), crash: tries 1 and 2 fail; claims accepted again: try 3
 *      exports it as 1-1, and an importer moves bulk data through it.
 *   2. crash again at once: serve gives up (a device that keeps failing is not re-exported forever).
 *   3. unplug and plug: exported again. Claims refused, crash, unplug during the backoff: the retries end.
 *      Plugged in again (claims accepted), it is exported as any plugged-in device.
 * Prints `VERDICT <json>` with serve's log.
 */
import { readFileSync } from "node:fs";
import { type CliIo, run } from "../../../src/cli/run.js";
import { HostHotplugWatcher } from "../../../src/devices/host/hotplug.js";
import { CollectingLogger } from "../../../src/network-face/log.js";
import { listRemote } from "../../../src/usbip/client.js";
import { attachRemote } from "../../../src/usbip-attach/attach.js";
import type { UsbipServer } from "../../../src/usbip-server/server.js";
import { eventually } from "../../support/eventually.js";
import { exitWithVerdict } from "../../support/verdict.js";
import { PID, VID } from "../fixture.js";

const log = new CollectingLogger();
const events: string[] = [];
const until = (what: string, check: () => boolean | Promise<boolean>, ms = 20_000) =>
  eventually(check, ms, what);
const logged = (pattern: RegExp, count = 1) => log.lines.filter((l) => pattern.test(l)).length >= count;
const ioctls = () => readFileSync(process.env.USBVIRT_TESTBED_LOG!, "utf8").split("\n").filter(Boolean);

/** Send a STAGE to the testbed and wait until it says it applied it. */
async function claims(what: "refuse" | "accept"): Promise<void> {
  const before = ioctls().filter((l) => l === `${what} claims`).length;
  process.stdout.write(`STAGE ${what} claims\n`);
  await until(
    `testbed: ${what} claims`,
    () => ioctls().filter((l) => l === `${what} claims`).length > before,
  );
}

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

async function main(): Promise<Record<string, unknown>> {
  const hex4 = (n: number) => n.toString(16).padStart(4, "0");
  const { server, stop } = await serve(["--device", `${hex4(VID)}:${hex4(PID)}`]);
  const port = server.address.port;
  const busids = async () => (await listRemote({ host: "127.0.0.1", port })).map((d) => d.busid);
  let detaches = 0;
  const watcher = new HostHotplugWatcher((e) => {
    if (e.type === "detach") detaches++;
  });
  watcher.start();
  try {
    const atStart = await busids();

    // 1. Refused, refused, then back on the third try.
    await claims("refuse");
    const crashed = Date.now();
    await server.connection.crashPort(1, "throw");
    await until("1-1 withdrawn", async () => (await busids()).length === 0);
    await until("two tries failed", () => logged(/retry 2 of 3 after a failure: could not export/));
    await claims("accept");
    await until("try 3 exported it", () => logged(/retry 3 of 3 after a failure: exported as 1-1/));
    const recoveredMs = Date.now() - crashed;
    const recovered = await busids();
    const att = await attachRemote({
      host: "127.0.0.1",
      port,
      busid: "1-1",
      timeoutMs: 3000,
      reconnect: false,
    });
    let echoed = false;
    try {
      const payload = Uint8Array.from({ length: 64 }, (_, i) => (i * 5 + 3) & 0xff);
      await att.guest.transferOut(att.port, att.address, 2, payload);
      echoed = Buffer.compare(await att.guest.transferIn(att.port, att.address, 1, 64), payload) === 0;
    } finally {
      await att.close();
    }

    // 2. It fails again at once: no fourth try.
    await server.connection.crashPort(1, "throw");
    await until("serve gave up", () => logged(/failed again within 60 s of retry 3 bringing it back/));
    const gaveUp = await busids();

    // 3. Plugged in anew it is exported; an unplug during the backoff of its next failure ends the retries.
    process.stdout.write("STAGE unplug\n");
    await until("libusb saw the unplug", () => detaches === 1);
    process.stdout.write("STAGE plug\n");
    await until("exported on plug-in", () => logged(/plugged in: exported as 1-1/));
    await claims("refuse");
    await server.connection.crashPort(1, "throw");
    await until("withdrawn again", () => logged(/withdrew 1-1/, 3));
    process.stdout.write("STAGE unplug\n");
    await until("retries ended by the unplug", () =>
      logged(/unplugged: retry \d of 3 after a failure cancelled|not plugged in any more; no more tries/),
    );
    await claims("accept");
    process.stdout.write("STAGE plug\n");
    await until("exported on plug-in again", () => logged(/plugged in: exported as 1-1/, 2));
    return { atStart, recoveredMs, recovered, echoed, gaveUp, after: await busids(), log: log.lines };
  } finally {
    watcher.stop();
    await stop();
  }
}

const watchdog = setTimeout(() => {
  exitWithVerdict({ ok: false, error: "timed out in the child", events, log: log.lines }, 2);
}, 40_000);
main().then(
  (v) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: true, ...v, events }, 0);
  },
  (err: unknown) => {
    clearTimeout(watchdog);
    exitWithVerdict({ ok: false, error: String(err), events, log: log.lines }, 1);
  },
);
