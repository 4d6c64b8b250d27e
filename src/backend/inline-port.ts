/**
 * A port whose emulated device runs on the backend worker's own thread (as
 * QEMU runs its emulated USB devices beside the host controller). The port
 * ring stays between the backend and the PortService, so both placements
 * share one protocol and one transfer state machine, but nothing crosses a
 * thread: kick() runs the service at once, and the device's completions
 * (microtasks, timers on this event loop) are published by collect() or by
 * the service's own microtask, which rings the backend's doorbell.
 *
 * A device call that throws completes that transfer with -EPROTO (the
 * PortService catches it and logs it once); the port stays up. Anything else
 * that throws out of the service fails this port alone, reported after the
 * backend's poll has returned, never inside it.
 */

import type { UsbDevice } from "../devices/device.js";
import type { EmulatedDeviceSpec } from "../devices/spec.js";
import { createDevice } from "../port/create-device.js";
import { runDeviceCommand } from "../port/device-commands.js";
import { PortService, type PortStats } from "../port/port-service.js";
import { createPortIsoTable, PORT_RING_GEOMETRY } from "../port/port-wire.js";
import { Doorbell } from "../rings/doorbell.js";
import { createRingBuffer } from "../rings/layout.js";
import { registerErrorClass, UsbvirtError } from "../util/errors.js";
import { type PortCrash, type PortHost, type PortHostEvents, PortLink, PortStartError } from "./port-link.js";

/** An operation an inline (backend-thread) port cannot do. */
export type InlinePortCode = "ERR_USBVIRT_PORT_PLACEMENT";

/** An operation an inline (backend-thread) port cannot do. The class owns its codes: InlinePortCode lists every one. */
export class InlinePortError extends UsbvirtError {
  declare readonly code: InlinePortCode;
  constructor(code: InlinePortCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
registerErrorClass(InlinePortError);

export class InlinePort implements PortHost {
  readonly placement = "backend";
  private events: PortHostEvents | null = null;
  private broken = false;
  private retired = false;
  /** Fault injection: the port service's next run throws. */
  private crashNext = false;

  constructor(
    private readonly port: number,
    private readonly device: UsbDevice,
    private readonly service: PortService,
  ) {}

  kick(_notify: boolean): void {
    // Run whatever the ring says: nobody waits on its doorbell, the service runs right here.
    if (this.broken || this.retired) return;
    try {
      if (this.crashNext) {
        this.crashNext = false;
        throw new Error("port service crashed (fault injection)");
      }
      this.service.drain();
    } catch (err) {
      this.fail(`port service threw: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  collect(): void {
    if (!this.retired) this.service.publish();
  }

  private fail(reason: string): void {
    this.broken = true;
    // Reported once the backend's current poll is over: failing a port inside its drain is not safe.
    queueMicrotask(() => this.events?.failed(reason));
  }

  watch(events: PortHostEvents): void {
    this.events = events;
    this.device.onLog?.((line) => events.log?.(line));
    this.service.onLog((line) => events.log?.(line));
    this.device.onGone?.((reason) => {
      this.service.publish();
      events.gone(reason);
    });
  }

  async stats(): Promise<PortStats & { inFlight: number }> {
    return { ...this.service.stats, inFlight: this.service.inFlight };
  }

  command(method: string, args: unknown[]): Promise<unknown> {
    return runDeviceCommand(this.device, method, args);
  }

  async close(): Promise<void> {
    await this.device.close();
    // The completions the close produced go on the ring for the backend to collect.
    this.service.drain();
  }

  isHung(): boolean {
    return false; // it runs on the backend's own event loop: if that stalls, nothing is left to watch
  }

  async retire(): Promise<void> {
    if (this.retired) return;
    this.retired = true;
    await this.device.close().catch(() => undefined);
  }

  async kill(): Promise<void> {
    this.fail("port ended by the control plane");
  }

  async crash(how: PortCrash): Promise<void> {
    if (how === "exit") {
      throw new InlinePortError(
        "ERR_USBVIRT_PORT_PLACEMENT",
        `port ${this.port} runs on the backend thread; process.exit would end the backend (crash the backend, or attach with placement 'worker')`,
      );
    }
    this.crashNext = true; // thrown inside the next kick, which the backend's next publish makes
  }

  async freeze(): Promise<void> {
    throw new InlinePortError(
      "ERR_USBVIRT_PORT_PLACEMENT",
      `port ${this.port} runs on the backend thread; freezing it would freeze the backend (attach with placement 'worker' to test a stalled port)`,
    );
  }
}

export interface OpenInlineOptions {
  readonly port: number;
  readonly spec: EmulatedDeviceSpec;
  readonly memory: readonly SharedArrayBuffer[];
  readonly backendBell: SharedArrayBuffer;
}

/** Open an emulated device on this thread and give the backend its port. */
export async function openInlinePort(options: OpenInlineOptions): Promise<PortLink> {
  let device: UsbDevice;
  try {
    device = createDevice(options.spec);
    await device.open();
  } catch (err) {
    throw PortStartError.deviceOpen(options.port, err);
  }
  const ring = createRingBuffer(PORT_RING_GEOMETRY);
  const isoTable = createPortIsoTable();
  const service = new PortService({
    device,
    portRing: ring,
    isoTable,
    portBell: Doorbell.create(), // nobody waits on it: kick() runs the service directly
    backendBell: options.backendBell,
    memory: options.memory,
  });
  const summary = {
    name: device.info.name,
    speed: device.info.speed,
    deviceDescriptor: device.info.deviceDescriptor,
    placement: "backend" as const,
  };
  return new PortLink(options.port, summary, ring, new InlinePort(options.port, device, service), isoTable);
}
