/**
 * The control plane of one connection (the xenbus / xl analogue): allocates
 * the shared parts, spawns the backend worker, drives the connection state
 * machine (Initialising → InitWait → Initialised → Connected → Closing →
 * Closed, xenbus numbering), attaches and detaches devices on ports while
 * traffic runs, restarts a lost backend, and reports statistics. All of it
 * goes over comlink; the data plane never does.
 *
 * By default the connection also builds the frontend (VirtualHostController)
 * on the calling thread. A VMM that runs its frontend on its own
 * device-model thread passes `frontend: false`, posts `handles` there, and
 * forwards the 'backend-lost' / 'backend-ready' events to it.
 */
import { EventEmitter } from "node:events";
import { MessageChannel, type Worker } from "node:worker_threads";
import type { BackendEvent } from "../backend/backend.js";
import {
  type BackendApi,
  type BackendCrash,
  type BackendHostData,
  startBackendHost,
} from "../backend/backend-host.js";
import type { DeviceSummary, PortCrash } from "../backend/port-link.js";
import {
  type ControllerHandles,
  createControllerHandles,
  type HandlesOptions,
} from "../connection/handles.js";
import { createHeldRecord, releaseHeld } from "../devices/host/held-record.js";
import { type DeviceSpec, describeSpec } from "../devices/spec.js";
import { checkDeviceSpec } from "../devices/spec-schema.js";
import { describeCandidate } from "../discovery/select.js";
import { VirtualHostController } from "../frontend/index.js";
import type { ControllerOptions as FrontendOptions, PortStatus } from "../frontend/types.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { escapeControls } from "../util/escape.js";
import { connect, disconnect, isRpcClosed, type Remote } from "../util/rpc.js";
import { siblingModule, startWorker } from "../util/start-worker.js";
import { findAnnounced } from "./find-announced.js";
import { PortReconnector, reconnects } from "./reconnect.js";

/** xenbus states (xen/include/public/io/xenbus.h). */
export const ConnectionState = {
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
} as const;
export type ConnectionState = (typeof ConnectionState)[keyof typeof ConnectionState];

export function connectionStateName(s: ConnectionState): string {
  return Object.entries(ConnectionState).find(([, v]) => v === s)?.[0] ?? `unknown(${s})`;
}

export interface ConnectionOptions extends HandlesOptions {
  /** Build the frontend on this thread (default true). */
  readonly frontend?: boolean;
  readonly frontendOptions?: FrontendOptions;
  /** Restart a backend worker that died or cut the connection off (default true). */
  readonly restartBackend?: boolean;
  /** Most automatic restarts before the connection gives up and closes (default 5). */
  readonly maxRestarts?: number;
  /** A port worker whose event loop stalls this long is declared hung (default 5000 ms). */
  readonly hungPortMs?: number;
  /**
   * Where the backend runs: on a worker of its own (`"worker"`, the default: a backend that crashes
   * or is cut off is restarted) or on this thread beside the frontend (`"shared"`: no thread hand-off
   * per batch and no spinning; for a frontend that is itself driven by I/O on this thread, such as
   * the USB/IP server). Host and USB/IP devices keep a port worker each either way.
   */
  readonly backendThread?: "worker" | "shared";
}

/** A connection call made when the connection cannot serve it. */
export type ConnectionCode = "ERR_USBVIRT_NOT_CONNECTED";

/** A connection call made when the connection cannot serve it. The class owns its codes: ConnectionCode lists every one. */
export class ConnectionError extends UsbvirtError {
  declare readonly code: ConnectionCode;
  constructor(code: ConnectionCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(ConnectionError);

/**
 * The events a Connection emits, with their arguments: `on`, `once`, `off` and
 * `emit` are checked against this map, so an unknown event name is a type error.
 */
export interface ConnectionEvents {
  /** The connection state machine moved (xenbus numbering). */
  state: [state: ConnectionState];
  /** Something the operator should read: a worker error, a failed re-attach, a cut-off frontend. */
  log: [line: string];
  /** A port's device or port worker failed; the port reports a disconnect. */
  "port-failed": [port: number, reason: string, gone: boolean];
  /** The backend died or was cut off; every URB in flight completed with -ESHUTDOWN. */
  "backend-lost": [reason: string];
  /** A new backend is up (its devices are re-attached next). */
  "backend-ready": [];
  /** A lost USB/IP device is re-attached after `delayMs` (attempt from 1; src/engine/reconnect.ts). */
  "port-reconnecting": [port: number, attempt: number, delayMs: number, reason: string];
  /** The lost device is back on its port (the guest sees a connect and enumerates it again). */
  "port-reconnected": [port: number, summary: DeviceSummary];
  /** Reconnecting stopped after the spec's retryAttempts: the port stays empty. */
  "port-reconnect-failed": [port: number, reason: string];
}

/** How long attach/detach wait for this thread's frontend to take the port's event. */
const FRONTEND_SEES_MS = 2000;

/** How long close() waits for the backend to release its devices before terminating it. */
const CLOSE_TIMEOUT_MS = 10_000;

interface BackendHandle {
  /** Null when the backend runs on this thread. */
  readonly worker: Worker | null;
  readonly api: Remote<BackendApi>;
  readonly events: import("node:worker_threads").MessagePort;
  exited: boolean;
}

export class Connection extends EventEmitter<ConnectionEvents> {
  readonly handles: ControllerHandles;
  readonly frontend: VirtualHostController | null;
  private stateValue: ConnectionState = ConnectionState.Initialising;
  private backend: BackendHandle | null = null;
  /** What each port should have: re-attached after a backend restart. */
  private readonly wanted = new Map<number, DeviceSpec>();
  private restarts = 0;
  /**
   * Per port, what its host device holds outside its port worker (src/devices/host/held-record.ts): a
   * backend worker that dies takes its port workers with it, and nobody else is left to give it back.
   */
  private readonly heldRecords: readonly SharedArrayBuffer[];
  private restarting: Promise<void> | null = null;
  private readonly reconnector = new PortReconnector({
    attach: (port, spec) => this.attachSpec(port, spec),
    detach: (port) => this.detach(port),
    log: (line) => this.emit("log", line),
    reconnecting: (port, attempt, delayMs, reason) =>
      this.emit("port-reconnecting", port, attempt, delayMs, reason),
    reconnected: (port, summary) => this.emit("port-reconnected", port, summary),
    gaveUp: (port, reason) => this.emit("port-reconnect-failed", port, reason),
  });

  private constructor(
    private readonly options: ConnectionOptions,
    handles: ControllerHandles,
  ) {
    super();
    this.handles = handles;
    this.heldRecords = Array.from({ length: handles.ports + 1 }, () => createHeldRecord());
    // Beside a backend on this thread a spin only keeps the peer from running.
    const frontendOptions =
      options.backendThread === "shared"
        ? { maxSpinMicros: 0, ...options.frontendOptions }
        : options.frontendOptions;
    this.frontend = options.frontend === false ? null : new VirtualHostController(handles, frontendOptions);
  }

  /** Create the connection and bring it to Connected. */
  static async create(options: ConnectionOptions = {}): Promise<Connection> {
    const c = new Connection(options, createControllerHandles(options));
    // A fault the frontend finds itself (a lying backend) is handled like a lost backend: start a new one.
    c.frontend?.on("fault", (reason) => void c.recover(`frontend detected a fault: ${reason.message}`));
    await c.startBackend();
    c.frontend?.start();
    return c;
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  private setState(s: ConnectionState): void {
    this.stateValue = s;
    this.emit("state", s);
  }

  private async startBackend(): Promise<void> {
    this.setState(ConnectionState.InitWait);
    const control = new MessageChannel();
    const events = new MessageChannel();
    const shared = this.options.backendThread === "shared";
    const data: BackendHostData = {
      handles: this.handles,
      control: control.port2,
      events: events.port2,
      ...(this.options.hungPortMs !== undefined ? { hungPortMs: this.options.hungPortMs } : {}),
      heldRecords: this.heldRecords,
      ...(shared ? { maxSpinMicros: 0, onFrontendThread: true } : {}),
    };
    let worker: Worker | null = null;
    if (shared) startBackendHost(data);
    else {
      worker = startWorker(siblingModule(import.meta.url, "../workers/backend-worker"), {
        workerData: data,
        transferList: [control.port2, events.port2],
      });
    }
    const handle: BackendHandle = {
      worker,
      api: connect<BackendApi>(control.port1),
      events: events.port1,
      exited: false,
    };
    this.backend = handle;
    events.port1.on("message", (e: BackendEvent) => this.onBackendEvent(handle, e));
    worker?.on("error", (err) => this.emit("log", `backend worker error: ${String(err)}`));
    worker?.on("exit", (code) => {
      handle.exited = true;
      if (this.backend === handle && this.stateValue === ConnectionState.Connected) {
        void this.recover(`backend worker exited (code ${code})`);
      }
    });
    // The backend answers once its comlink endpoint is up: the typed READY of this protocol.
    await handle.api.stats();
    if (shared) {
      // Ports of this thread's own channels would keep the process alive: the frontend decides that.
      for (const p of [control.port1, control.port2, events.port1, events.port2]) p.unref();
    }
    this.setState(ConnectionState.Initialised);
    this.setState(ConnectionState.Connected);
  }

  private onBackendEvent(handle: BackendHandle, e: BackendEvent): void {
    if (handle !== this.backend) return;
    if (e.type === "port-failed") {
      const spec = this.wanted.get(e.port);
      this.wanted.delete(e.port);
      this.emit("port-failed", e.port, e.reason, e.gone);
      if (e.gone && spec !== undefined && reconnects(spec)) this.reconnector.lost(e.port, spec, e.reason);
    } else if (e.type === "device-log") {
      this.emit("log", `port ${e.port}: ${e.line}`);
    } else if (e.type === "host-failed") {
      this.emit("log", `backend failed: ${e.message}`);
      void this.recover(`backend failed: ${e.message}`);
    } else if (e.type === "ring-fault") {
      this.emit("log", `frontend broke the ring protocol: ${e.message}; cutting the connection off`);
      void this.recover(`ring fault: ${e.message}`);
    }
  }

  /** The backend is gone or cut off: fail everything in flight, start a new one, re-attach. */
  private recover(reason: string): Promise<void> {
    this.restarting ??= (async () => {
      const old = this.backend;
      this.backend = null;
      // A worker is cut off at once; a backend on this thread is asked to close its ports first.
      if (old !== null) await this.stopBackend(old, 1000, old.worker === null);
      this.frontend?.backendLost({ cause: "control-plane", message: reason });
      this.emit("backend-lost", reason);
      if (this.options.restartBackend === false || ++this.restarts > (this.options.maxRestarts ?? 5)) {
        this.setState(ConnectionState.Closed);
        return;
      }
      await this.startBackend();
      this.frontend?.backendReady();
      this.emit("backend-ready");
      for (const [port, spec] of this.wanted) {
        await this.resolved(port, spec)
          .then((found) => this.requireBackend().api.attach(port, found))
          .catch((err: unknown) => {
            this.wanted.delete(port);
            this.emit("log", `re-attach of ${describeSpec(spec)} on port ${port} failed: ${String(err)}`);
          });
      }
    })().finally(() => {
      this.restarting = null;
    });
    return this.restarting;
  }

  /** Kill the backend worker and bring up a new one (fault injection, or an operator's restart). */
  async restartBackend(): Promise<void> {
    await this.recover("backend restarted by the control plane");
  }

  private requireBackend(): BackendHandle {
    if (this.backend === null || this.stateValue !== ConnectionState.Connected) {
      throw new ConnectionError(
        "ERR_USBVIRT_NOT_CONNECTED",
        `connection is ${connectionStateName(this.stateValue)}, not Connected`,
      );
    }
    return this.backend;
  }

  /**
   * Put a device on a port; resolves once the device is open and, when the
   * frontend runs on this thread, once it shows the port connected.
   */
  async attach(port: number, spec: DeviceSpec): Promise<DeviceSummary> {
    checkDeviceSpec(spec); // a VMM's bad spec fails here, naming the field, not deep in the backend
    this.reconnector.cancel(port);
    return await this.attachSpec(port, spec);
  }

  /** Ports whose lost USB/IP device is being reconnected. */
  get reconnecting(): readonly number[] {
    return this.reconnector.pending;
  }

  private async attachSpec(port: number, spec: DeviceSpec): Promise<DeviceSummary> {
    const summary = await this.requireBackend().api.attach(port, await this.resolved(port, spec));
    this.wanted.set(port, spec);
    await this.frontendSees(port, true);
    return summary;
  }

  /**
   * What the backend gets for `spec`: a usbip spec that selects its device is resolved on the network now
   * (find-announced.ts); `wanted` keeps the selector, so every later attach resolves it again.
   */
  private async resolved(port: number, spec: DeviceSpec): Promise<DeviceSpec> {
    if (spec.kind !== "usbip" || spec.select === undefined) return spec;
    const { spec: found, candidate } = await findAnnounced(spec);
    this.emit("log", `port ${port}: "${escapeControls(spec.select)}" is ${describeCandidate(candidate)}`);
    return found;
  }

  /** Take the device off a port; resolves once it is closed and the frontend shows the port empty. */
  async detach(port: number): Promise<void> {
    this.wanted.delete(port);
    // Detaching a port whose device is being reconnected just stops that: the device already left the
    // backend's port (an attempt that completes after this takes itself off). The frontend may not have
    // taken the disconnect from the conn ring yet; wait for it rather than ask the backend to detach an
    // empty port.
    if (this.reconnector.cancel(port)) {
      await this.frontendSees(port, false);
      return;
    }
    await this.requireBackend().api.detach(port);
    await this.frontendSees(port, false);
  }

  /**
   * Wait (briefly) until this thread's frontend has taken the port's conn-ring
   * event, so an enumerate right after attach or a re-attach right after
   * detach never meets the previous device's state.
   */
  private async frontendSees(port: number, connected: boolean): Promise<void> {
    const hcd = this.frontend;
    if (hcd === null || !hcd.isRunning) return;
    if (hcd.portStatus(port).connected === connected) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        hcd.off("portChange", onChange);
        resolve();
      };
      const onChange = (s: PortStatus): void => {
        if (s.port === port && s.connected === connected) done();
      };
      // The event is already on the conn ring; the bound only matters if the frontend is stalled.
      const timer = setTimeout(done, FRONTEND_SEES_MS);
      hcd.on("portChange", onChange);
    });
  }

  /** Call a device's command (e.g. the keyboard's `pressKeys`). */
  async deviceCommand(port: number, method: string, ...args: unknown[]): Promise<unknown> {
    return await this.requireBackend().api.deviceCommand(port, method, args);
  }

  /** Fault injection: end the port's worker abruptly. */
  async killPort(port: number): Promise<void> {
    await this.requireBackend().api.killPort(port);
  }

  /** Fault injection: stall the port's worker for `ms`; past `hungPortMs` the port is cut off. */
  async freezePort(port: number, ms: number): Promise<void> {
    await this.requireBackend().api.freezePort(port, ms);
  }

  /**
   * Fault injection: crash the port for real ("throw": an uncaught exception in its worker, or in the port
   * service on the backend's thread; "exit": process.exit on its worker). Its URBs fail, the port reports
   * a disconnect, and the port takes a new device.
   */
  async crashPort(port: number, how: PortCrash = "throw"): Promise<void> {
    await this.requireBackend().api.crashPort(port, how);
  }

  /**
   * Fault injection: crash the backend for real ("throw": its service loop throws; "exit": process.exit on
   * the backend worker). The connection recovers on its own: URBs in flight end -ESHUTDOWN, a new backend
   * starts and the devices are re-attached.
   */
  async crashBackend(how: BackendCrash = "throw"): Promise<void> {
    // The backend answers before it crashes; its end may still come first and cut the answer off.
    await this.requireBackend()
      .api.crash(how)
      .catch((err: unknown) => {
        if (!isRpcClosed(err)) throw err;
      });
  }

  async stats(): Promise<Awaited<ReturnType<BackendApi["stats"]>> & { frontend: unknown }> {
    const backend = await this.requireBackend().api.stats();
    return { ...backend, frontend: this.frontend?.stats() ?? null };
  }

  /**
   * Close a backend: its devices are detached (bounded by `ms`), then a worker is terminated; a backend
   * on this thread stops once close() returned (its service loop ends, its ports are closed).
   */
  private async stopBackend(b: BackendHandle, ms: number, graceful: boolean): Promise<void> {
    if (graceful && !b.exited) {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise((resolve) => {
        timer = setTimeout(resolve, ms);
      });
      await Promise.race([b.api.close(), deadline])
        .catch(() => undefined)
        .finally(() => clearTimeout(timer));
    }
    disconnect(b.api);
    b.events.close();
    if (b.worker !== null && !b.exited) await b.worker.terminate();
    if (b.worker !== null) this.giveBackHeld();
  }

  /** After a backend worker ended: what its port workers' host devices still held is given back here. */
  private giveBackHeld(): void {
    this.heldRecords.forEach((record, port) => {
      const given = releaseHeld(record);
      if (given === null) return;
      const drivers =
        given.reattached.length > 0 ? `; kernel driver(s) re-attached to ${given.reattached.join(", ")}` : "";
      const failed = given.failed.length > 0 ? `; not re-attached: ${given.failed.join(", ")}` : "";
      this.emit(
        "log",
        `port ${port}: host device given back by the control plane (usbfs fd ${given.usbfsFd}, lock released${drivers}${failed})`,
      );
    });
  }

  /** Detach every device, stop the backend and the frontend. */
  async close(): Promise<void> {
    if (this.stateValue === ConnectionState.Closed) return;
    this.reconnector.cancelAll();
    await this.restarting;
    this.setState(ConnectionState.Closing);
    const b = this.backend;
    this.backend = null;
    if (b !== null) await this.stopBackend(b, CLOSE_TIMEOUT_MS, true);
    this.frontend?.backendLost({ cause: "control-plane", message: "connection closed" });
    await this.frontend?.stop();
    this.setState(ConnectionState.Closed);
  }
}
