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
 * - A device that failed without going away is withdrawn and tried again while it stays plugged in: 1, 2
 *   and 4 s after the failure (three tries, each logged). A device that fails again within a minute of a
 *   try bringing it back counts on (a port worker that dies whenever the device is used is tried three
 *   times in all, not forever); after the third failed try serve gives up, logged, until it is plugged in
 *   again. Unplugged meanwhile, its retries end (logged): a plug-in starts afresh.
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
  /** First retry delay of a failed (not gone) device (default 1000 ms); each next try waits twice as long. */
  readonly retryMs?: number;
}

const RETRIES = 3;
/** A device that fails again within this long of a try bringing it back counts on from that try. */
const STABLE_MS = 60_000;

/** The retries of a device that failed while plugged in, kept by its port path. */
interface Retries {
  /** The try due next, or the last one made once it brought the device back (1..RETRIES). */
  attempt: number;
  /** The want to export it on (a --match-new device: null, it takes a free port). */
  readonly want: Want | null;
  /** The device as it was when it failed (for the log). */
  readonly device: string;
  /** The pending try (null once it fired). */
  timer: NodeJS.Timeout | null;
  /** When the last try brought it back (Date.now()); null while a try is due. */
  backAt: number | null;
}

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
  private readonly retries = new Map<string, Retries>();
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

  /**
   * Want `selector` on `port` from now on (a runtime bind): exported at once when a device that matches
   * and passes the filter is plugged in, else when one appears. Resolves when that was decided.
   */
  async addWant(selector: HostSelector, port: number): Promise<Readonly<Want>> {
    if (this.wants.some((w) => w.port === port)) throw new Error(`port ${port} is already wanted`);
    const want: Want = { selector, port, current: null, transient: false };
    this.wants.push(want);
    this.enqueue(async () => {
      const now = await this.options.source.list();
      const d = now.find((x) => !x.portPath.startsWith("usb") && matchesSelector(x, selector));
      if (d !== undefined && !this.wants.some((w) => w.current?.path === d.portPath)) {
        await this.plugged(d, "bound");
      } else {
        this.options.log.info(`waiting for host device ${formatSelector(selector)} (bus id 1-${port})`);
      }
    });
    await this.queue; // this step's turn, done (or skipped: stopped)
    return want;
  }

  /** Want nothing on `port` any more (a runtime unbind): its device, if exported, is withdrawn. */
  async removeWant(port: number, reason: string): Promise<boolean> {
    const want = this.wants.find((w) => w.port === port);
    if (want === undefined) return false;
    this.enqueue(async () => {
      const i = this.wants.indexOf(want);
      if (i >= 0) this.wants.splice(i, 1);
      const current = want.current;
      want.current = null;
      if (current !== null) await this.options.server.withdraw(current.busid, reason);
    });
    await this.queue;
    return true;
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
    for (const r of this.retries.values()) if (r.timer !== null) clearTimeout(r.timer);
    this.retries.clear();
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
    const pending = this.retries.get(d.portPath);
    if (pending !== undefined) {
      this.retries.delete(d.portPath);
      if (pending.timer !== null) clearTimeout(pending.timer);
      if (pending.backAt === null) {
        this.options.log.info(
          `host device ${describe(d)} unplugged: retry ${pending.attempt} of ${RETRIES} after a failure cancelled`,
        );
      }
    }
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
    const device = this.deviceAt(want, path);
    await this.withdraw(want, gone ? `the device went away (${reason})` : `the device failed (${reason})`);
    if (path === null) return;
    const before = this.retries.get(path);
    this.retries.delete(path);
    if (gone) return; // it comes back through the attach event
    // Failed without going away: try again while it is still plugged in. Soon after a try brought it
    // back, this failure continues that try's count.
    const recent = before?.backAt != null && Date.now() - before.backAt < STABLE_MS;
    const attempt = recent ? before!.attempt + 1 : 1;
    if (attempt > RETRIES) {
      this.options.log.warn(
        `host device ${device} failed again within ${STABLE_MS / 1000} s of retry ${before!.attempt} bringing it back; no more tries until it is plugged in again`,
        { busid },
      );
      return;
    }
    this.schedule(path, { attempt, want: want.transient ? null : want, device, timer: null, backAt: null });
  }

  /** How the log names the device a want exports: from the last listing, else by its selector and path. */
  private deviceAt(want: Want, path: string | null): string {
    const s = want.selector;
    if (s.vendorId !== undefined && s.productId !== undefined && path !== null) {
      return describe({ vendorId: s.vendorId, productId: s.productId, deviceClass: 0, portPath: path });
    }
    return path === null ? formatSelector(s) : `${formatSelector(s)} at ${path}`;
  }

  private schedule(path: string, r: Retries): void {
    const delay = (this.options.retryMs ?? 1000) * 2 ** (r.attempt - 1);
    r.backAt = null;
    r.timer = setTimeout(() => {
      r.timer = null;
      this.enqueue(() => this.retry(path, r));
    }, delay);
    this.retries.set(path, r);
  }

  private async retry(path: string, r: Retries): Promise<void> {
    if (this.retries.get(path) !== r) return; // unplugged meanwhile
    if (r.want !== null && r.want.current !== null) {
      this.retries.delete(path); // exported again another way (plugged in anew)
      return;
    }
    const how = `retry ${r.attempt} of ${RETRIES} after a failure`;
    const d = (await this.options.source.list()).find(
      (x) => x.portPath === path && (r.want === null || matchesSelector(x, r.want.selector)),
    );
    if (d === undefined) {
      this.retries.delete(path);
      this.options.log.info(`host device ${r.device} ${how}: not plugged in any more; no more tries`);
      return;
    }
    if (r.want !== null) await this.export(r.want, d, how);
    else await this.plugged(d, how);
    if (this.wants.some((w) => w.current?.path === path)) {
      r.backAt = Date.now();
      return;
    }
    if (r.attempt < RETRIES) {
      r.attempt++;
      this.schedule(path, r);
      return;
    }
    this.retries.delete(path);
    this.options.log.warn(
      `host device ${describe(d)}: ${RETRIES} tries after a failure failed; no more tries until it is plugged in again`,
    );
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
