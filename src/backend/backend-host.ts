/**
 * The backend's host: one per frontend connection. Serves the URB ring
 * (UsbBackend), runs emulated devices on its own thread or spawns a port
 * worker per device (host and USB/IP devices always), answers the control
 * plane over comlink, and watches its port workers' heartbeats. It waits with
 * Atomics.waitAsync so comlink calls, port-worker events and its own devices'
 * completions keep flowing on its event loop.
 *
 * It runs on a backend worker (src/workers/backend-worker.ts, the default) or
 * on the frontend's own thread (Connection option `backendThread: "shared"`):
 * the same rings, grants, parse gate and port service either way; sharing the
 * thread removes the two thread hand-offs per batch, which is what a network
 * server on a busy two-core host pays most for.
 */
import { isMainThread, type MessagePort } from "node:worker_threads";
import { type BackendEvent, type BackendStats, UsbBackend } from "../backend/backend.js";
import { openInlinePort } from "../backend/inline-port.js";
import type { DeviceSummary, PortCrash, PortLink } from "../backend/port-link.js";
import { spawnPortWorker, type WorkerPort } from "../backend/worker-port.js";
import { type ControllerHandles, spinLimiterOf } from "../connection/handles.js";
import type { DeviceSpec } from "../devices/spec.js";
import type { PortStats } from "../port/port-service.js";
import { ServiceLoop } from "../rings/service-loop.js";
import { AdaptiveSpin, type WaitStats } from "../rings/spin.js";
import { ENODEV } from "../urb/status.js";
import { DEFAULT_CLIENT_TIMEOUT_MS } from "../usbip/client.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { serve } from "../util/rpc.js";

export interface BackendHostData {
  readonly handles: ControllerHandles;
  /** comlink channel for BackendApi. */
  readonly control: MessagePort;
  /** BackendEvent messages to the manager. */
  readonly events: MessagePort;
  /** A port worker whose event loop has not turned for this long is declared hung (default 5000). */
  readonly hungPortMs?: number;
  /**
   * Longest spin before parking, µs (default 100). 0 when the backend shares its thread with the
   * frontend: a spin there only keeps the peer from running.
   */
  readonly maxSpinMicros?: number;
  /**
   * One held record per port (index = port; src/devices/host/held-record.ts), owned by the control plane:
   * if this backend dies with its port workers, the control plane gives back what their devices held.
   */
  readonly heldRecords?: readonly SharedArrayBuffer[];
  /** The backend runs on the frontend's thread (Connection `backendThread: "shared"`). */
  readonly onFrontendThread?: boolean;
}

export interface BackendApi {
  attach(port: number, spec: DeviceSpec): Promise<DeviceSummary>;
  detach(port: number): Promise<void>;
  stats(): Promise<
    BackendStats & {
      portWorkers: Record<number, (PortStats & { inFlight: number }) | null>;
      /** Port worker threads started and not yet exited (leak accounting). */
      liveWorkers: number;
      /** The backend thread's wait strategy: spins that paid, sleeps, contention seen, its CPU time. */
      wait: WaitStats;
    }
  >;
  deviceCommand(port: number, method: string, args: unknown[]): Promise<unknown>;
  /** Fault injection: end a port worker abruptly. */
  killPort(port: number): Promise<void>;
  /** Fault injection: stall a port worker's event loop for `ms` (the watchdog should cut it off). */
  freezePort(port: number, ms: number): Promise<void>;
  /** Fault injection: crash a port for real (see PortCrash). */
  crashPort(port: number, how: PortCrash): Promise<void>;
  /** Fault injection: crash this backend for real (see BackendCrash). */
  crash(how: BackendCrash): Promise<void>;
  close(): Promise<void>;
}

/**
 * How a backend crashes (fault injection): "throw", the service loop's next turn throws (either thread);
 * "exit", process.exit on the backend worker (a backend on the frontend's thread refuses: it would end
 * the process).
 */
export type BackendCrash = "throw" | "exit";

/** A port request the backend refused. */
export type BackendPortCode =
  | "ERR_USBVIRT_PORT_RANGE"
  | "ERR_USBVIRT_PORT_EMPTY"
  | "ERR_USBVIRT_PORT_BUSY"
  | "ERR_USBVIRT_PORT_PLACEMENT"
  | "ERR_USBVIRT_BACKEND_CRASH";

/** A port request the backend refused. The class owns its codes: BackendPortCode lists every one. */
export class BackendPortError extends UsbvirtError {
  declare readonly code: BackendPortCode;
  constructor(code: BackendPortCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(BackendPortError);

/** Start a backend host on this thread; it runs until the control plane calls close(). */
export function startBackendHost(hostData: BackendHostData): void {
  const data = hostData;
  const backend = new UsbBackend(data.handles);
  const limiter = spinLimiterOf(data.handles);
  const spin = new AdaptiveSpin({
    ...(data.maxSpinMicros !== undefined ? { maxSpinMicros: data.maxSpinMicros } : {}),
    ...(limiter === undefined ? {} : { limiter }),
    ...(data.handles.contendedSpinMicros === undefined
      ? {}
      : { contendedSpinMicros: data.handles.contendedSpinMicros }),
  });
  const hungMs = data.hungPortMs ?? 5000;
  /** The watchdog looks, and port workers beat, four times per hung-port limit. */
  const watchdogMs = Math.max(50, Math.floor(hungMs / 4));
  const attaching = new Set<number>();
  /** Port worker threads started and not yet exited. */
  let liveWorkers = 0;
  /** Fault injection: the service loop's next turn throws. */
  let crashNext = false;

  backend.onEvent((e: BackendEvent) => data.events.postMessage(e));

  function checkPort(port: number): void {
    if (!Number.isInteger(port) || port < 1 || port > data.handles.ports) {
      throw new BackendPortError("ERR_USBVIRT_PORT_RANGE", `port ${port} is not in 1..${data.handles.ports}`);
    }
  }

  function requireLink(port: number): PortLink {
    checkPort(port);
    const link = backend.portLink(port);
    if (link === null) throw new BackendPortError("ERR_USBVIRT_PORT_EMPTY", `port ${port} has no device`);
    return link;
  }

  /** Open the device where its spec says: on this thread (emulated devices by default) or on a port worker. */
  async function openPort(port: number, spec: DeviceSpec): Promise<PortLink> {
    const asked: unknown = (spec as { placement?: unknown }).placement;
    if (
      spec.kind === "emulated"
        ? asked !== undefined && asked !== "backend" && asked !== "worker"
        : asked !== undefined && asked !== "worker"
    ) {
      throw new BackendPortError(
        "ERR_USBVIRT_PORT_PLACEMENT",
        spec.kind === "emulated"
          ? `placement must be 'backend' or 'worker', got ${JSON.stringify(asked)}`
          : `${spec.kind} devices always run on a port worker; placement ${JSON.stringify(asked)} is not possible`,
      );
    }
    const placement = spec.kind === "emulated" ? (spec.placement ?? "backend") : "worker";
    if (placement === "backend" && spec.kind === "emulated") {
      return await openInlinePort({
        port,
        spec,
        memory: data.handles.memory,
        backendBell: data.handles.backendBell,
      });
    }
    const held = data.heldRecords?.[port];
    const link = await spawnPortWorker({
      port,
      spec,
      ...(held === undefined ? {} : { held }),
      memory: data.handles.memory,
      backendBell: data.handles.backendBell,
      heartbeatMs: watchdogMs,
      // A USB/IP import has its own bounds (connect, import, descriptors); the READY wait must outlast them.
      ...(spec.kind === "usbip"
        ? { readyTimeoutMs: 3 * (spec.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS) + 5000 }
        : {}),
      ...(data.handles.spinLimiter === undefined
        ? {}
        : { spinLimiter: data.handles.spinLimiter, maxSpinners: data.handles.maxSpinners ?? 1 }),
      ...(data.handles.contendedSpinMicros === undefined
        ? {}
        : { contendedSpinMicros: data.handles.contendedSpinMicros }),
    });
    liveWorkers++;
    (link.host as WorkerPort).worker.once("exit", () => {
      liveWorkers--;
      backend.bell.ring();
    });
    return link;
  }

  const api: BackendApi = {
    async attach(port, spec) {
      checkPort(port);
      if (backend.portLink(port) !== null || attaching.has(port)) {
        throw new BackendPortError("ERR_USBVIRT_PORT_BUSY", `port ${port} already has a device`);
      }
      attaching.add(port);
      try {
        const link = await openPort(port, spec);
        link.host.watch({
          gone(reason) {
            if (backend.portLink(port) !== link) return;
            backend.poll(); // collect the completions the device produced on its way out
            backend.failPort(port, `device gone: ${reason}`, ENODEV);
            void link.host.retire();
          },
          log(line) {
            if (backend.portLink(port) === link) backend.deviceLog(port, line);
          },
          failed(reason) {
            if (backend.portLink(port) !== link) return;
            backend.failPort(port, reason);
            void link.host.retire();
          },
        });
        backend.attachLink(link);
        return link.summary;
      } finally {
        attaching.delete(port);
      }
    },

    async detach(port) {
      const link = requireLink(port);
      link.closing = true; // new URBs to this port get -ENODEV from now on
      try {
        await Promise.race([
          link.host.close(),
          new Promise((_, reject) => setTimeout(() => reject(new Error("close timed out")), hungMs).unref()),
        ]);
      } catch {
        // A device that will not close is cut off: its URBs are failed below.
      }
      backend.poll(); // collect the completions the close produced
      backend.failPort(port, "detached", ENODEV);
      await link.host.retire();
    },

    async stats() {
      const portWorkers: Record<number, (PortStats & { inFlight: number }) | null> = {};
      for (const link of backend.links) {
        portWorkers[link.port] = await link.host.stats().catch(() => null);
      }
      return { ...backend.snapshot(), portWorkers, liveWorkers, wait: spin.snapshot() };
    },

    async deviceCommand(port, method, args) {
      return await requireLink(port).host.command(method, args);
    },

    async killPort(port) {
      await requireLink(port).host.kill();
    },

    async freezePort(port, ms) {
      await requireLink(port).host.freeze(ms);
    },

    async crashPort(port, how) {
      await requireLink(port).host.crash(how);
    },

    async crash(how) {
      if (how === "exit") {
        if (isMainThread || data.onFrontendThread === true) {
          throw new BackendPortError(
            "ERR_USBVIRT_BACKEND_CRASH",
            "the backend shares the frontend's thread: process.exit would end the process (crash it with 'throw')",
          );
        }
        // Answer first, then end the thread the way a fatal error would: no close(), no detach.
        setImmediate(() => process.exit(70));
        return;
      }
      crashNext = true;
      backend.bell.ring(); // a parked loop turns now
    },

    async close() {
      const stopped = loop.stop();
      for (const link of backend.links) await api.detach(link.port).catch(() => undefined);
      await stopped.catch(() => undefined); // a failed loop has said so as host-failed
    },
  };

  serve(api, data.control);

  // Hung port workers: the heartbeat stopped, so the worker cannot answer; cut it off.
  const watchdog = setInterval(() => {
    const now = Date.now();
    for (const link of backend.links) {
      if (!link.closing && link.host.isHung(now, hungMs)) {
        backend.failPort(link.port, `port worker hung (no heartbeat for ${hungMs} ms)`);
        void link.host.retire();
      }
    }
  }, watchdogMs);
  watchdog.unref();

  // The service loop (src/rings/service-loop.ts). With devices on this thread it spins between turns of the
  // event loop so their completions can land; a frontend that broke the protocol stalls it (the manager
  // decides: reset or close).
  const loop = new ServiceLoop({
    poll: () => {
      if (crashNext) {
        crashNext = false;
        throw new Error("backend crashed (fault injection)");
      }
      return backend.poll();
    },
    waitable: backend,
    bell: backend.bell,
    spin,
    turning: () => backend.hasInlinePorts,
    stalled: () => backend.ringFault !== 0,
  });
  loop.start().then(
    // The ports stay open: close() is still answering over `control`; the manager terminates this worker.
    () => clearInterval(watchdog),
    (err: unknown) => {
      // On a worker this would end the worker; on the frontend's thread it must not end the process.
      clearInterval(watchdog);
      data.events.postMessage({ type: "host-failed", message: String(err) } satisfies BackendEvent);
    },
  );
}
