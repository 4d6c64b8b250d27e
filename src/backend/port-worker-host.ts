/**
 * The port worker's side of one port: one per attached device placed on a
 * worker (its entry, src/workers/port-worker.ts, only calls
 * startPortWorkerHost; the backend's side is worker-port.ts). Opens the
 * device, says READY (or why not) to the backend that spawned it, then
 * serves the port ring. Its event loop must stay free (device completions
 * arrive through it), so it never blocks: the ring is waited on with
 * Atomics.waitAsync and a heartbeat word proves to the backend that the loop
 * still turns.
 */
import { type MessagePort, parentPort } from "node:worker_threads";
import type { UsbDevice } from "../devices/device.js";
import type { DeviceSpec } from "../devices/spec.js";
import { createDevice } from "../port/create-device.js";
import { runDeviceCommand } from "../port/device-commands.js";
import { PortService, type PortStats } from "../port/port-service.js";
import { SpinLimiter } from "../rings/spin.js";
import { type SerializedValue, serializeError } from "../util/error-wire.js";
import { serve } from "../util/rpc.js";
import type { DeviceSummary, PortCrash } from "./port-link.js";

export interface PortWorkerData {
  readonly port: number;
  readonly spec: DeviceSpec;
  readonly portRing: SharedArrayBuffer;
  /** The port's iso table (src/port/port-wire.ts), beside the ring. */
  readonly isoTable: SharedArrayBuffer;
  readonly portBell: SharedArrayBuffer;
  readonly backendBell: SharedArrayBuffer;
  readonly memory: readonly SharedArrayBuffer[];
  /** Word 0: bumped by this worker's event loop every `heartbeatMs`. */
  readonly heartbeat: SharedArrayBuffer;
  /** How often the heartbeat word is bumped (default HEARTBEAT_MS). */
  readonly heartbeatMs?: number;
  /** What the device holds outside this thread (src/devices/host/held-record.ts), for the backend. */
  readonly held: SharedArrayBuffer;
  /** comlink control channel (device commands, stats, close). */
  readonly control: MessagePort;
  /** The connection's spinner cap, shared with the frontend and the backend. */
  readonly spinLimiter?: SharedArrayBuffer;
  readonly maxSpinners?: number;
  /** Longest spin while the host is contended (ControllerHandles.contendedSpinMicros). */
  readonly contendedSpinMicros?: number;
}

export type PortWorkerHello =
  | { readonly type: "ready"; readonly summary: Omit<DeviceSummary, "placement"> }
  /** The device did not open: its error (class, code, cause) in src/util/error-wire.ts's form. */
  | { readonly type: "error"; readonly error: SerializedValue };

/** After READY: the device disappeared; every completion it produced is already on the port ring. */
/** After READY: a line the device logged for the operator (UsbDevice.onLog). */
export interface PortWorkerLog {
  readonly type: "log";
  readonly line: string;
}

export interface PortWorkerGone {
  readonly type: "gone";
  readonly reason: string;
}

export interface PortWorkerApi {
  stats(): PortStats & { inFlight: number };
  /** Call a device-specific method (e.g. the keyboard's pressKeys) by name, from an allowlist. */
  command(method: string, args: unknown[]): Promise<unknown>;
  /** Close the device: its in-flight transfers complete with -ESHUTDOWN first. */
  close(): Promise<void>;
  /** Fault injection: block this worker's event loop for `ms` (a device driver stuck in a syscall). */
  freeze(ms: number): void;
  /** Fault injection: end this worker as a bug would (PortCrash): an uncaught throw, or process.exit. */
  crash(how: PortCrash): void;
}

export const HEARTBEAT_MS = 100;

/** Run one port on this thread (a port worker): from opening the device until the backend closes it. */
export async function startPortWorkerHost(data: PortWorkerData): Promise<void> {
  let device: UsbDevice;
  try {
    device = createDevice(data.spec);
    device.trackHoldings?.(data.held);
    await device.open();
  } catch (err) {
    const hello: PortWorkerHello = { type: "error", error: serializeError(err) };
    parentPort!.postMessage(hello);
    data.control.close();
    return;
  }
  // A worker that ends without close() (an uncaught exception, process.exit) still gives back what its
  // device holds outside this thread: fds and interface claims are the process's, not the thread's.
  process.on("exit", () => device.abandon?.());
  const heartbeat = new Int32Array(data.heartbeat);
  // An idle port costs one timer wake-up per beat: beat as rarely as the watchdog allows.
  const beat = setInterval(() => Atomics.add(heartbeat, 0, 1), data.heartbeatMs ?? HEARTBEAT_MS);
  const service = new PortService({
    device,
    portRing: data.portRing,
    isoTable: data.isoTable,
    portBell: data.portBell,
    backendBell: data.backendBell,
    memory: data.memory,
    ...(data.spinLimiter === undefined
      ? {}
      : { spinLimiter: new SpinLimiter(data.spinLimiter, data.maxSpinners ?? 1) }),
    ...(data.contendedSpinMicros === undefined ? {} : { contendedSpinMicros: data.contendedSpinMicros }),
  });
  const api: PortWorkerApi = {
    stats: () => ({ ...service.stats, inFlight: service.inFlight }),
    command: (method, args) => runDeviceCommand(device, method, args),
    freeze(ms) {
      // Answer first, then stall: the caller should not hang on its own fault injection.
      setImmediate(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms));
    },
    crash(how) {
      // Answer first, then crash from the event loop, where nothing of ours catches it.
      setImmediate(() => {
        if (how === "exit") process.exit(70);
        throw new Error("port worker crashed (fault injection)");
      });
    },
    async close() {
      await device.close();
      // Let the completions the close produced reach the ring before stopping.
      service.drain();
      await service.stop();
      clearInterval(beat);
    },
  };
  serve(api, data.control);
  const postLog = (line: string): void => {
    const log: PortWorkerLog = { type: "log", line };
    parentPort!.postMessage(log);
  };
  device.onLog?.(postLog);
  service.onLog(postLog);
  device.onGone?.((reason) => {
    service.drain(); // publish whatever is still queued before the backend looks
    const gone: PortWorkerGone = { type: "gone", reason };
    parentPort!.postMessage(gone);
  });
  service.start();
  const hello: PortWorkerHello = {
    type: "ready",
    summary: {
      name: device.info.name,
      speed: device.info.speed,
      deviceDescriptor: device.info.deviceDescriptor,
    },
  };
  parentPort!.postMessage(hello);
}
