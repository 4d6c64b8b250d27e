/**
 * UsbipServer's `allow` option goes through the strict parser (src/util/ip-prefix.ts): the typos that once
 * widened the list to every client (/0) or to a /8 are refused before any worker starts.
 */
import { describe, expect, it } from "vitest";
import { UsbipServer } from "../../src/usbip-server/server.js";

describe("UsbipServer's allow option uses the same parser", () => {
  it.each(["127.0.0.2/", "127.0.0.2/ ", "127.0.0.2/8/32"])(
    "refuses %j before starting anything",
    async (entry) => {
      // A plain outcome, not the server: a started server (the bug) is closed and reported as "started".
      const outcome = await UsbipServer.start({
        devices: [{ kind: "emulated", name: "loopback" }],
        port: 0,
        allow: [entry],
      }).then(
        async (server) => {
          await server.close();
          return "started";
        },
        (err: unknown) => err,
      );
      expect(outcome).toMatchObject({
        code: "ERR_USBVIRT_USBIP_OPTIONS",
        message: expect.stringContaining(`allowlist entry ${JSON.stringify(entry)}`),
      });
    },
  );
});
