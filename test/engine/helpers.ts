/** Shared set-up of the end-to-end tests: a connection, its guest driver, and clean-up. */
import { Connection, type ConnectionOptions } from "../../src/engine/connection.js";
import type { VirtualHostController } from "../../src/frontend/index.js";
import { GuestUsbDriver } from "../../src/guest/guest-driver.js";
import type { DevAddr, PortNum } from "../../src/urb/types.js";

export interface Rig {
  readonly conn: Connection;
  readonly hcd: VirtualHostController;
  readonly guest: GuestUsbDriver;
  close(): Promise<void>;
}

export async function rig(options: ConnectionOptions = {}): Promise<Rig> {
  const conn = await Connection.create({ ports: 4, memory: 4096, ...options });
  const hcd = conn.frontend!;
  const guest = new GuestUsbDriver(hcd, conn.handles);
  return { conn, hcd, guest, close: () => conn.close() };
}

export const port = (n: number) => n as PortNum;
export const addr = (n: number) => n as DevAddr;

/** Resolve when `check` holds, polling; reject after `ms`. */
export async function eventually(check: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Deterministic bytes for payload checks. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
