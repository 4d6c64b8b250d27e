/**
 * src/util/rpc.ts: a call whose answer can no longer come rejects with RpcClosedError instead of waiting
 * forever — when the caller releases its proxy (the control plane dropping a backend that exited) and when
 * the serving end's port closes (its thread ended) — and an answer that does come is unchanged.
 */
import { MessageChannel } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { connect, disconnect, isRpcClosed, serve } from "../../src/util/rpc.js";

interface Api {
  /** Never answers. */
  hang(): Promise<void>;
  echo(x: number): number;
}

function served(): { remote: ReturnType<typeof connect<Api>>; close(): void; closeServer(): void } {
  const { port1, port2 } = new MessageChannel();
  serve({ hang: () => new Promise<void>(() => undefined), echo: (x: number) => x } satisfies Api, port1);
  const remote = connect<Api>(port2);
  return {
    remote,
    closeServer: () => port1.close(),
    close: () => {
      port1.close();
      port2.close();
    },
  };
}

describe("rpc calls whose answer cannot come", () => {
  it("a call waiting when the proxy is released rejects with ERR_USBVIRT_RPC_CLOSED, and later calls are not sent", async () => {
    const s = served();
    expect(await s.remote.echo(7)).toBe(7);
    const waiting = s.remote.hang();
    disconnect(s.remote);
    await expect(waiting).rejects.toMatchObject({
      code: "ERR_USBVIRT_RPC_CLOSED",
      message: "hang(): no answer: the proxy was released (disconnect)",
    });
    await expect(s.remote.echo(1)).rejects.toMatchObject({
      code: "ERR_USBVIRT_RPC_CLOSED",
      message: "echo(): not sent: the proxy was released (disconnect)",
    });
    s.close();
  });

  it("a call waiting when the serving end's port closes (its thread ended) rejects", async () => {
    const s = served();
    const waiting = s.remote.hang();
    s.closeServer();
    const err: unknown = await waiting.then(
      () => null,
      (e: unknown) => e,
    );
    expect(isRpcClosed(err)).toBe(true);
    expect((err as Error).message).toBe("hang(): no answer: the other end closed its port");
    disconnect(s.remote);
    s.close();
  });

  it("isRpcClosed is false for an error the api itself threw", async () => {
    const { port1, port2 } = new MessageChannel();
    serve(
      {
        fail() {
          throw Object.assign(new Error("no"), { code: "ERR_OTHER" });
        },
      },
      port1,
    );
    const remote = connect<{ fail(): void }>(port2);
    const err: unknown = await remote.fail().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(isRpcClosed(err)).toBe(false);
    disconnect(remote);
    port1.close();
    port2.close();
  });
});
