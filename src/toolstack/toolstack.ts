/**
 * The toolstack of a running host (Xen's xl usbdev-attach, usbipd-win's bind / unbind): what the control
 * socket's verbs do. Each acts through the engine's existing paths, never a second way to open a device:
 * - bind: an emulated device is exported on a port kept free (UsbipServer.exportDevice); a host selector
 *   becomes a want of the hotplug machinery (HostExports.addWant): exported now when plugged in, else
 *   when it appears, as a --device selector is.
 * - unbind: the export is withdrawn (UsbipServer.withdraw, or HostExports.removeWant): the importer's
 *   connection is closed, as on unplug; the port is free for the next bind.
 * - detach: the importer is cut off, the device stays exported.
 * - assign / release: a usbredir server in connect mode to the VM's chardev, with its own engine, closed
 *   on release.
 * One holder per device (arbitration.ts): a bind or assign of a held device is refused naming the holder.
 * Changes are applied one at a time (a queue) and persisted (state-store.ts); `restore` replays them at
 * start. `list` says every device's state; the counters feed the metrics.
 */
import { EMULATED_DEVICES } from "../devices/emulated/index.js";
import { type DeviceFilter, judge } from "../devices/host/filter.js";
import { formatSelector, matchesSelector, selectorFromSpec } from "../devices/host/select.js";
import type { DeviceSpec } from "../devices/spec.js";
import { describeSpec } from "../devices/spec.js";
import { escapingLogger, type FaceLogger } from "../network-face/log.js";
import type { HostExports, PluggedDevice } from "../usbip-server/host-exports.js";
import type { UsbipServer } from "../usbip-server/server.js";
import { UsbredirServer } from "../usbredir/server.js";
import { claimDevice, claimedBy, type Holding, sameDevice } from "./arbitration.js";
import {
  type AssignTarget,
  ControlError,
  type ControlRequest,
  type DeviceRow,
  formatTarget,
  type ListResult,
  parseTarget,
} from "./protocol.js";
import { emptyState, type StateStore, type ToolstackState } from "./state-store.js";

/** A listed host device (HostDeviceInfo's fields the toolstack reads). */
export interface HostRow extends PluggedDevice {
  readonly manufacturer?: string;
  readonly product?: string;
}

/** A running usbredir assignment (UsbredirServer, or a stand-in in tests of the toolstack's bookkeeping). */
export interface Assignment {
  readonly selector: string;
  readonly spec: DeviceSpec;
  readonly target: AssignTarget;
  readonly since: Date;
  readonly server: { close(): Promise<void>; stats(): { connected?: boolean } | object };
}

export interface ToolstackCounters {
  binds: number;
  unbinds: number;
  detaches: number;
  assigns: number;
  releases: number;
  refusals: number;
}

export interface ToolstackOptions {
  /** The USB/IP server (serve); null for a daemon without one (redirect): bind/unbind/detach refused. */
  readonly usbip: UsbipServer | null;
  /** The hotplug machinery, for host binds (null: no libusb). */
  readonly hotplug: HostExports | null;
  /** Ports of the USB/IP server kept free for runtime binds. */
  readonly sparePorts: readonly number[];
  readonly filter: DeviceFilter;
  /** A selector (what --device takes) as a device spec; throws on a bad one. */
  readonly specOf: (selector: string) => DeviceSpec;
  /** libusb's listing (throws when libusb cannot be used). */
  readonly listHost: () => Promise<readonly HostRow[]>;
  readonly store: StateStore | null;
  readonly log: FaceLogger;
  /** What this daemon holds outside the USB/IP server (redirect's own device). */
  readonly fixed?: readonly Holding[];
  /** Start a usbredir server dialling the VM (default: UsbredirServer.start; tests may wrap it). */
  readonly startAssignment?: (
    spec: DeviceSpec,
    target: AssignTarget,
    log: FaceLogger,
  ) => Promise<Assignment["server"]>;
}

const BUSID = /^\d{1,3}-\d{1,3}(\.\d{1,3}){0,6}$/;

export class Toolstack {
  readonly counters: ToolstackCounters = {
    binds: 0,
    unbinds: 0,
    detaches: 0,
    assigns: 0,
    releases: 0,
    refusals: 0,
  };
  private readonly spare: number[];
  private readonly assignments: Assignment[] = [];
  /** Runtime binds: port -> the selector given. */
  private readonly runtimeBinds = new Map<number, string>();
  /** When each bus id was imported, and by whom. */
  private readonly imports = new Map<string, { client: string; since: Date }>();
  private state: ToolstackState = emptyState();
  private queue: Promise<unknown> = Promise.resolve();
  private readonly onImport = (busid: string, peer: string): void => {
    this.imports.set(busid, { client: peer, since: new Date() });
  };
  private readonly onDetach = (busid: string): void => {
    this.imports.delete(busid);
  };

  /** The daemon's log, every unsafe character of what a control client or a device said escaped. */
  private readonly log: FaceLogger;

  constructor(private readonly options: ToolstackOptions) {
    this.log = escapingLogger(options.log);
    this.spare = [...options.sparePorts].sort((a, b) => a - b);
    options.usbip?.on("import", this.onImport);
    options.usbip?.on("detach", this.onDetach);
  }

  /** Apply one control request (serialised with every other). */
  handle(request: ControlRequest): Promise<unknown> {
    if (request.verb === "list") return this.list();
    const step = this.queue.then(() => this.apply(request));
    this.queue = step.catch(() => undefined);
    return step.catch((err: unknown) => {
      this.counters.refusals++;
      this.log.warn(`control: ${request.verb} refused: ${(err as Error).message}`);
      throw err;
    });
  }

  private apply(request: Exclude<ControlRequest, { verb: "list" }>): Promise<unknown> {
    switch (request.verb) {
      case "bind":
        return this.bind(request.device, true);
      case "unbind":
        return this.unbind(request.device, true);
      case "detach":
        return this.detach(request.busid);
      case "assign":
        return this.assign(request.device, request.to, true);
      case "release":
        return this.release(request.device, true);
    }
  }

  /** Replay the saved state (after the config's devices are up): unbinds, binds, then assignments. */
  async restore(): Promise<void> {
    const store = this.options.store;
    if (store === null) return;
    let saved: ToolstackState;
    try {
      saved = store.load();
    } catch (err) {
      this.log.error(`control: saved state ignored: ${(err as Error).message}`);
      return;
    }
    const steps: [string, () => Promise<unknown>][] = [
      ...saved.unbound.map((s): [string, () => Promise<unknown>] => [
        `unbind ${s}`,
        () => this.unbind(s, false),
      ]),
      ...saved.bound.map((b): [string, () => Promise<unknown>] => [
        `bind ${b.device} as ${b.busid}`,
        () => this.bind(b.device, false, Number(b.busid.slice(2))),
      ]),
      ...saved.assigned.map((a): [string, () => Promise<unknown>] => [
        `assign ${a.device} --to ${a.to}`,
        () => this.assign(a.device, a.to, false),
      ]),
    ];
    for (const [what, step] of steps) {
      try {
        await step();
        this.log.info(`control: restored ${what}`);
      } catch (err) {
        this.log.error(`control: cannot restore ${what}: ${(err as Error).message}`);
      }
    }
    this.state = saved;
  }

  async close(): Promise<void> {
    this.options.usbip?.off("import", this.onImport);
    this.options.usbip?.off("detach", this.onDetach);
    await this.queue;
    for (const a of this.assignments.splice(0)) await a.server.close().catch(() => undefined);
  }

  // ---------------------------------------------------------------- verbs

  private spec(selector: string): DeviceSpec {
    try {
      return this.options.specOf(selector);
    } catch (err) {
      throw new ControlError("unknown-device", (err as Error).message);
    }
  }

  private usbip(verb: string): UsbipServer {
    if (this.options.usbip === null) {
      throw new ControlError(
        "not-supported",
        `${verb} needs a USB/IP server (usbvirt serve); this daemon has none`,
      );
    }
    return this.options.usbip;
  }

  private async rows(): Promise<readonly HostRow[]> {
    try {
      return await this.options.listHost();
    } catch {
      return [];
    }
  }

  /** Everything held now: each export (and its importer), each wanted host device, each VM. */
  private holdings(): Holding[] {
    const out: Holding[] = [...(this.options.fixed ?? [])];
    const usbip = this.options.usbip;
    if (usbip !== null) {
      for (const d of usbip.devices) {
        const imp = this.imports.get(d.busid);
        const by = imp !== undefined ? `, imported by ${imp.client}` : "";
        out.push({ spec: d.spec, holder: `USB/IP bus id ${d.busid}${by}` });
      }
    }
    for (const w of this.options.hotplug?.state ?? []) {
      if (w.current !== null) continue; // listed with the exports above
      out.push({
        spec: { kind: "host", ...w.selector },
        holder: `USB/IP bus id 1-${w.port} (waiting for it)`,
      });
    }
    for (const a of this.assignments) out.push({ spec: a.spec, holder: `VM ${formatTarget(a.target)}` });
    return out;
  }

  /** Bind `selector` on a spare port (`port` when it is spare: a restored bus id). */
  private async bind(selector: string, persist: boolean, wanted?: number): Promise<unknown> {
    const usbip = this.usbip("bind");
    const spec = this.spec(selector);
    if (spec.kind === "usbip")
      throw new ControlError("not-supported", "bind takes a host or emulated device");
    const rows = await this.rows();
    claimDevice(selector, spec, this.holdings(), rows);
    let plugged: HostRow | undefined;
    if (spec.kind === "host") {
      if (this.options.hotplug === null) {
        throw new ControlError(
          "not-supported",
          "binding a host device needs libusb, which this daemon could not use",
        );
      }
      const sel = selectorFromSpec(spec);
      plugged = rows.find((r) => !r.portPath.startsWith("usb") && matchesSelector(r, sel));
      if (plugged !== undefined) {
        const verdict = judge(this.options.filter, plugged);
        if (!verdict.allowed)
          throw new ControlError("denied", `${selector} is denied by the filter: ${verdict.why}`);
      }
    }
    const at = wanted !== undefined && this.spare.includes(wanted) ? this.spare.indexOf(wanted) : 0;
    const port = this.spare.splice(at, 1)[0];
    if (port === undefined)
      throw new ControlError("no-port", "no port is free for a runtime bind (unbind one first)");
    let busid = `1-${port}`;
    let state: "bound" | "waiting" = "bound";
    try {
      if (spec.kind === "host") {
        const want = await this.options.hotplug!.addWant(selectorFromSpec(spec), port);
        if (want.current === null) {
          if (plugged !== undefined)
            throw new Error(`${selector} is plugged in but could not be exported (see the log)`);
          state = "waiting";
        } else busid = want.current.busid;
      } else {
        busid = (await usbip.exportDevice(spec, port)).busid;
      }
    } catch (err) {
      if (spec.kind === "host")
        await this.options.hotplug!.removeWant(port, "bind failed").catch(() => undefined);
      this.spare.push(port);
      this.spare.sort((a, b) => a - b);
      throw err instanceof ControlError
        ? err
        : new ControlError("failed", (err as Error).message, { cause: err });
    }
    this.runtimeBinds.set(port, selector);
    this.counters.binds++;
    this.log.info(`control: bound ${selector} as ${busid}${state === "waiting" ? " (waiting for it)" : ""}`, {
      busid,
    });
    if (persist) {
      // Replayed after the config's unbinds, so a config device bound again is a runtime bind too.
      this.state.bound.push({ device: selector, busid });
      this.save();
    }
    return { device: selector, busid, state };
  }

  /** The port `target` (a bus id or a selector) is bound on, and the selector it was bound by. */
  private portOf(target: string): { port: number; busid: string } {
    const usbip = this.usbip("unbind");
    if (BUSID.test(target)) {
      const port = Number(target.split("-")[1]);
      const exported = usbip.devices.some((d) => d.busid === target);
      const waiting = this.options.hotplug?.state.some((w) => w.port === port && w.current === null) === true;
      if (target.startsWith("1-") && (exported || waiting)) return { port, busid: target };
      throw new ControlError("unknown-device", `bus id ${target} is not bound`);
    }
    const spec = this.spec(target);
    const d = usbip.devices.find((x) => sameDevice(spec, x.spec, []));
    if (d !== undefined) return { port: d.port, busid: d.busid };
    const w = this.options.hotplug?.state.find(
      (x) => spec.kind === "host" && JSON.stringify(x.selector) === JSON.stringify(selectorFromSpec(spec)),
    );
    if (w !== undefined) return { port: w.port, busid: `1-${w.port}` };
    throw new ControlError("unknown-device", `${target} is not bound`);
  }

  private async unbind(target: string, persist: boolean): Promise<unknown> {
    const { port, busid } = this.portOf(target);
    const reason = "unbound by usbvirt ctl";
    const wanted = this.options.hotplug?.state.some((w) => w.port === port) === true;
    if (wanted) await this.options.hotplug!.removeWant(port, reason);
    else await this.usbip("unbind").withdraw(busid, reason);
    this.imports.delete(busid);
    this.spare.push(port);
    this.spare.sort((a, b) => a - b);
    const runtime = this.runtimeBinds.get(port);
    this.runtimeBinds.delete(port);
    this.counters.unbinds++;
    this.log.info(`control: unbound ${busid}`, { busid });
    if (persist) {
      const i = runtime !== undefined ? this.state.bound.findIndex((b) => b.busid === busid) : -1;
      if (i >= 0) this.state.bound.splice(i, 1);
      else this.state.unbound.push(busid); // a device of the config: its bus id is the same at every start
      this.save();
    }
    return { busid, state: "available" };
  }

  private async detach(busid: string): Promise<unknown> {
    const usbip = this.usbip("detach");
    if (!usbip.devices.some((d) => d.busid === busid))
      throw new ControlError("unknown-device", `bus id ${busid} is not bound`);
    const client = this.imports.get(busid)?.client;
    if (!(await usbip.detachClient(busid, "detached by usbvirt ctl"))) {
      throw new ControlError("failed", `bus id ${busid} has no importer to detach`);
    }
    this.imports.delete(busid);
    this.counters.detaches++;
    return { busid, detached: client ?? "its importer" };
  }

  private async assign(selector: string, to: string, persist: boolean): Promise<unknown> {
    const target = parseTarget(to);
    if (target === null)
      throw new ControlError("bad-request", `--to must be qemu:HOST:PORT or unix:PATH, not ${to}`);
    const spec = this.spec(selector);
    const rows = await this.rows();
    claimDevice(selector, spec, this.holdings(), rows);
    if (spec.kind === "host") {
      const plugged = rows.find(
        (r) => !r.portPath.startsWith("usb") && matchesSelector(r, selectorFromSpec(spec)),
      );
      if (plugged === undefined)
        throw new ControlError("unknown-device", `${selector}: no such host device is plugged in`);
      const verdict = judge(this.options.filter, plugged);
      if (!verdict.allowed)
        throw new ControlError("denied", `${selector} is denied by the filter: ${verdict.why}`);
    }
    const start = this.options.startAssignment ?? startRedirect;
    let server: Assignment["server"];
    try {
      server = await start(spec, target, this.log);
    } catch (err) {
      throw new ControlError("failed", `cannot assign ${selector}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.assignments.push({ selector, spec, target, since: new Date(), server });
    this.counters.assigns++;
    this.log.info(`control: assigned ${selector} to ${formatTarget(target)}`);
    if (persist) {
      this.state.assigned.push({ device: selector, to: formatTarget(target) });
      this.save();
    }
    return { device: selector, vm: formatTarget(target), state: "assigned" };
  }

  private async release(selector: string, persist: boolean): Promise<unknown> {
    const spec = this.spec(selector);
    const a = this.assignments.find((x) => x.selector === selector || sameDevice(spec, x.spec, []));
    if (a === undefined) throw new ControlError("unknown-device", `${selector} is not assigned`);
    this.assignments.splice(this.assignments.indexOf(a), 1);
    await a.server.close();
    this.counters.releases++;
    this.log.info(`control: released ${a.selector} from ${formatTarget(a.target)}`);
    if (persist) {
      const i = this.state.assigned.findIndex((x) => x.device === a.selector);
      if (i >= 0) this.state.assigned.splice(i, 1);
      this.save();
    }
    return { device: a.selector, state: "available" };
  }

  private save(): void {
    try {
      this.options.store?.save(this.state);
    } catch (err) {
      this.log.error(
        `control: cannot save the state to ${this.options.store?.file}: ${(err as Error).message}`,
      );
    }
  }

  // ---------------------------------------------------------------- list

  async list(): Promise<ListResult> {
    let rows: readonly HostRow[] = [];
    let hostListError: string | undefined;
    try {
      rows = await this.options.listHost();
    } catch (err) {
      hostListError = (err as Error).message;
    }
    const usbip = this.options.usbip;
    const exported = usbip?.devices ?? [];
    const stats = usbip?.stats();
    const failed = new Map((stats?.failed ?? []).map((f) => [f.busid, f.reason]));
    const out: DeviceRow[] = [];
    const exportRow = (
      kind: "host" | "emulated",
      device: string,
      description: string,
      busid: string,
    ): DeviceRow => {
      const why = failed.get(busid);
      if (why !== undefined) return { kind, device, description, state: "failed", busid, why };
      const imp = this.imports.get(busid);
      if (imp !== undefined) {
        return {
          kind,
          device,
          description,
          state: "imported",
          busid,
          client: imp.client,
          since: imp.since.toISOString(),
        };
      }
      return { kind, device, description, state: "bound", busid };
    };
    const assignRow = (
      kind: "host" | "emulated",
      device: string,
      description: string,
      a: Assignment,
    ): DeviceRow => ({
      kind,
      device,
      description,
      state: "assigned",
      vm: formatTarget(a.target),
      since: a.since.toISOString(),
    });
    for (const r of rows) {
      if (r.portPath.startsWith("usb")) continue; // root hubs are never exported
      const description = `${hex4(r.vendorId)}:${hex4(r.productId)}${r.product !== undefined ? ` ${r.product}` : ""}`;
      const spec: DeviceSpec = { kind: "host", busPort: r.portPath };
      const ex = exported.find((d) => sameDevice(spec, d.spec, rows));
      const a = this.assignments.find((x) => sameDevice(spec, x.spec, rows));
      const fixed = this.options.fixed?.find((h) => sameDevice(spec, h.spec, rows));
      const held = claimedBy(r);
      if (ex !== undefined) out.push(exportRow("host", r.portPath, description, ex.busid));
      else if (a !== undefined) out.push(assignRow("host", r.portPath, description, a));
      else if (fixed !== undefined)
        out.push({ kind: "host", device: r.portPath, description, state: "assigned", vm: fixed.holder });
      else if (held !== null) {
        out.push({
          kind: "host",
          device: r.portPath,
          description,
          state: "in-use",
          why: `held by ${held}`,
        });
      } else {
        const verdict = judge(this.options.filter, r);
        out.push(
          verdict.allowed
            ? { kind: "host", device: r.portPath, description, state: "available" }
            : { kind: "host", device: r.portPath, description, state: "denied", why: verdict.why },
        );
      }
    }
    for (const w of this.options.hotplug?.state ?? []) {
      if (w.current !== null || w.transient) continue;
      out.push({
        kind: "host",
        device: formatSelector(w.selector),
        description: "not plugged in",
        state: "waiting",
        busid: `1-${w.port}`,
      });
    }
    for (const e of EMULATED_DEVICES) {
      const spec: DeviceSpec = { kind: "emulated", name: e.name };
      const exports = exported.filter((d) => sameDevice(spec, d.spec, []));
      const a = this.assignments.find((x) => sameDevice(spec, x.spec, []));
      const fixed = this.options.fixed?.find((h) => sameDevice(spec, h.spec, []));
      const description = `emulated ${e.name}`;
      for (const d of exports) out.push(exportRow("emulated", e.name, description, d.busid));
      if (a !== undefined) out.push(assignRow("emulated", e.name, description, a));
      if (fixed !== undefined)
        out.push({ kind: "emulated", device: e.name, description, state: "assigned", vm: fixed.holder });
      if (exports.length === 0 && a === undefined && fixed === undefined) {
        out.push({ kind: "emulated", device: e.name, description, state: "available" });
      }
    }
    return hostListError !== undefined ? { devices: out, hostListError } : { devices: out };
  }

  /** Each device's state as `list` says it, without a new libusb listing (the status page). */
  assignmentsView(): readonly { device: string; vm: string; since: string; description: string }[] {
    return this.assignments.map((a) => ({
      device: a.selector,
      vm: formatTarget(a.target),
      since: a.since.toISOString(),
      description: describeSpec(a.spec),
    }));
  }
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

async function startRedirect(
  spec: DeviceSpec,
  target: AssignTarget,
  log: FaceLogger,
): Promise<Assignment["server"]> {
  return await UsbredirServer.start({
    device: spec,
    connect: target.kind === "tcp" ? { host: target.host, port: target.port } : { path: target.path },
    logger: log,
  });
}
