/** Shared set-up of the end-to-end tests: a connection, its guest driver, and clean-up. */
import { Connection, type ConnectionOptions } from "../../src/engine/connection.js";
import type { VirtualHostController } from "../../src/frontend/index.js";
import { GuestUsbDriver } from "../../src/guest/guest-driver.js";

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
