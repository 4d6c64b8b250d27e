/**
 * The backend's end of one port worker: the port ring (the backend is its
 * frontend), the ids of the port-ring requests in flight and what each one
 * stands for, and the worker itself. Spawning waits for the worker's typed
 * READY message (with a timeout) before the port is usable.
 */
import { once } from "node:events";
import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import type { DeviceSpec } from "../devices/spec.js";
import { PORT_RING_GEOMETRY } from "../port/port-wire.js";
import type { UsbSpeed } from "../rings/conn-ring.js";
import { Doorbell } from "../rings/doorbell.js";
import { FrontRing } from "../rings/front-ring.js";
import { IdPool } from "../rings/id-pool.js";
import { createRingBuffer } from "../rings/layout.js";
import { UsbvirtError } from "../util/errors.js";
import { connect, type Remote } from "../util/rpc.js";
import type { PortWorkerApi, PortWorkerData, PortWorkerHello } from "../workers/port-worker.js";
import { siblingModule, startWorker } from "../workers/spawn.js";

/** One guest URB while it is on a port: what to answer and what to unpin when it completes. */
export interface InFlightUrb {
  readonly frontId: number;
  readonly port: number;
  /** Port-ring id, or -1 when the URB never reached the port worker. */
  portId: number;
  readonly bufferLength: number;
  /** Grant refs pinned for this URB (data segments and the iso descriptor array). */
  readonly pins: number[];
  /** Guest ids of unlink requests waiting for this URB to complete. */
  unlinkWaiters: number[] | null;
  cancelSent: boolean;
  readonly isPortReset: boolean;
}

export interface DeviceSummary {
  readonly name: string;
  readonly speed: UsbSpeed;
  readonly deviceDescriptor: Uint8Array;
}

export class PortLink {
  readonly front: FrontRing;
  readonly ids = new IdPool(PORT_RING_GEOMETRY.slots);
  readonly bell: Doorbell;
  /** What each port-ring id stands for: a guest URB, or null for a cancel request. */
  readonly byPortId: (InFlightUrb | null)[] = new Array(PORT_RING_GEOMETRY.slots).fill(null);
  readonly heartbeat: Int32Array;
  readonly api: Remote<PortWorkerApi>;
  private lastBeat = 0;
  private lastBeatAt = Date.now();
  closing = false;
  /** The worker has been (or is being) terminated and its comlink proxy released. */
  retired = false;

  constructor(
    readonly port: number,
    readonly worker: Worker,
    readonly summary: DeviceSummary,
    ring: SharedArrayBuffer,
    bell: SharedArrayBuffer,
    heartbeat: SharedArrayBuffer,
    control: MessagePort,
  ) {
    this.front = new FrontRing(ring, PORT_RING_GEOMETRY, { ids: this.ids });
    this.bell = new Doorbell(bell);
    this.heartbeat = new Int32Array(heartbeat);
    this.api = connect<PortWorkerApi>(control);
  }

  /** True when the worker's event loop has not beaten for `hungMs`. */
  isHung(now: number, hungMs: number): boolean {
    const beat = Atomics.load(this.heartbeat, 0);
    if (beat !== this.lastBeat) {
      this.lastBeat = beat;
      this.lastBeatAt = now;
      return false;
    }
    return now - this.lastBeatAt > hungMs;
  }
}

export class PortStartError extends UsbvirtError {
  constructor(port: number, message: string, code = "ERR_USBVIRT_PORT_START") {
    super(code, `port ${port}: ${message}`);
  }
}

export interface SpawnPortOptions {
  readonly port: number;
  readonly spec: DeviceSpec;
  readonly memory: readonly SharedArrayBuffer[];
  readonly backendBell: SharedArrayBuffer;
  /** The connection's spinner cap (ControllerHandles.spinLimiter) and its size. */
  readonly spinLimiter?: SharedArrayBuffer;
  readonly maxSpinners?: number;
  readonly readyTimeoutMs?: number;
  /** The port worker's heartbeat period (a quarter of the hung-port limit is plenty). */
  readonly heartbeatMs?: number;
}

/** Start a port worker for `spec` and wait for it to open its device. */
export async function spawnPortWorker(options: SpawnPortOptions): Promise<PortLink> {
  const ring = createRingBuffer(PORT_RING_GEOMETRY);
  const bell = Doorbell.create();
  const heartbeat = new SharedArrayBuffer(8);
  const { port1, port2 } = new MessageChannel();
  const data: PortWorkerData = {
    port: options.port,
    spec: options.spec,
    portRing: ring,
    portBell: bell,
    backendBell: options.backendBell,
    memory: options.memory,
    heartbeat,
    control: port2,
    ...(options.heartbeatMs === undefined ? {} : { heartbeatMs: options.heartbeatMs }),
    ...(options.spinLimiter === undefined
      ? {}
      : { spinLimiter: options.spinLimiter, maxSpinners: options.maxSpinners ?? 1 }),
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
      reject(new PortStartError(options.port, `worker failed to start: ${String(err)}`));
    });
  }).catch(async (err: unknown) => {
    await worker.terminate();
    port1.close();
    throw err;
  });
  if (hello.type !== "ready") {
    await once(worker, "exit").catch(() => undefined);
    port1.close();
    throw new PortStartError(options.port, hello.message, hello.code);
  }
  return new PortLink(options.port, worker, hello.summary, ring, bell, heartbeat, port1);
}
