/**
 * Network namespaces for the tests that announce or discover: multicast DNS must never reach the machine's
 * real interfaces. A TestNamespace is made by the test (`ip netns add`), has only its loopback (up, with
 * multicast on and a 224.0.0.0/4 route on it), runs every process through `ip netns exec`, and is deleted
 * at the end. Before anything runs in it, create() checks that a process there is in another network
 * namespace than this one; each child checks it again itself (assertInTestNamespace) before it opens a
 * socket, and refuses to run anywhere else.
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from "node:child_process";
import { readlinkSync, statSync } from "node:fs";
import { command, missing, type Tool } from "./tools.js";

const ENV = "USBVIRT_TEST_NETNS";

/** What making namespaces needs: root and iproute2's `ip`. */
export function netnsTool(): Tool<string> {
  if (process.getuid?.() !== 0) return missing("network namespaces need root");
  return command(["ip"], "apt-get install iproute2");
}

export class TestNamespace {
  private constructor(readonly name: string) {}

  static create(): TestNamespace {
    const name = `usbvirt-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    execFileSync("ip", ["netns", "add", name]);
    const ns = new TestNamespace(name);
    try {
      execFileSync("ip", ["-n", name, "link", "set", "lo", "up", "multicast", "on"]);
      execFileSync("ip", ["-n", name, "route", "add", "224.0.0.0/4", "dev", "lo"]);
      const inside = execFileSync("ip", ["netns", "exec", name, "readlink", "/proc/self/ns/net"])
        .toString()
        .trim();
      const here = readlinkSync("/proc/self/ns/net");
      if (inside === here || inside === "") throw new Error(`namespace ${name} is this one (${here})`);
      const links = execFileSync("ip", ["-n", name, "-o", "link"]).toString().trim().split("\n");
      if (links.length !== 1 || !/^\d+: lo:/.test(links[0]!))
        throw new Error(`namespace ${name} has more than lo: ${links.join("; ")}`);
    } catch (err) {
      ns.close();
      throw err;
    }
    return ns;
  }

  /** Start `command args` inside the namespace (stdin, stdout and stderr piped). */
  spawn(
    command: string,
    args: readonly string[],
    env: Readonly<Record<string, string>> = {},
  ): ChildProcessWithoutNullStreams {
    return spawn("ip", ["netns", "exec", this.name, command, ...args], {
      env: { ...process.env, ...env, [ENV]: this.name },
      stdio: ["pipe", "pipe", "pipe"],
    });
  }

  /** Run `command args` inside the namespace to its end; its stdout. */
  run(command: string, args: readonly string[]): { code: number; stdout: string; stderr: string } {
    try {
      const stdout = execFileSync("ip", ["netns", "exec", this.name, command, ...args], {
        env: { ...process.env, [ENV]: this.name },
        stdio: ["ignore", "pipe", "pipe"],
      }).toString();
      return { code: 0, stdout, stderr: "" };
    } catch (err) {
      const e = err as { status: number; stdout: Buffer; stderr: Buffer };
      return { code: e.status, stdout: e.stdout.toString(), stderr: e.stderr.toString() };
    }
  }

  close(): void {
    execFileSync("ip", ["netns", "del", this.name], { stdio: "ignore" });
  }
}

/**
 * For a child process: exit at once unless it runs in the namespace the test made (named by the
 * environment) and that namespace is not the machine's own (pid 1's).
 */
export function assertInTestNamespace(): undefined {
  const name = process.env[ENV];
  const fail = (why: string): never => {
    process.stderr.write(`refusing to announce or discover: ${why}\n`);
    process.exit(3);
  };
  if (name === undefined || !/^usbvirt-test-/.test(name))
    return fail(`${ENV} does not name a test namespace`);
  const mine = readlinkSync("/proc/self/ns/net");
  let init = "";
  try {
    init = readlinkSync("/proc/1/ns/net");
  } catch {
    // pid 1's namespace cannot be read: compare with the named one only
  }
  if (mine === init) return fail("this process is in the machine's own network namespace");
  const inode = (p: string) => /\[(\d+)\]/.exec(p)?.[1];
  if (String(statSync(`/run/netns/${name}`).ino) !== inode(mine))
    return fail(`this process is not in namespace ${name}`);
}
