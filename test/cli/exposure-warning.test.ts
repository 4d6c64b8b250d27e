/**
 * `usbvirt serve` bound beyond loopback warns even when an --allow-client list is given (it used to stay
 * silent then): USB/IP has no authentication, so the list narrows who can connect but is no lock.
 * In-process through run() with a collecting logger, so the warning is read without racing a signal.
 */
import { describe, expect, it } from "vitest";
import { type CliIo, run } from "../../src/cli/run.js";
import { CollectingLogger } from "../../src/network-face/log.js";
import type { UsbipServer } from "../../src/usbip-server/server.js";

describe("usbvirt serve beyond loopback", () => {
  it("still warns with an allowlist, and says what the list does not do", async () => {
    const logger = new CollectingLogger();
    let stop!: (s: string) => void;
    const stopped = new Promise<string>((r) => {
      stop = r;
    });
    let up!: (s: UsbipServer) => void;
    const listening = new Promise<UsbipServer>((r) => {
      up = r;
    });
    const io: CliIo = { out: () => {}, err: () => {}, logger, stopSignal: () => stopped, onListening: up };
    const exit = run(
      ["serve", "--bind", "0.0.0.0", "--port", "0", "--device", "loopback", "--allow-client", "127.0.0.1"],
      io,
    );
    await Promise.race([listening, exit.then((c) => Promise.reject(new Error(`serve exited ${c}`)))]);
    stop("SIGINT");
    expect(await exit).toBe(0);
    expect(logger.matching("warn: listening on 0.0.0.0")).toEqual([
      expect.stringMatching(
        /^warn: listening on 0\.0\.0\.0: USB\/IP has no authentication or encryption; only the --allow-client list \(127\.0\.0\.1\) decides who can import devices/,
      ),
    ]);
  });
});
