/**
 * src/util/error-wire.ts and the comlink handler src/util/rpc.ts installs:
 * class, code, fields and the cause chain survive a real structured clone
 * (a MessageChannel) and a comlink call; malformed or endless input is
 * bounded and never throws on the receiving side.
 */
import { MessageChannel } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { GrantError } from "../../src/dma-map/grant-fault.js";
import { GuestTransferError } from "../../src/guest/guest-driver.js";
import { EPIPE } from "../../src/urb/status.js";
import { deserializeError, MAX_CAUSE_DEPTH, serializeError } from "../../src/util/error-wire.js";
import { InvalidOptionError, registerErrorClass, UsbvirtError } from "../../src/util/errors.js";
import { connect, disconnect, serve } from "../../src/util/rpc.js";

/** One real structured clone, as between two threads. */
async function overChannel(value: unknown): Promise<unknown> {
  const { port1, port2 } = new MessageChannel();
  const got = new Promise<unknown>((resolve) => port2.once("message", resolve));
  port1.postMessage(value);
  const out = await got;
  port1.close();
  port2.close();
  return out;
}

function nested(): GrantError {
  const root = new TypeError("the root");
  const middle = new InvalidOptionError("options.x is wrong", { cause: root });
  return new GrantError("TABLE_FULL", "all 8 grant refs are in use", undefined, { cause: middle });
}

function expectNested(err: unknown): void {
  expect(err).toBeInstanceOf(GrantError);
  expect(err).toBeInstanceOf(UsbvirtError);
  const e = err as GrantError;
  expect(e.code).toBe("ERR_USBVIRT_GRANT_TABLE_FULL");
  expect(e.message).toBe("all 8 grant refs are in use");
  expect(e.name).toBe("GrantError");
  expect(e.cause).toBeInstanceOf(InvalidOptionError);
  const middle = e.cause as InvalidOptionError;
  expect(middle.code).toBe("ERR_USBVIRT_INVALID_OPTION");
  expect(middle.cause).toBeInstanceOf(TypeError);
  expect((middle.cause as TypeError).message).toBe("the root");
}

describe("error wire format", () => {
  it("keeps class, code, message, stack and a nested cause across a structured clone", async () => {
    const original = nested();
    const back = deserializeError(await overChannel(serializeError(original)));
    expectNested(back);
    expect((back as Error).stack).toBe(original.stack);
  });

  it("keeps an error's own primitive fields (a GuestTransferError's status)", async () => {
    const back = deserializeError(
      await overChannel(serializeError(new GuestTransferError("bulk IN", EPIPE))),
    );
    expect(back).toBeInstanceOf(GuestTransferError);
    expect((back as GuestTransferError).status).toBe(EPIPE);
    expect((back as GuestTransferError).what).toBe("bulk IN");
  });

  it("an unregistered class with a code arrives as a UsbvirtError with its name and code", () => {
    class ElsewhereError extends UsbvirtError {}
    const back = deserializeError(serializeError(new ElsewhereError("ERR_ELSEWHERE", "far away")));
    expect(back).toBeInstanceOf(UsbvirtError);
    expect((back as UsbvirtError).name).toBe("ElsewhereError");
    expect((back as UsbvirtError).code).toBe("ERR_ELSEWHERE");
  });

  it("cuts a cyclic cause chain after MAX_CAUSE_DEPTH levels", () => {
    const a = new Error("a");
    const b = new Error("b", { cause: a });
    (a as { cause?: unknown }).cause = b;
    let e: unknown = deserializeError(serializeError(b));
    let depth = 0;
    while (e instanceof Error) {
      e = e.cause;
      depth++;
    }
    expect(depth).toBe(MAX_CAUSE_DEPTH + 1);
    expect(e).toMatch(/cause chain cut/);
  });

  it("turns malformed wire data into an Error that says so, without throwing", () => {
    for (const bad of [
      null,
      5,
      "x",
      {},
      { kind: "error" },
      { kind: "error", error: { name: 1, message: "m" } },
    ]) {
      const e = deserializeError(bad);
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).message).toBe("malformed error from another thread");
    }
  });

  it("a peer cannot set the prototype through a field", () => {
    const wire = {
      kind: "error",
      error: { name: "Error", message: "m", fields: JSON.parse('{"__proto__": "x", "port": 3}') },
    };
    const e = deserializeError(wire) as Error & { port?: number };
    expect(Object.getPrototypeOf(e)).toBe(Error.prototype);
    expect(e.port).toBe(3);
  });

  it("an error named after an Object.prototype member arrives as a plain Error with that name, never a throw", async () => {
    for (const name of [
      "toString",
      "__proto__",
      "constructor",
      "hasOwnProperty",
      "valueOf",
      "isPrototypeOf",
    ]) {
      const sent = new Error(`named ${name}`);
      sent.name = name;
      let back: unknown;
      expect(() => {
        back = deserializeError({
          kind: "error",
          error: { name, message: `named ${name}`, code: "E_X", fields: {} },
        });
      }, name).not.toThrow();
      for (const e of [back, deserializeError(await overChannel(serializeError(sent)))]) {
        expect(e, name).toBeInstanceOf(Error);
        expect(Object.getPrototypeOf(e), name).toBe(Error.prototype);
        expect((e as Error).name).toBe(name);
        expect((e as Error).message).toBe(`named ${name}`);
      }
      // Marked as usbvirt's on the sending side: a UsbvirtError, still not a lookup on a prototype.
      const usbvirt = deserializeError({
        kind: "error",
        error: { name, message: "m", usbvirt: true, fields: {} },
      });
      expect(Object.getPrototypeOf(usbvirt), name).toBe(UsbvirtError.prototype);
    }
  });

  it("a field cannot shadow a method or an accessor of the rebuilt error: it is left out", () => {
    class WithAccessor extends UsbvirtError {
      get status(): number {
        return 7;
      }
    }
    registerErrorClass(WithAccessor);
    const fields = JSON.parse(
      '{"toString": 1, "valueOf": "x", "constructor": 2, "status": 9, "hasOwnProperty": 3, "port": 4}',
    );
    let e: unknown;
    expect(() => {
      e = deserializeError({
        kind: "error",
        error: { name: "WithAccessor", message: "m", code: "C", fields },
      });
    }).not.toThrow();
    expect(e).toBeInstanceOf(WithAccessor);
    expect(String(e)).toBe("WithAccessor: m");
    expect((e as WithAccessor).status).toBe(7);
    expect((e as { port?: number }).port).toBe(4);
    expect(Object.keys(e as object).sort()).toEqual(["code", "name", "port"]);
  });

  it("non-error throws and non-cloneable causes still travel", async () => {
    expect(deserializeError(await overChannel(serializeError("plain string")))).toBe("plain string");
    const withFn = new Error("has a function cause", { cause: () => 1 });
    const back = deserializeError(await overChannel(serializeError(withFn))) as Error;
    expect(typeof back.cause).toBe("string");
  });
});

describe("comlink with the error handler (src/util/rpc.ts)", () => {
  it("a call that throws rejects with the same class, code and cause chain", async () => {
    const { port1, port2 } = new MessageChannel();
    serve(
      {
        fail() {
          throw nested();
        },
      },
      port1,
    );
    const remote = connect<{ fail(): void }>(port2);
    let caught: unknown;
    try {
      await remote.fail();
    } catch (err) {
      caught = err;
    }
    expectNested(caught);
    disconnect(remote);
    port1.close();
    port2.close();
  });
});
