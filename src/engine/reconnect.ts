/**
 * Reconnecting a USB/IP-imported device after its link was lost (the
 * client-side half of "survive the network", issue #14): when a port whose
 * device is `kind: "usbip"` fails because the device went away (keepalive
 * timeout, read error, server closed — the port-failed `gone` path, so the
 * guest has already seen the disconnect and every URB in flight has
 * completed with -ESHUTDOWN), the connection calls `lost`, and this module
 * attaches the same spec again (connect, re-import of the same bus id,
 * descriptors; a spec that selects its device is found on the network again
 * first, so it follows the device to whichever server announces it now)
 * after an exponential backoff with jitter:
 *
 *   delay(n) = min(retryMaxMs, retryMinMs · 2^(n-1)) · (0.5 + 0.5 · random)
 *
 * ("equal jitter": never less than half the step, so a fleet of clients that
 * lost one server does not come back in lock step, and never more than the
 * cap). Attempts are unbounded unless the spec sets `retryAttempts`. Every
 * transition is logged through the connection's 'log' event and reported as
 * 'port-reconnecting' / 'port-reconnected' / 'port-reconnect-failed'. A
 * detach, a new attach on the port or closing the connection cancels it.
 */
import type { DeviceSummary } from "../backend/port-link.js";
import {
  type DeviceSpec,
  describeSpec,
  type UsbipDeviceSpec,
  type UsbipSelectorSpec,
} from "../devices/spec.js";

export const DEFAULT_RETRY_MIN_MS = 500;
export const DEFAULT_RETRY_MAX_MS = 30_000;

/** The delay before attempt `attempt` (1-based): exponential, capped, with equal jitter; `random` in [0, 1). */
export function backoffDelay(
  attempt: number,
  minMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(attempt, 1) - 1, 30);
  const step = Math.min(maxMs, minMs * 2 ** exponent);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.max(1, Math.round(step * (0.5 + 0.5 * r)));
}

/** True when a lost device of this spec is to be reconnected. */
export function reconnects(spec: DeviceSpec): spec is UsbipDeviceSpec | UsbipSelectorSpec {
  return spec.kind === "usbip" && spec.reconnect !== false;
}

/** What the reconnector needs from its connection. */
export interface ReconnectHost {
  /** Attach without cancelling this reconnect (Connection's own attach path). */
  attach(port: number, spec: DeviceSpec): Promise<DeviceSummary>;
  /** Take off a device whose reconnect finished after it was cancelled. */
  detach(port: number): Promise<void>;
  log(line: string): void;
  reconnecting(port: number, attempt: number, delayMs: number, reason: string): void;
  reconnected(port: number, summary: DeviceSummary, attempts: number): void;
  gaveUp(port: number, reason: string): void;
}

interface Retry {
  timer: NodeJS.Timeout | null;
  cancelled: boolean;
}

function secondsText(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export class PortReconnector {
  private readonly retries = new Map<number, Retry>();

  constructor(
    private readonly host: ReconnectHost,
    private readonly random: () => number = Math.random,
  ) {}

  /** Ports with a reconnect under way. */
  get pending(): readonly number[] {
    return [...this.retries.keys()];
  }

  /** The device on `port` went away: start reconnecting it. */
  lost(port: number, spec: UsbipDeviceSpec | UsbipSelectorSpec, reason: string): void {
    this.cancel(port);
    const retry: Retry = { timer: null, cancelled: false };
    this.retries.set(port, retry);
    // The engine words a vanished device "device gone: …" (backend-host.ts); the reason after it is the link's.
    this.host.log(
      `port ${port}: ${describeSpec(spec)} lost (${reason.replace(/^device gone: /, "")}); reconnecting`,
    );
    this.schedule(port, spec, retry, 1, reason);
  }

  private schedule(
    port: number,
    spec: UsbipDeviceSpec | UsbipSelectorSpec,
    retry: Retry,
    attempt: number,
    reason: string,
  ): void {
    const limit = spec.retryAttempts;
    if (limit !== undefined && attempt > limit) {
      this.retries.delete(port);
      const why = `gave up reconnecting ${describeSpec(spec)} after ${limit} attempt${limit === 1 ? "" : "s"} (last: ${reason})`;
      this.host.log(`port ${port}: ${why}`);
      this.host.gaveUp(port, why);
      return;
    }
    const delay = backoffDelay(
      attempt,
      spec.retryMinMs ?? DEFAULT_RETRY_MIN_MS,
      spec.retryMaxMs ?? DEFAULT_RETRY_MAX_MS,
      this.random,
    );
    this.host.log(`port ${port}: reconnect attempt ${attempt} in ${secondsText(delay)}`);
    this.host.reconnecting(port, attempt, delay, reason);
    retry.timer = setTimeout(() => {
      retry.timer = null;
      void this.host.attach(port, spec).then(
        (summary) => {
          if (retry.cancelled) {
            // Detached (or the connection closed) while this attempt was under way: undo it.
            void this.host.detach(port).catch(() => undefined);
            return;
          }
          this.retries.delete(port);
          this.host.log(
            `port ${port}: ${describeSpec(spec)} reconnected (attempt ${attempt}): ${summary.name}`,
          );
          this.host.reconnected(port, summary, attempt);
        },
        (err: unknown) => {
          if (retry.cancelled) return;
          const why = err instanceof Error ? err.message : String(err);
          this.host.log(`port ${port}: reconnect attempt ${attempt} failed: ${why}`);
          this.schedule(port, spec, retry, attempt + 1, why);
        },
      );
    }, delay);
  }

  /** Stop reconnecting `port` (detach, a new attach); true when one was under way. */
  cancel(port: number): boolean {
    const retry = this.retries.get(port);
    if (retry === undefined) return false;
    retry.cancelled = true;
    if (retry.timer !== null) clearTimeout(retry.timer);
    this.retries.delete(port);
    return true;
  }

  cancelAll(): void {
    for (const port of [...this.retries.keys()]) this.cancel(port);
  }
}
