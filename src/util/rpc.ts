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
 *
 * A call whose answer can no longer come rejects with RpcClosedError: when the
 * proxy is released (disconnect) or the other end's port closes (its thread
 * ended). comlink itself forgets such calls, and their callers would wait
 * forever (a backend worker that exits while its control plane awaits it).
 */
import { MessagePort, type Worker } from "node:worker_threads";
import * as Comlink from "comlink/dist/esm/comlink.mjs";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { deserializeError, type SerializedValue, serializeError } from "./error-wire.js";
import { registerErrorClass, UsbvirtError } from "./errors.js";

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

/** A call that got no answer: its proxy was released, or the thread serving it ended, first. */
export class RpcClosedError extends UsbvirtError {
  declare readonly code: "ERR_USBVIRT_RPC_CLOSED";
  constructor(message: string) {
    super("ERR_USBVIRT_RPC_CLOSED", message);
  }
}
registerErrorClass(RpcClosedError);

/** Each proxy's way to fail the calls it still waits on (connect makes it, disconnect uses it). */
const closers = new WeakMap<object, (why: string) => void>();

/**
 * A typed proxy to the api served at the other end of `port` (or a worker's parentPort, through the Worker):
 * `remote.method(...args)` calls it. A call still waiting when the proxy is released or the other end closes
 * (the worker exits) rejects with RpcClosedError.
 */
export function connect<T>(port: MessagePort | Worker): Comlink.Remote<T> {
  const remote = Comlink.wrap<T>(nodeEndpoint(port));
  const waiting = new Set<(why: string) => void>();
  let closed: string | null = null;
  const close = (why: string): void => {
    closed ??= why;
    for (const cutOff of waiting) cutOff(closed);
    waiting.clear();
  };
  if (port instanceof MessagePort) port.once("close", () => close("the other end closed its port"));
  else port.once("exit", () => close("the worker exited"));
  const notSent = (method: string, why: string): Promise<never> =>
    Promise.reject(new RpcClosedError(`${method}(): not sent: ${why}`));
  const proxy = new Proxy(remote, {
    get(target, prop) {
      // Symbols (releaseProxy) and `then` are comlink's own; everything else is a method of the api.
      if (typeof prop === "symbol" || prop === "then") return Reflect.get(target, prop);
      const why = closed;
      if (why !== null) return () => notSent(prop, why); // comlink throws on a released proxy
      const call = Reflect.get(target, prop) as (...args: unknown[]) => Promise<unknown>;
      return (...args: unknown[]): Promise<unknown> => {
        if (closed !== null) return notSent(prop, closed);
        return new Promise((resolve, reject) => {
          const cutOff = (reason: string): void =>
            reject(new RpcClosedError(`${prop}(): no answer: ${reason}`));
          waiting.add(cutOff);
          call(...args).then(
            (value) => {
              waiting.delete(cutOff);
              resolve(value);
            },
            (err: unknown) => {
              waiting.delete(cutOff);
              reject(err);
            },
          );
        });
      };
    },
  });
  closers.set(proxy, close);
  return proxy;
}

/** Release a proxy's listener so the port can close; calls still waiting reject with RpcClosedError. */
export function disconnect<T>(remote: Comlink.Remote<T>): void {
  closers.get(remote)?.("the proxy was released (disconnect)");
  remote[Comlink.releaseProxy]();
}

/** The error a call rejected with because its answer could no longer come (see connect). */
export function isRpcClosed(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === "ERR_USBVIRT_RPC_CLOSED";
}
