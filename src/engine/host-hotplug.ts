/**
 * Host hotplug for a Connection (the manager side of "attach a host device by
 * vid:pid, bus-port path or serial; detach; hotplug"): watches libusb's
 * attach / detach events, puts every host device that passes the filter on a
 * free port of the connection, and takes it off again when it is unplugged.
 * The filter is serve's (src/devices/host/filter.ts: usbredir-style rules on
 * class, ids, bcdDevice, serial and path, first match wins, hubs denied unless
 * a rule names class 9), given as `{ rules }` (e.g. from parseRules); the older
 * `{ allow, deny }` selector lists still work and mean what they meant (deny
 * wins; no allow list = every device not denied). A device the filter refuses
 * by a rule (or as a hub) is logged with the rule that refused it. Whichever comes first — libusb's detach event or the port
 * worker seeing the unplug (the connection's 'port-failed') — reports the
 * detach, exactly once; when the device comes back it is attached again.
 *
 * Events: 'attached' (port, HostDeviceInfo), 'detached' (port, HostDeviceInfo),
 * 'log' (message). Uses only Connection's public API.
 */
import { EventEmitter } from "node:events";
import { type DeviceFilter, type FilterRule, judge, needsSerial } from "../devices/host/filter.js";
import {
  type HostDeviceInfo,
  type HostFilter,
  HostHotplugWatcher,
  type HostSelector,
  type HotplugEvent,
  isEmptySelector,
  listHostDevices,
} from "../devices/host/index.js";
import type { DeviceSpec } from "../devices/spec.js";
import { UsbvirtError } from "../util/errors.js";
import type { Connection } from "./connection.js";

export interface HostHotplugOptions {
  /**
   * Which host devices to pass through: filter rules (`{ rules: parseRules("deny class=hid|allow *") }`),
   * or the older allow / deny selector lists (deny wins; no allow list = every device not denied).
   */
  readonly filter: DeviceFilter | HostFilter;
  /** Ports this helper may use (default: every port of the connection). */
  readonly ports?: readonly number[];
  /** Attach matching devices that are already plugged in when start() runs (default true). */
  readonly attachExisting?: boolean;
}

/**
 * The rules an allow / deny selector filter means: each deny, then each allow (so deny wins; with no allow
 * rule the default allows). An empty selector matches nothing, so it makes no rule, but an allow list of
 * empty selectors still allows nothing.
 */
export function rulesOf(filter: DeviceFilter | HostFilter): DeviceFilter {
  if ("rules" in filter) return filter;
  const rule = (action: FilterRule["action"], s: HostSelector): FilterRule => ({ action, ...s });
  const allow = filter.allow ?? [];
  const rules = [
    ...(filter.deny ?? []).filter((s) => !isEmptySelector(s)).map((s) => rule("deny", s)),
    ...allow.filter((s) => !isEmptySelector(s)).map((s) => rule("allow", s)),
  ];
  if (allow.length > 0 && !rules.some((r) => r.action === "allow")) rules.push({ action: "deny" });
  return { rules };
}

/** The code of a usbvirt error (it survives the backend's thread boundary, src/util/rpc.ts); else undefined. */
const codeOf = (err: unknown): string | undefined => (err instanceof UsbvirtError ? err.code : undefined);

export class HostHotplug extends EventEmitter {
  private readonly watcher: HostHotplugWatcher;
  /** Port path → port, for the devices this helper attached. */
  private readonly attached = new Map<string, { port: number; info: HostDeviceInfo }>();
  private readonly ports: readonly number[];
  private readonly filter: DeviceFilter;
  /** Serialises attach/detach so events are applied in the order they arrived. */
  private queue: Promise<void> = Promise.resolve();
  /**
   * The port lost its device before libusb's detach event arrived (the port
   * worker saw the unplug first, or crashed): report the detach now, once;
   * the later libusb event finds nothing left to do.
   */
  private readonly onPortFailed = (port: number, reason: string) => {
    for (const [path, a] of this.attached) {
      if (a.port !== port) continue;
      this.attached.delete(path);
      this.emit("log", `port ${port} (${path}) lost its device: ${reason}`);
      this.emit("detached", a.port, a.info);
    }
  };

  constructor(
    private readonly conn: Connection,
    private readonly options: HostHotplugOptions,
  ) {
    super();
    this.ports = options.ports ?? Array.from({ length: conn.handles.ports }, (_, i) => i + 1);
    this.filter = rulesOf(options.filter);
    // The watcher passes every event; the filter is judged here (it logs what it refuses).
    this.watcher = new HostHotplugWatcher((e) => this.enqueue(e), {}, { strings: needsSerial(this.filter) });
  }

  /** Ports in use by this helper, by port path. */
  get devices(): ReadonlyMap<string, { port: number; info: HostDeviceInfo }> {
    return this.attached;
  }

  /** Start watching; attach what is already there. Throws LibusbUnavailableError without libusb. */
  async start(): Promise<void> {
    this.conn.on("port-failed", this.onPortFailed);
    this.watcher.start();
    if (this.options.attachExisting === false) return;
    for (const info of await listHostDevices({ strings: needsSerial(this.filter) })) {
      this.enqueue({ type: "attach", device: info });
    }
    await this.queue;
  }

  /** Stop watching (attached devices stay attached). */
  async stop(): Promise<void> {
    this.watcher.stop();
    this.conn.off("port-failed", this.onPortFailed);
    await this.queue;
  }

  private enqueue(e: HotplugEvent): void {
    this.queue = this.queue
      .then(() => (e.type === "attach" ? this.attach(e.device) : this.detach(e.device)))
      .catch((err: unknown) => {
        this.emit("log", `hotplug ${e.type} of ${e.device.portPath}: ${String(err)}`);
      });
  }

  private async attach(info: HostDeviceInfo): Promise<void> {
    if (info.portPath.startsWith("usb") || this.attached.has(info.portPath)) return; // a root hub, or ours
    const verdict = judge(this.filter, info);
    if (!verdict.allowed) {
      // Said when a rule refused it; a device an allow list just does not name is not news.
      if (!verdict.why.startsWith("no allow rule matched"))
        this.emit("log", `host device ${info.portPath} is denied by the filter: ${verdict.why}`);
      return;
    }
    const used = new Set([...this.attached.values()].map((a) => a.port));
    const spec: DeviceSpec = {
      kind: "host",
      vendorId: info.vendorId,
      productId: info.productId,
      busPort: info.portPath,
    };
    for (const port of this.ports) {
      if (used.has(port) || this.conn.frontend?.portStatus(port).connected === true) continue;
      try {
        await this.conn.attach(port, spec);
      } catch (err) {
        // Taken since we looked (another attach won the race): try the next port.
        if (codeOf(err) === "ERR_USBVIRT_PORT_BUSY") continue;
        throw err;
      }
      this.attached.set(info.portPath, { port, info });
      this.emit("attached", port, info);
      return;
    }
    this.emit("log", `no free port for host device ${info.portPath}`);
  }

  private async detach(info: HostDeviceInfo): Promise<void> {
    const a = this.attached.get(info.portPath);
    if (a === undefined) return;
    this.attached.delete(info.portPath);
    try {
      await this.conn.detach(a.port);
    } catch (err) {
      // The port worker saw the unplug first and ended: the port is already empty.
      if (codeOf(err) !== "ERR_USBVIRT_PORT_EMPTY") throw err;
    }
    this.emit("detached", a.port, a.info);
  }
}
