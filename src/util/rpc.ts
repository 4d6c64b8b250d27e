/**
 * The control plane's RPC (comlink over worker MessagePorts): attach,
 * detach, stats, device commands. Never used on the data plane.
 *
 * This is the only module that imports comlink (test/util/rpc-only.test.ts
 * checks it), and loading it replaces comlink's "throw" transfer handler with
 * one that keeps an error's class, `code`, fields and `cause` chain
 * (src/util/error-wire.ts): every thread that serves or calls an api through
 * here throws and receives the same error classes, without anyone having to
 * remember to install anything.
 */
import type { MessagePort, Worker } from "node:worker_threads";
import * as Comlink from "comlink/dist/esm/comlink.mjs";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { deserializeError, type SerializedValue, serializeError } from "./error-wire.js";

export type Remote<T> = Comlink.Remote<T>;

const original = Comlink.transferHandlers.get("throw");
if (original === undefined) throw new Error("comlink has no 'throw' transfer handler to replace");

/** comlink's throw handler with our wire format; `canHandle` stays comlink's (it knows its marker). */
export const errorTransferHandler: Comlink.TransferHandler<{ value: unknown }, SerializedValue> = {
  canHandle: (value: unknown): value is { value: unknown } => original.canHandle(value),
  serialize: ({ value }) => [serializeError(value), []],
  deserialize: (wire) => {
    throw deserializeError(wire);
  },
};
Comlink.transferHandlers.set("throw", errorTransferHandler);

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
