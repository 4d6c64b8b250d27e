/**
 * The control plane's RPC (comlink over worker MessagePorts): attach,
 * detach, stats, device commands. Never used on the data plane.
 */
import type { MessagePort, Worker } from "node:worker_threads";
import * as Comlink from "comlink/dist/esm/comlink.mjs";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";

export type Remote<T> = Comlink.Remote<T>;

/** Serve `api` on a MessagePort (or a worker's parentPort). */
export function serve(api: object, port: MessagePort): void {
  Comlink.expose(api, nodeEndpoint(port));
}

/** A typed proxy to the api served at the other end of `port`. */
export function connect<T>(port: MessagePort | Worker): Comlink.Remote<T> {
  return Comlink.wrap<T>(nodeEndpoint(port));
}

/** Release a proxy's listener so the port can close. */
export function disconnect<T>(remote: Comlink.Remote<T>): void {
  remote[Comlink.releaseProxy]();
}
