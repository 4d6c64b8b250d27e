/**
 * `usbvirt serve` refuses every bad setting the issue found, through the real process: exit 2 and an error
 * naming the key (and the config file), before anything listens. A child that starts serving instead (as
 * the code before the settings schema did) is stopped and reported. Imports nothing from src, so the same
 * file runs against any build of the CLI.
 */
import { spawn } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "vitest";

const ROOT = join(import.meta.dirname, "../..");

interface CliResult {
  readonly code: number | null;
  readonly served: boolean;
  readonly out: string;
  readonly err: string;
}

/** Run the CLI as a process; if it starts serving (the bug), stop it and say so. */
function usbvirt(args: readonly string[]): Promise<CliResult> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  let served = false;
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
    if (!served && out.includes("usbvirt: serving")) {
      served = true;
      child.kill("SIGINT");
    }
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, served, out, err })));
}

async function configFile(content: unknown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "usbvirt-config-"));
  const file = join(dir, "serve.json");
  await writeFile(file, JSON.stringify(content));
  return file;
}

const flagCases: readonly [string, readonly string[], string][] = [
  [
    "a trailing slash is not /0",
    ["--allow-client", "127.0.0.2/"],
    '--allow-client: "127.0.0.2/" has no prefix length',
  ],
  [
    "another trailing slash",
    ["--allow-client", "10.9.8.7/"],
    '--allow-client: "10.9.8.7/" has no prefix length',
  ],
  ["a trailing space", ["--allow-client", "127.0.0.2/ "], '--allow-client: "127.0.0.2/ " has a character'],
  [
    "two prefixes are not /8",
    ["--allow-client", "127.0.0.2/8/32"],
    '--allow-client: "127.0.0.2/8/32" has more than one "/"',
  ],
  ["a port with letters", ["--port", "3253x"], '--port: must be an integer 0..65535, not "3253x"'],
  ["an empty bind address", ["--bind="], '--bind: must be an IP address or host name, not ""'],
  [
    "a storage speed USB has no name for",
    ["--storage-speed", "fast"],
    '--storage-speed: must be "full", "high" or "super", not "fast"',
  ],
];

const fileCases: readonly [string, Record<string, unknown>, string][] = [
  ["bind must be a string (5 listened everywhere)", { bind: 5 }, "bind: must be a string, not 5"],
  ["devices must be a list", { devices: "loopback" }, 'devices: must be a list of devices, not "loopback"'],
  ["port must be a number", { port: "0" }, 'port: must be an integer 0..65535, not "0"'],
  ["storageFile must be a path", { storageFile: 7 }, "storageFile: must be a file path, not 7"],
  ["storageSpeed is a name", { storageSpeed: 4 }, 'storageSpeed: must be "full", "high" or "super", not 4'],
  ["a device entry must be a selector or a spec", { devices: [42] }, "devices[0]: must be a selector string"],
  [
    "a device spec's fields are checked",
    { devices: [{ kind: "emulated", name: "storage", options: { file: 7 } }] },
    "devices[0].options.file: ",
  ],
  [
    "a device spec's kind is checked",
    { devices: [{ kind: "usb" }] },
    'devices[0].kind: must be one of "emulated" | "host" | "usbip", not "usb"',
  ],
  [
    "allowClients entries are strict",
    { allowClients: ["127.0.0.2/"] },
    'allowClients[0]: "127.0.0.2/" has no prefix length',
  ],
  [
    "unknown keys, nested too",
    { devices: [{ kind: "host", vendorid: 1 }] },
    'devices[0]: unknown key "vendorid"',
  ],
];

// Each case its own process, run side by side (the local `expect`, as concurrent tests need).
describe("usbvirt serve refuses bad settings with exit 2, naming the key", () => {
  it.concurrent.for(flagCases)("flag: %s", async ([, args, message], { expect }) => {
    const r = await usbvirt(["serve", ...(args[0] === "--port" ? [] : ["--port", "0"]), ...args]);
    expect({ served: r.served, code: r.code }).toEqual({ served: false, code: 2 });
    expect(r.err).toContain(`usbvirt serve: ${message}`);
  });

  it.concurrent.for(fileCases)("config file: %s", async ([, content, message], { expect }) => {
    const file = await configFile(content);
    const r = await usbvirt(["serve", "--port", "0", "--config", file]);
    expect({ served: r.served, code: r.code }).toEqual({ served: false, code: 2 });
    expect(r.err).toContain(`usbvirt serve: config file ${file}: ${message}`);
  });
});
