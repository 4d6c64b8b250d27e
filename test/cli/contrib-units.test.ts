/**
 * contrib's systemd units as systemd and usbvirt read them: each ExecStart is a usbvirt command line whose
 * every flag exists; `systemd-analyze verify` finds nothing wrong in serve's service and socket, in
 * redirect's templates instantiated for a VM or in attach's service, but the binary's path, which is where a package would install
 * usbvirt; both services carry the same sandbox (the directives README.md explains) and `systemd-analyze
 * security --offline=yes` rates each at or below EXPOSURE_MAX; metrics and the local VM's socket are
 * socket files. And usbvirt runs inside the part of that sandbox a process can impose on itself
 * (unit-sandbox.py: the units' SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies=, UMask=):
 * serve with a storage file, a metrics and a control socket, an import and its data check (also by attach in
 * attach's service's filter); redirect on a socket file with a usb-guest. attach's service has serve's
 * sandbox but for USB devices and netlink (none) and the LAN (reached).
 */
import { execFile, execFileSync } from "node:child_process";
import { statSync } from "node:fs";
import { copyFile, mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { run } from "../../src/cli/run.js";
import { UsbredirClient } from "../../src/usbredir/client.js";
import { allOf, command, missing, need, skipWithout, type Tool } from "../support/tools.js";
import { capture, connectedTo, ROOT, spawnChild } from "./helpers.js";

const CONTRIB = join(ROOT, "contrib");
const UNIT_FILES = [
  "usbvirt.service",
  "usbvirt.socket",
  "usbvirt-redirect@.service",
  "usbvirt-redirect@.socket",
  "usbvirt-attach.service",
] as const;

/** The highest overall exposure `systemd-analyze security` (systemd 252) may give a service here. */
const EXPOSURE_MAX = 1.3;

/**
 * The sandbox both services run in, directive by directive (contrib/README.md says what each is for; a
 * directive given twice is listed twice, in its order).
 */
const SANDBOX: readonly (readonly [string, string])[] = [
  ["UMask", "0077"],
  ["NoNewPrivileges", "yes"],
  ["CapabilityBoundingSet", ""],
  ["AmbientCapabilities", ""],
  ["ProtectSystem", "strict"],
  ["ProtectHome", "yes"],
  ["PrivateTmp", "yes"],
  ["PrivateIPC", "yes"],
  ["PrivateMounts", "yes"],
  ["DevicePolicy", "closed"],
  ["DeviceAllow", "char-usb_device rw"],
  ["ProtectKernelTunables", "yes"],
  ["ProtectKernelModules", "yes"],
  ["ProtectKernelLogs", "yes"],
  ["ProtectControlGroups", "yes"],
  ["ProtectClock", "yes"],
  ["ProtectHostname", "yes"],
  ["ProtectProc", "invisible"],
  ["RestrictNamespaces", "yes"],
  ["RestrictRealtime", "yes"],
  ["RestrictSUIDSGID", "yes"],
  ["LockPersonality", "yes"],
  ["RemoveIPC", "yes"],
  ["RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"],
  ["IPAddressAllow", "localhost"],
  ["IPAddressDeny", "any"],
  ["SystemCallArchitectures", "native"],
  ["SystemCallFilter", "@system-service"],
  ["SystemCallFilter", "~@privileged @resources"],
  ["SystemCallErrorNumber", "EPERM"],
  ["Environment", "USBVIRT_HOST_LOCK_DIR=/run/usbvirt-host-devices"],
];

/** Directives that would break usbvirt (README.md says how): none of them may appear. */
const BREAKS_USBVIRT = [
  "MemoryDenyWriteExecute",
  "PrivateUsers",
  "PrivateDevices",
  "PrivateNetwork",
  "ProcSubset",
];

/** A unit file's KEY=VALUE lines in order (continuation lines joined, comments and sections dropped). */
async function directives(unit: string): Promise<[string, string][]> {
  const text = (await readFile(join(CONTRIB, unit), "utf8")).replace(/\\\n\s*/g, " ");
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.includes("=") && !/^[#;[]/.test(l))
    .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1).trim()]);
}

/** The units in a scratch folder, where systemd-analyze can instantiate the templates. */
async function unitsDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "usbvirt-units-"));
  for (const f of UNIT_FILES) await copyFile(join(CONTRIB, f), join(dir, f));
  return dir;
}

/** libseccomp's Python binding (Debian's python3-seccomp is for the system python3). */
function seccompPython(): Tool<string> {
  const python = command(["/usr/bin/python3", "python3"], "apt-get install python3");
  if (!python.ok) return python;
  try {
    execFileSync(python.value, ["-c", "import seccomp"], { stdio: "ignore" });
    return python;
  } catch {
    return missing("python3's seccomp module is not installed (apt-get install python3-seccomp)");
  }
}

/** The usbvirt arguments of a unit's ExecStart (continued lines joined). */
async function execStartArgs(unit: string): Promise<string[]> {
  const text = (await readFile(join(CONTRIB, unit), "utf8")).replace(/\\\n\s*/g, "");
  const line = /^ExecStart=(\S+)\s+(.*)$/m.exec(text);
  expect(line?.[1], `${unit}: ExecStart`).toBe("/usr/bin/usbvirt");
  return line![2]!.trim().split(/\s+/);
}

describe("contrib's systemd units", () => {
  it.each([
    ["usbvirt.service", "serve"],
    ["usbvirt-redirect@.service", "redirect"],
    ["usbvirt-attach.service", "attach"],
  ])("%s runs `usbvirt %s` with flags it has", async (unit, command) => {
    const args = await execStartArgs(unit);
    expect(args[0]).toBe(command);
    // --help after the unit's flags: exit 0 (the help) only when every flag before it parses.
    const c = capture();
    expect(await run([...args, "--help"], c.io), c.err).toBe(0);
    expect(c.out).toContain(`usage: usbvirt ${command}`);
  });

  it("the redirect service reads the instance's config file", async () => {
    const args = await execStartArgs("usbvirt-redirect@.service");
    expect(args.slice(1, 3)).toEqual(["--config", "/etc/usbvirt/redirect/%i.json"]);
  });

  it("the attach service reads its config file", async () => {
    const args = await execStartArgs("usbvirt-attach.service");
    expect(args.slice(1)).toEqual(["--config", "/etc/usbvirt/attach.json"]);
  });

  const analyze = command(["systemd-analyze"], "apt-get install systemd");

  it.skipIf(skipWithout("systemd-analyze verify of contrib's units", analyze))(
    "systemd-analyze verify finds nothing wrong but the binary's path",
    async () => {
      const dir = await unitsDir();
      const units = [
        "usbvirt.socket",
        "usbvirt.service",
        "usbvirt-redirect@vm1.socket",
        "usbvirt-redirect@vm1.service",
        "usbvirt-attach.service",
      ];
      const result = await promisify(execFile)(
        need(analyze),
        ["verify", "--man=no", ...units.map((u) => join(dir, u))],
        {
          cwd: dir,
        },
      ).then(
        (r) => ({ code: 0, text: `${r.stdout}${r.stderr}` }),
        (e: { code?: number; stdout?: string; stderr?: string }) => ({
          code: e.code ?? -1,
          text: `${e.stdout ?? ""}${e.stderr ?? ""}`,
        }),
      );
      const problems = result.text
        .split("\n")
        .filter((l) => l.trim() !== "" && !/Command \/usr\/bin\/usbvirt is not executable/.test(l));
      expect(problems).toEqual([]);
    },
  );

  it.each(["usbvirt.service", "usbvirt-redirect@.service"])(
    "%s runs in the sandbox, and README.md says what each directive is for",
    async (unit) => {
      const given = await directives(unit);
      // By name (a stable sort keeps the order of a directive given twice, which matters for SystemCallFilter=).
      const byName = (list: readonly (readonly [string, string])[]) =>
        [...list].sort((a, b) => a[0].localeCompare(b[0]));
      const sandbox = given.filter(([k]) => SANDBOX.some(([s]) => s === k));
      expect(byName(sandbox), unit).toEqual(byName(SANDBOX));
      expect(
        given.filter(([k]) => BREAKS_USBVIRT.includes(k)),
        unit,
      ).toEqual([]);
      const readme = await readFile(join(CONTRIB, "README.md"), "utf8");
      for (const key of [...new Set(SANDBOX.map(([k]) => k)), ...BREAKS_USBVIRT]) {
        expect(readme, `README.md on ${key}=`).toMatch(new RegExp(`^\\| \`${key}=`, "m"));
      }
    },
  );

  it("usbvirt-attach.service runs in serve's sandbox but for USB devices and hotplug events (none) and the LAN (reached)", async () => {
    const given = await directives("usbvirt-attach.service");
    const differs = [
      "DeviceAllow",
      "RestrictAddressFamilies",
      "IPAddressAllow",
      "IPAddressDeny",
      "Environment",
    ];
    const expected = [
      ...SANDBOX.filter(([k]) => !differs.includes(k)),
      ["RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"],
      ["PrivateDevices", "yes"],
    ] as const;
    const byName = (list: readonly (readonly [string, string])[]) =>
      [...list].sort((a, b) => a[0].localeCompare(b[0]));
    const sandbox = given.filter(([k]) => [...SANDBOX.map(([s]) => s), "PrivateDevices"].includes(k));
    expect(byName(sandbox)).toEqual(byName(expected));
  });

  it("metrics and a local VM's redirect are socket files, not TCP ports", async () => {
    expect(await execStartArgs("usbvirt.service")).toEqual(
      expect.arrayContaining(["--metrics", "unix:/run/usbvirt/metrics.sock"]),
    );
    const socket = await directives("usbvirt-redirect@.socket");
    expect(socket).toEqual(
      expect.arrayContaining([
        ["ListenStream", "/run/usbvirt-redirect/%i.sock"],
        ["SocketMode", "0660"],
        ["SocketUser", "usbvirt"],
      ]),
    );
    const example = JSON.parse(
      await readFile(join(CONTRIB, "usbvirt-redirect.example.json"), "utf8"),
    ) as Record<string, unknown>;
    expect(example.metrics).toBe("unix:/run/usbvirt-redirect/vm1/metrics.sock");
  });

  it.skipIf(skipWithout("systemd-analyze security of contrib's services", analyze))(
    `systemd-analyze security --offline=yes rates each service at or below ${EXPOSURE_MAX}`,
    async () => {
      const dir = await unitsDir();
      for (const unit of ["usbvirt.service", "usbvirt-redirect@vm1.service", "usbvirt-attach.service"]) {
        const result = await promisify(execFile)(
          need(analyze),
          ["security", "--offline=yes", `--threshold=${Math.round(EXPOSURE_MAX * 10)}`, join(dir, unit)],
          { cwd: dir },
        ).then(
          (r) => ({ code: 0, text: r.stdout }),
          (e: { code?: number; stdout?: string }) => ({ code: e.code ?? -1, text: e.stdout ?? "" }),
        );
        const overall = /Overall exposure level for \S+: (\d+\.\d+)/.exec(result.text);
        expect(overall, `${unit}: ${result.text.slice(-400)}`).not.toBeNull();
        expect(Number(overall![1]), unit).toBeLessThanOrEqual(EXPOSURE_MAX);
        expect(result.code, unit).toBe(0);
      }
    },
  );

  const sandboxTools = allOf(analyze, seccompPython());

  it.skipIf(skipWithout("usbvirt inside the units' system call filter", sandboxTools))(
    "serve, redirect and attach run inside the units' system call filter, address families and umask",
    async () => {
      const python = need(sandboxTools)[1];
      const dir = await mkdtemp(join(tmpdir(), "usbvirt-sandboxed-"));
      const sandboxed = (unit: string, args: readonly string[]) =>
        spawnChild(
          [
            join(import.meta.dirname, "unit-sandbox.py"),
            join(CONTRIB, unit),
            "--",
            process.execPath,
            "--import",
            "tsx",
            "src/cli/main.ts",
            ...args,
          ],
          python,
        );
      const at = (name: string) => join(dir, name);
      const ok = async (args: string[]) => {
        const c = capture();
        expect(await run(args, c.io), `${args.join(" ")}: ${c.err}`).toBe(0);
        return c.out;
      };

      const s = sandboxed("usbvirt.service", [
        "serve",
        "--port",
        "0",
        "--device",
        "loopback",
        "--device",
        "storage",
        "--storage-file",
        at("disk.img"),
        "--storage-size",
        "8M",
        "--metrics",
        `unix:${at("metrics.sock")}`,
        "--control",
        at("control.sock"),
        "--state-dir",
        at("state"),
      ]);
      try {
        const port = (await s.waitFor(/over USB\/IP on 127\.0\.0\.1:(\d+)/, "out"))[1]!;
        await s.waitFor(/^metrics: unix:/m, "out");
        expect(s.err()).toMatch(/^sandbox: \d+ system calls allowed$/m);
        expect(await ok(["attach", `127.0.0.1:${port}`, "1-1", "--check", "--no-reconnect"])).toContain(
          "check passed",
        );
        // attach itself inside usbvirt-attach.service's filter and address families.
        const a = sandboxed("usbvirt-attach.service", [
          "attach",
          `127.0.0.1:${port}`,
          "1-1",
          "--check",
          "--no-reconnect",
        ]);
        await a.waitFor(/check passed/, "out");
        expect(await a.exited, a.err()).toBe(0);
        expect(await ok(["status", "--metrics", `unix:${at("metrics.sock")}`])).toContain("engine up");
        expect(await ok(["ctl", "--control", at("control.sock"), "unbind", "1-2"])).toContain("unbound");
        // UMask=0077 for what usbvirt creates, but the sockets it means to share with its group.
        expect(statSync(at("disk.img")).mode & 0o777).toBe(0o600);
        expect(statSync(at("metrics.sock")).mode & 0o777).toBe(0o660);
      } finally {
        s.child.kill("SIGTERM");
      }
      expect(await s.exited, s.err()).toBe(0);

      const r = sandboxed("usbvirt-redirect@.service", [
        "redirect",
        "--device",
        "loopback",
        "--listen",
        `unix:${at("vm1.sock")}`,
        "--metrics",
        `unix:${at("vm1-metrics.sock")}`,
      ]);
      try {
        await r.waitFor(/^metrics: unix:/m, "out");
        const g = await UsbredirClient.over(await connectedTo(at("vm1.sock")), { timeoutMs: 20_000 });
        expect(g.device?.vendorId).toBe(0x1209);
        g.close();
        expect(await ok(["status", "--metrics", `unix:${at("vm1-metrics.sock")}`])).toContain("engine up");
      } finally {
        r.child.kill("SIGTERM");
      }
      expect(await r.exited, r.err()).toBe(0);
    },
    60_000,
  );
});
