/**
 * A port whose device runs on a port worker of its own: the backend rings
 * the worker's doorbell, the worker beats a heartbeat word the watchdog
 * reads, and the control calls go over comlink. Spawning waits for the
 * worker's typed READY message (with a timeout) before the port is usable.
 */
import { once } from "node:events";
import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import { createHeldRecord, type HeldRelease, releaseHeld } from "../devices/host/held-record.js";
import type { DeviceSpec } from "../devices/spec.js";
import type { PortStats } from "../port/port-service.js";
import { createPortIsoTable, PORT_RING_GEOMETRY } from "../port/port-wire.js";
import { Doorbell } from "../rings/doorbell.js";
import { createRingBuffer } from "../rings/layout.js";
import { deserializeError } from "../util/error-wire.js";
import { connect, disconnect, isRpcClosed, type Remote } from "../util/rpc.js";
import { siblingModule, startWorker } from "../util/start-worker.js";
import { type PortCrash, type PortHost, type PortHostEvents, PortLink, PortStartError } from "./port-link.js";
import type {
  PortWorkerApi,
  PortWorkerData,
  PortWorkerGone,
  PortWorkerHello,
  PortWorkerLog,
} from "./port-worker-host.js";

export class WorkerPort implements PortHost {
  readonly placement = "worker";
  private readonly bell: Doorbell;
  private readonly heartbeat: Int32Array;
  private readonly api: Remote<PortWorkerApi>;
  private lastBeat = 0;
  private lastBeatAt = Date.now();
  /** The worker has been (or is being) terminated and its comlink proxy released. */
  private retired = false;

  constructor(
    readonly worker: Worker,
    bell: SharedArrayBuffer,
    heartbeat: SharedArrayBuffer,
    control: MessagePort,
    private readonly held: SharedArrayBuffer,
  ) {
    this.bell = new Doorbell(bell);
    this.heartbeat = new Int32Array(heartbeat);
    this.api = connect<PortWorkerApi>(control);
  }

  kick(notify: boolean): void {
    if (notify) this.bell.ring();
  }

  collect(): void {
    // The worker publishes its own answers.
  }

  watch(events: PortHostEvents): void {
    this.worker.on("error", (err) => events.failed(`port worker crashed: ${String(err)}`));
    this.worker.on("message", (m: PortWorkerGone | PortWorkerLog) => {
      if (m.type === "gone") events.gone(m.reason);
      else if (m.type === "log") events.log?.(m.line);
    });
    this.worker.on("exit", (code) => {
      // Killed (terminate(), OOM) or crashed: what its device still holds is given back from here.
      const given = releaseHeld(this.held);
      if (given !== null) events.log?.(describeRelease(given));
      events.failed(`port worker exited (code ${code})`);
    });
  }

  stats(): Promise<PortStats & { inFlight: number }> {
    return this.api.stats();
  }

  command(method: string, args: unknown[]): Promise<unknown> {
    return this.api.command(method, args);
  }

  close(): Promise<void> {
    return this.api.close();
  }

  isHung(now: number, hungMs: number): boolean {
    const beat = Atomics.load(this.heartbeat, 0);
    if (beat !== this.lastBeat) {
      this.lastBeat = beat;
      this.lastBeatAt = now;
      return false;
    }
    return now - this.lastBeatAt > hungMs;
  }

  async retire(): Promise<void> {
    if (this.retired) return;
    this.retired = true;
    disconnect(this.api);
    await this.worker.terminate();
  }

  async kill(): Promise<void> {
    await this.worker.terminate();
  }

  async freeze(ms: number): Promise<void> {
    await this.api.freeze(ms);
  }

  async crash(how: PortCrash): Promise<void> {
    // The worker answers before it crashes; its end may still come first and cut the answer off.
    await this.api.crash(how).catch((err: unknown) => {
      if (!isRpcClosed(err)) throw err;
    });
  }
}

/** One line saying what the backend gave back for a port worker that could not. */
function describeRelease(r: HeldRelease): string {
  const parts = [`usbfs fd ${r.usbfsFd}`, "device lock released"];
  if (r.reattached.length > 0)
    parts.push(`kernel driver(s) re-attached to interface(s) ${r.reattached.join(", ")}`);
  if (r.failed.length > 0) parts.push(`not re-attached: interface(s) ${r.failed.join(", ")}`);
  return `the port worker ended holding its host device; given back by the backend: ${parts.join("; ")}`;
}

export interface SpawnPortOptions {
  readonly port: number;
  readonly spec: DeviceSpec;
  readonly memory: readonly SharedArrayBuffer[];
  readonly backendBell: SharedArrayBuffer;
  /** The connection's spinner cap (ControllerHandles.spinLimiter) and its size. */
  readonly spinLimiter?: SharedArrayBuffer;
  readonly maxSpinners?: number;
  /** ControllerHandles.contendedSpinMicros. */
  readonly contendedSpinMicros?: number;
  readonly readyTimeoutMs?: number;
  /** The port worker's heartbeat period (a quarter of the hung-port limit is plenty). */
  readonly heartbeatMs?: number;
  /** Where the device publishes what it holds (src/devices/host/held-record.ts); a fresh one if absent. */
  readonly held?: SharedArrayBuffer;
}

/** Start a port worker for `spec` and wait for it to open its device. */
export async function spawnPortWorker(options: SpawnPortOptions): Promise<PortLink> {
  const ring = createRingBuffer(PORT_RING_GEOMETRY);
  const isoTable = createPortIsoTable();
  const bell = Doorbell.create();
  const heartbeat = new SharedArrayBuffer(8);
  const held = options.held ?? createHeldRecord();
  const { port1, port2 } = new MessageChannel();
  const data: PortWorkerData = {
    port: options.port,
    spec: options.spec,
    portRing: ring,
    isoTable,
    portBell: bell,
    backendBell: options.backendBell,
    memory: options.memory,
    heartbeat,
    held,
    control: port2,
    ...(options.heartbeatMs === undefined ? {} : { heartbeatMs: options.heartbeatMs }),
    ...(options.spinLimiter === undefined
      ? {}
      : { spinLimiter: options.spinLimiter, maxSpinners: options.maxSpinners ?? 1 }),
    ...(options.contendedSpinMicros === undefined
      ? {}
      : { contendedSpinMicros: options.contendedSpinMicros }),
  };
  const worker = startWorker(siblingModule(import.meta.url, "../workers/port-worker"), {
    workerData: data,
    transferList: [port2],
  });
  const timeoutMs = options.readyTimeoutMs ?? 10_000;
  const hello = await new Promise<PortWorkerHello>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new PortStartError(options.port, `no READY within ${timeoutMs} ms`)),
      timeoutMs,
    );
    worker.once("message", (m: PortWorkerHello) => {
      clearTimeout(timer);
      resolve(m);
    });
    worker.once("error", (err) => {
      clearTimeout(timer);
      reject(new PortStartError(options.port, `worker failed to start: ${String(err)}`, { cause: err }));
    });
  }).catch(async (err: unknown) => {
    await worker.terminate();
    releaseHeld(held); // a device opened after the READY timeout
    port1.close();
    throw err;
  });
  if (hello.type !== "ready") {
    await once(worker, "exit").catch(() => undefined);
    releaseHeld(held);
    port1.close();
    throw PortStartError.deviceOpen(options.port, deserializeError(hello.error));
  }
  const host = new WorkerPort(worker, bell, heartbeat, port1, held);
  return new PortLink(options.port, { ...hello.summary, placement: "worker" }, ring, host, isoTable);
}
