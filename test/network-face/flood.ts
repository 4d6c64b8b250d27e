/**
 * The attacker of the flood tests: a TCP peer that says what it must (a hello, an import request), then
 * writes the same bytes over and over, as fast as the kernel takes them, and never reads a byte of what
 * the server answers; it stops when the server closes the connection or the test says so.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";

/** `count` copies of `packet`, back to back: one write's worth of a flood. */
export function repeated(packet: Uint8Array, count: number): Buffer {
  const out = Buffer.alloc(packet.length * count);
  for (let i = 0; i < count; i++) out.set(packet, i * packet.length);
  return out;
}

/** What slow-reader.py waits for before it floods (and reads nothing after). */
export type SlowReaderAwait = "none" | "usbip-import" | "usbredir-connect";

/**
 * The attacker, in Python (slow-reader.py: its stdlib sets SO_RCVBUF and TCP_MAXSEG, which Node cannot),
 * with the smallest kernel buffers TCP allows: what the server answers stays in the server.
 */
export class SlowReader {
  closed = false;
  /** Bytes it had sent when the server dropped it. */
  sent = 0;
  readonly ready: Promise<void>;
  readonly done: Promise<void>;
  private readonly child: ChildProcess;

  constructor(port: number, prelude: Uint8Array, wait: SlowReaderAwait, unit: Uint8Array) {
    this.child = spawn(
      "python3",
      [
        SLOW_READER,
        String(port),
        Buffer.from(prelude).toString("hex"),
        wait,
        Buffer.from(unit).toString("hex"),
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    this.child.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
    });
    this.ready = new Promise((resolve, reject) => {
      this.child.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.startsWith("ready\n")) resolve();
        const m = /closed (\d+)/.exec(out);
        if (m !== null) {
          this.sent = Number(m[1]);
          this.closed = true;
        }
      });
      this.child.once("exit", () =>
        reject(new Error(`slow-reader.py exited before flooding: ${out} ${err}`)),
      );
    });
    this.ready.catch(() => undefined);
    this.done = new Promise((r) => this.child.once("exit", () => r()));
  }

  stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    return this.done;
  }
}

const SLOW_READER = join(import.meta.dirname, "slow-reader.py");
