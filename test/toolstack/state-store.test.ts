/**
 * The toolstack's saved state: written atomically (no temporary file left, the folder made), read back
 * through its schema; a file that does not check (not JSON, a wrong field, too large) is refused whole,
 * naming why, never half-applied; the default folders follow systemd's and XDG's variables.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { defaultControlPath } from "../../src/toolstack/control-server.js";
import { parseRequestLine, parseTarget } from "../../src/toolstack/protocol.js";
import { defaultStateDir, emptyState, StateStore } from "../../src/toolstack/state-store.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "usbvirt-state-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("state store", () => {
  it("saves atomically and loads what it saved; no file is an empty state", () => {
    const store = new StateStore(join(dir, "sub"));
    expect(store.load()).toEqual(emptyState());
    const state = {
      version: 1 as const,
      bound: [{ device: "1209:7301", busid: "1-9" }],
      unbound: ["1-2"],
      assigned: [{ device: "loopback", to: "qemu:127.0.0.1:4000" }],
    };
    store.save(state);
    store.save(state);
    expect(readdirSync(join(dir, "sub"))).toEqual(["state.json"]);
    expect(new StateStore(join(dir, "sub")).load()).toEqual(state);
  });

  it("refuses a file that does not check, naming why", () => {
    const store = new StateStore(dir);
    writeFileSync(store.file, "{not json");
    expect(() => store.load()).toThrow(/is not JSON/);
    writeFileSync(
      store.file,
      JSON.stringify({ version: 1, bound: [{ device: "x", busid: "9-9" }], unbound: [], assigned: [] }),
    );
    expect(() => store.load()).toThrow(/state\.json: .*bound/);
    writeFileSync(store.file, JSON.stringify({ version: 2, bound: [], unbound: [], assigned: [] }));
    expect(() => store.load()).toThrow(/version/);
    writeFileSync(store.file, " ".repeat(1024 * 1024 + 1));
    expect(() => store.load()).toThrow(/larger than/);
  });

  it("defaults: systemd's directories first, then XDG's", () => {
    expect(defaultStateDir({ STATE_DIRECTORY: "/var/lib/usbvirt", XDG_STATE_HOME: "/h/.s" })).toBe(
      "/var/lib/usbvirt",
    );
    expect(defaultStateDir({ XDG_STATE_HOME: "/h/.s" })).toBe("/h/.s/usbvirt");
    expect(defaultStateDir({ HOME: "/h" })).toBe("/h/.local/state/usbvirt");
    expect(defaultControlPath({ RUNTIME_DIRECTORY: "/run/usbvirt", XDG_RUNTIME_DIR: "/run/user/0" })).toBe(
      "/run/usbvirt/control.sock",
    );
    expect(defaultControlPath({ XDG_RUNTIME_DIR: "/run/user/1000" })).toBe(
      "/run/user/1000/usbvirt/control.sock",
    );
    expect(defaultControlPath({})).toBe("/run/usbvirt/control.sock");
  });
});

describe("control protocol gate", () => {
  it("parses each verb into a typed request, and assign targets", () => {
    expect(
      parseRequestLine('{"v":1,"id":"a","verb":"assign","device":"keyboard","to":"unix:/run/vm.sock"}'),
    ).toEqual({
      ok: true,
      request: { v: 1, id: "a", verb: "assign", device: "keyboard", to: "unix:/run/vm.sock" },
    });
    expect(parseTarget("qemu:[::1]:4000")).toEqual({ kind: "tcp", host: "::1", port: 4000 });
    expect(parseTarget("qemu:vm1.example:0")).toBeNull();
    expect(parseTarget("unix:relative/path")).toBeNull();
    const long = parseRequestLine(JSON.stringify({ v: 1, verb: "bind", device: "x".repeat(300) }));
    expect(long.ok).toBe(false);
    expect(JSON.stringify(long)).toContain("longer than 256");
  });
});
