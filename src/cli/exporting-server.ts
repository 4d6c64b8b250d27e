/**
 * What the metrics endpoint and the status page read of a server that hands devices to clients: the
 * USB/IP server (`serve`) and the usbredir server (`redirect`, through `redirectStatusView`) both give it.
 */
import type { Connection } from "../engine/connection.js";

/** One device the server offers. */
export interface ExportedDeviceView {
  readonly busid: string;
  /** Its root port on the server's engine connection. */
  readonly port: number;
  readonly name: string;
  readonly record: { readonly idVendor: number; readonly idProduct: number; readonly bDeviceClass?: number };
  /** The device's serial number string, when it has one. */
  readonly serial?: string;
}

export interface ExportingServerStats {
  /** Client connections open now. */
  readonly clients: number;
  /** Bus ids a client holds now. */
  readonly imported: readonly string[];
  /** Per held device: its client and the URBs it has in the engine. */
  readonly perDevice: readonly { readonly busid: string; readonly client: string; readonly urbs: number }[];
  readonly failed: readonly { readonly busid: string; readonly reason: string; readonly gone: boolean }[];
}

export type ExportEvent = "import" | "detach";
export type ExportListener = (busid: string, peer: string) => void;

export interface ExportingServer {
  readonly connection: Connection;
  readonly devices: readonly ExportedDeviceView[];
  stats(): ExportingServerStats;
  on(event: ExportEvent, listener: ExportListener): unknown;
  off(event: ExportEvent, listener: ExportListener): unknown;
}
