/**
 * Connection.attach checks its device spec (src/devices/spec-schema.ts) on the caller's thread: a VMM that
 * passes a bad spec gets an InvalidOptionError (code ERR_USBVIRT_INVALID_OPTION) naming the field, not a
 * raw Node error or "kind 'undefined' is not implemented" from the backend, and the port stays usable.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Connection } from "../../src/engine/connection.js";
import { InvalidOptionError } from "../../src/util/errors.js";

describe("Connection.attach guards its spec", () => {
  let conn: Connection;
  beforeAll(async () => {
    conn = await Connection.create({ ports: 2, memory: 1024 });
  });
  afterAll(async () => {
    await conn.close();
  });

  it.each([
    ["[42]'s entry", 42, "bad device spec: spec: "],
    [
      "a storage file that is a number",
      { kind: "emulated", name: "storage", options: { file: 7 } },
      "spec.options.file: ",
    ],
    [
      "a kind that does not exist",
      { kind: "usb" },
      'spec.kind: must be one of "emulated" | "host" | "usbip", not "usb"',
    ],
  ] as const)("%s: a clear error with a code, and the port stays free", async (_what, spec, message) => {
    const attempt = conn.attach(1, spec as never);
    await expect(attempt).rejects.toBeInstanceOf(InvalidOptionError);
    await expect(attempt).rejects.toMatchObject({
      code: "ERR_USBVIRT_INVALID_OPTION",
      message: expect.stringContaining(message),
    });
    await conn.attach(1, { kind: "emulated", name: "loopback" });
    await conn.detach(1);
  });
});
