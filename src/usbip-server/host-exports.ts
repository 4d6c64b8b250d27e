/**
 * `usbvirt serve` keeps its host exports alive through hotplug (issue #14, item 1). It watches libusb's
 * attach / detach events and the server's own `device-failed`, and keeps the exported set true to what is
 * plugged in:
 *
 * - A wanted device (a host `--device` selector: VID:PID, BUS-PORT or serial=S) owns one port, so one bus
 *   id (1-PORT), from the start. Not plugged in: serve starts anyway, the bus id is not listed, and the
 *   device is exported when one that matches the selector and passes the filter appears (logged).
 * - Unplugged (libusb's detach, or the port worker seeing the device go, whichever first — once): the bus
 *   id leaves the device list at once, its importer's connection is closed (vhci reports the device gone;
 *   `usbvirt attach` reconnects), and the port waits. A device that matches again (by vid:pid anywhere,
 *   by path whatever is plugged there — so a device that re-enumerates with a new id is followed — by
 *   serial that device anywhere) is exported again on the same port, under the same bus id.
 * - A device that failed without going away is withdrawn and exported again after a backoff (three tries).
 * - `matchNew`: every newly plugged device that passes the filter and that no selector wants is exported
 *   on a free port; unplugged, its port is free again.
 * Every decision is logged. Events are applied one at a time, in the order they came.
 */

import { listHostDevices } from "../devices/host/enumerate.js";
import type { DeviceFilter, FilterableDevice } from "../devices/host/filter.js";
import { judge } from "../devices/host/filter.js";
import { HostHotplugWatcher } from "../devices/host/hotplug.js";
import { formatSelector, type HostSelector, matchesSelector } from "../devices/host/select.js";
import type { HostDeviceSpec } from "../devices/spec.js";
import { backoffDelay } from "../engine/reconnect.js";
import type { FaceLogger } from "../network-face/log.js";
import type { UsbipServer } from "./server.js";

/** A host device as the hotplug source describes it (HostDeviceInfo). */
export interface PluggedDevice extends FilterableDevice {
  readonly vendorId: number;
  readonly productId: number;
  readonly portPath: string;
  readonly serial?: string;
}

export interface HotplugSource {
  /** Start delivering events; returns the stop function. */
  watch(listener: (type: "attach" | "detach", device: PluggedDevice) => void): () => void;
  /** What is plugged in now. */
  list(): Promise<readonly PluggedDevice[]>;
}

export interface Want {
  readonly selector: HostSelector;
  readonly port: number;
  /** Exported now: its bus id and the path of the device behind it (path unknown: null). */
  current: { busid: string; path: string | null } | null;
  /** Made by matchNew for one device: its port is freed when the device goes. */
  readonly transient: boolean;
  /** The port path of the device it exported last (set when that device was withdrawn). */
  lastPath?: string;
}

export interface HostExportsOptions {
  readonly server: UsbipServer;
  /** Each host selector of the command line and the port it owns; `path` when it is exported already. */
  readonly wants: readonly { selector: HostSelector; port: number; exportedPath?: string | null }[];
  readonly filter: DeviceFilter;
  readonly matchNew: boolean;
  /** Ports matchNew may use (those no want owns). */
  readonly freePorts: readonly number[];
  readonly log: FaceLogger;
  readonly source: HotplugSource;
  /** First retry delay of a failed (not gone) device (default 1000 ms). */
  readonly retryMs?: number;
}

const RETRIES = 3;

function hex4(n: number): string {
  return n.toString(16).padStart(4, "0");
}

function describe(d: PluggedDevice): string {
  return `${hex4(d.vendorId)}:${hex4(d.productId)} at ${d.portPath}${d.serial !== undefined ? ` serial=${d.serial}` : ""}`;
}

export class HostExports {
  private readonly wants: Want[];
  private readonly freePorts: number[];
  private queue: Promise<void> = Promise.resolve();
  private stopWatching: (() => void) | null = null;
  private stopped = false;
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Per port path, the number of the last hotplug event for it: an attach that is not the last is stale. */
  private readonly latest = new Map<string, number>();
  private events = 0;
  private readonly onFailed = (busid: string, reason: string, gone: boolean): void => {
    this.enqueue(() => this.failed(busid, reason, gone));
  };

  constructor(private readonly options: HostExportsOptions) {
    this.wants = options.wants.map((w) => ({
      selector: w.selector,
      port: w.port,
      current: w.exportedPath !== undefined ? { busid: `1-${w.port}`, path: w.exportedPath } : null,
      transient: false,
    }));
    this.freePorts = [...options.freePorts];
  }

  /** The wants and what each exports now (tests, status). */
  get state(): readonly Readonly<Want>[] {
    return this.wants;
  }

  /** Start watching; then export whatever wanted device is plugged in already but not exported. */
  async start(): Promise<void> {
    this.options.server.on("device-failed", this.onFailed);
    this.stopWatching = this.options.source.watch((type, d) => {
      const n = ++this.events;
      this.latest.set(d.portPath, n);
      this.enqueue(async () => {
        if (type === "detach") return await this.unplugged(d);
        // Unplugged again before its turn came (a hotplug storm): its detach follows; exporting it is wasted.
        if (this.latest.get(d.portPath) !== n) {
          this.options.log.info(
            `host device ${describe(d)} plugged in and out again before it could be exported`,
          );
          return;
        }
        await this.plugged(d, "plugged in");
      });
    });
    for (const w of this.wants) {
      if (w.current === null) {
        this.options.log.info(`waiting for host device ${formatSelector(w.selector)} (bus id 1-${w.port})`);
      }
    }
    // A wanted device plugged in between serve's listing and the watch: look once more (--match-new is
    // for devices plugged in from now on, not for what was there at start).
    const now = await this.options.source.list();
    for (const d of now) this.enqueue(() => this.plugged(d, "found", false));
    await this.queue;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopWatching?.();
    this.stopWatching = null;
    this.options.server.off("device-failed", this.onFailed);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await this.queue;
  }

  /** Resolves once every event so far has been applied (tests). */
  settled(): Promise<void> {
    return this.queue;
  }

  private enqueue(step: () => Promise<void>): void {
    this.queue = this.queue.then(async () => {
      if (this.stopped) return;
      try {
        await step();
      } catch (err) {
        this.options.log.error(`host hotplug: ${err instanceof Error ? err.message : String(err)}`);
      }
    });
  }

  private async plugged(d: PluggedDevice, how: string, isNew = true): Promise<void> {
    if (d.portPath.startsWith("usb")) return; // a root hub
    if (this.wants.some((w) => w.current !== null && w.current.path === d.portPath)) return; // exported already
    const want = this.wants.find((w) => w.current === null && matchesSelector(d, w.selector));
    if (want === undefined && !(this.options.matchNew && isNew)) {
      // Where a selector's device just was, another id: a re-enumeration (DFU, bootloader) most likely.
      const was = this.wants.find((w) => w.current === null && w.lastPath === d.portPath);
      if (was !== undefined) {
        const sel = formatSelector(was.selector);
        this.options.log.info(
          `host device ${describe(d)} ${how} where ${sel} (1-${was.port}) was: not exported, ${sel} does not match it (select by port path, --device ${d.portPath}, to follow a device that re-enumerates with another id)`,
        );
      }
      return;
    }
    const verdict = judge(this.options.filter, d);
    if (!verdict.allowed) {
      const what = want !== undefined ? ` (wanted as ${formatSelector(want.selector)})` : "";
      this.options.log.warn(
        `host device ${describe(d)}${what} ${how}, but the filter denies it: ${verdict.why}`,
      );
      return;
    }
    let target = want;
    if (target === undefined) {
      const port = this.freePorts.shift();
      if (port === undefined) {
        this.options.log.warn(`host device ${describe(d)} ${how}: no free port left to export it`);
        return;
      }
      target = { selector: { busPort: d.portPath }, port, current: null, transient: true };
      this.wants.push(target);
    }
    await this.export(target, d, how);
  }

  private async export(want: Want, d: PluggedDevice, how: string): Promise<void> {
    const spec: HostDeviceSpec = { kind: "host", busPort: d.portPath };
    try {
      const info = await this.options.server.exportDevice(spec, want.port);
      want.current = { busid: info.busid, path: d.portPath };
      this.options.log.info(`host device ${describe(d)} ${how}: exported as ${info.busid}`, {
        busid: info.busid,
      });
    } catch (err) {
      this.options.log.warn(
        `host device ${describe(d)} ${how}: could not export it as 1-${want.port}: ${err instanceof Error ? err.message : String(err)}`,
      );
      this.release(want);
    }
  }

  private async unplugged(d: PluggedDevice): Promise<void> {
    const want = this.wants.find((w) => w.current !== null && w.current.path === d.portPath);
    if (want === undefined) return;
    await this.withdraw(want, `host device ${describe(d)} unplugged`);
  }

  private async withdraw(want: Want, reason: string): Promise<void> {
    const busid = want.current!.busid;
    if (want.current!.path !== null) want.lastPath = want.current!.path;
    want.current = null;
    await this.options.server.withdraw(busid, reason);
    this.release(want);
    this.options.log.info(
      want.transient
        ? `${busid} is free again`
        : `waiting for host device ${formatSelector(want.selector)} to come back as ${busid}`,
      { busid },
    );
  }

  /** A transient want's port goes back to the free list when it exports nothing. */
  private release(want: Want): void {
    if (!want.transient || want.current !== null) return;
    const i = this.wants.indexOf(want);
    if (i >= 0) this.wants.splice(i, 1);
    this.freePorts.push(want.port);
    this.freePorts.sort((a, b) => a - b);
  }

  private async failed(busid: string, reason: string, gone: boolean): Promise<void> {
    const want = this.wants.find((w) => w.current?.busid === busid);
    if (want === undefined) return;
    const path = want.current!.path;
    await this.withdraw(want, gone ? `the device went away (${reason})` : `the device failed (${reason})`);
    if (gone || path === null) return; // it comes back through the attach event
    // Failed without going away: try again, with a backoff, while it is still plugged in.
    if (want.transient) this.retryTransient(path, 1);
    else this.retry(want, path, 1);
  }

  private retry(want: Want, path: string, attempt: number): void {
    this.later(attempt, async () => {
      if (want.current !== null) return;
      const d = (await this.options.source.list()).find(
        (x) => x.portPath === path && matchesSelector(x, want.selector),
      );
      if (d === undefined) return;
      await this.export(want, d, `retry ${attempt} after a failure`);
      if (want.current === null && attempt < RETRIES) this.retry(want, path, attempt + 1);
    });
  }

  private retryTransient(path: string, attempt: number): void {
    this.later(attempt, async () => {
      const d = (await this.options.source.list()).find((x) => x.portPath === path);
      if (d === undefined) return;
      await this.plugged(d, `retry ${attempt} after a failure`);
      const back = this.wants.some((w) => w.current?.path === path);
      if (!back && attempt < RETRIES) this.retryTransient(path, attempt + 1);
    });
  }

  private later(attempt: number, step: () => Promise<void>): void {
    const delay = backoffDelay(attempt, this.options.retryMs ?? 1000, 30_000);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.enqueue(step);
    }, delay);
    this.timers.add(timer);
  }
}

/** libusb's hotplug events and listing (strings read when `strings`: serial selectors need them). */
export function libusbHotplugSource(strings: boolean): HotplugSource {
  return {
    watch(listener) {
      const watcher = new HostHotplugWatcher((e) => listener(e.type, e.device), {}, { strings });
      watcher.start();
      return () => watcher.stop();
    },
    list: () => listHostDevices({ strings }),
  };
}
