/**
 * Child process under test/host/children/testbed.py (interactive umockdev, a kernel driver bound): what a
 * HostUsbDevice's held record (src/devices/host/held-record.ts) says while the device gives things back.
 *   close        test/host/states-fixture.ts's device, opened on a worker of this process with the record
 *                this thread holds (as a port worker and its control plane), moved to configuration 2
 *                (both interfaces' drivers detached), then closed while the testbed holds interface 1's
 *                CONNECT: the record is read then, with the worker stopped inside close(), as the control
 *                plane would find it had the worker been killed there; then once close() returned.
 *   failed-open  the same device opened while the testbed refuses claims: the open fails after the driver
 *                of interface 0 was detached.
 * Prints `VERDICT <json>`.
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { isMainThread, parentPort, type Worker, workerData } from "node:worker_threads";
import { createHeldRecord, readHeld } from "../../../src/devices/host/held-record.js";
import { HostUsbDevice } from "../../../src/devices/host/host-device.js";
import { startWorker } from "../../../src/util/start-worker.js";
import { eventually } from "../../support/eventually.js";
import { exitWithVerdictOf } from "../../support/verdict.js";
import { VID } from "../fixture.js";
import { STATES_PID } from "../states-fixture.js";

const logFile = process.env.USBVIRT_TESTBED_LOG ?? "";
const ioctls = (): string[] => readFileSync(logFile, "utf8").split("\n").filter(Boolean);

/** The testbed applied a STAGE line once it logged it. */
async function stage(line: string): Promise<void> {
  process.stdout.write(`STAGE ${line}\n`);
  await eventually(() => ioctls().includes(line), 10_000, `the testbed to log '${line}'`);
}

/** On the worker: open, SET_CONFIGURATION(2), then close when asked. */
async function deviceWorker(): Promise<void> {
  const device = new HostUsbDevice({ vendorId: VID, productId: STATES_PID }, { log: () => undefined });
  device.trackHoldings((workerData as { record: SharedArrayBuffer }).record);
  await device.open();
  await device.setConfiguration(2);
  parentPort!.postMessage("open");
  await once(parentPort!, "message");
  await device.close();
  parentPort!.postMessage("closed");
}

async function whileClosing(): Promise<Record<string, unknown>> {
  const record = createHeldRecord();
  const worker: Worker = startWorker(new URL(import.meta.url), { workerData: { record } });
  try {
    await once(worker, "message");
    const open = readHeld(record);
    await stage("hold connect 1");
    worker.postMessage("close");
    await eventually(() => ioctls().includes("connect 1"), 10_000, "close() to ask for interface 1's driver");
    const closing = readHeld(record);
    const closed = once(worker, "message");
    await stage("answer connect");
    await closed;
    return { open, closing, closed: readHeld(record), ioctls: ioctls() };
  } finally {
    await worker.terminate();
  }
}

async function failedOpen(): Promise<Record<string, unknown>> {
  await stage("refuse claims");
  const device = new HostUsbDevice({ vendorId: VID, productId: STATES_PID }, { log: () => undefined });
  const refused = await device.open().then(
    () => null,
    (err: unknown) => ({ code: (err as { code?: unknown }).code, message: String((err as Error).message) }),
  );
  return { refused, ioctls: ioctls() };
}

async function run(mode: string | undefined): Promise<Record<string, unknown>> {
  if (logFile === "") throw new Error("USBVIRT_TESTBED_LOG is not set");
  if (mode === "close") return await whileClosing();
  if (mode === "failed-open") return await failedOpen();
  throw new Error(`unknown mode ${String(mode)}`);
}

if (isMainThread) exitWithVerdictOf(run(process.argv[2]), 25_000);
else void deviceWorker();
