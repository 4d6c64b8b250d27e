/**
 * A daemon listening beyond loopback warns, even when an --allow-client list is given: neither USB/IP nor
 * usbredir has authentication, so the list narrows who can connect but is no lock. `serve` and `redirect`
 * in-process through run() with a collecting logger, so the warning is read without racing a signal.
 */
import { describe, expect, it } from "vitest";
import { redirectInProcess, serveInProcess } from "./helpers.js";

describe("usbvirt serve beyond loopback", () => {
  it("still warns with an allowlist, and says what the list does not do", async () => {
    const s = await serveInProcess([
      "--bind",
      "0.0.0.0",
      "--device",
      "loopback",
      "--allow-client",
      "127.0.0.1",
    ]);
    expect(await s.stop()).toBe(0);
    expect(s.c.logger.matching("warn: listening on 0.0.0.0")).toEqual([
      expect.stringMatching(
        /^warn: listening on 0\.0\.0\.0: USB\/IP has no authentication or encryption; only the --allow-client list \(127\.0\.0\.1\) decides who can import devices/,
      ),
    ]);
  });
});

describe("usbvirt redirect beyond loopback", () => {
  it("warns that any host can take the device, and with an allowlist what the list does not do", async () => {
    const bare = redirectInProcess(["--device", "keyboard", "--listen", "0.0.0.0:0"]);
    await bare.ready;
    expect(bare.c.out).toContain("-chardev socket,id=usbredir0,host=THIS_HOST,port=");
    expect(await bare.stop()).toBe(0);
    expect(bare.c.logger.matching("listening on 0.0.0.0")).toEqual([
      "warn: listening on 0.0.0.0 with no --allow-client list: any host that reaches this port can take the device",
    ]);
    const listed = redirectInProcess([
      "--device",
      "keyboard",
      "--listen",
      "0.0.0.0:0",
      "--allow-client",
      "10.0.0.0/8",
    ]);
    await listed.ready;
    expect(await listed.stop()).toBe(0);
    expect(listed.c.logger.matching("listening on 0.0.0.0")).toEqual([
      expect.stringMatching(
        /^warn: listening on 0\.0\.0\.0: usbredir has no authentication or encryption; only the --allow-client list \(10\.0\.0\.0\/8\) decides who can take the device/,
      ),
    ]);
  });

  it("on loopback it does not warn", async () => {
    const r = redirectInProcess(["--device", "keyboard", "--listen", "127.0.0.1:0"]);
    await r.ready;
    expect(await r.stop()).toBe(0);
    expect(r.c.logger.matching("listening on")).toEqual([]);
  });
});
