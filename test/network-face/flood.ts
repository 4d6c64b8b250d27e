/**
 * The attacker of the flood tests: a TCP peer that says what it must (a hello, an import request), then
 * writes the same bytes over and over, as fast as the kernel takes them, and never reads a byte of what
 * the server answers; it stops when the server closes the connection or the test says so.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { expect } from "vitest";
import { eventually } from "../support/eventually.js";
import type { MeasuredServer } from "./measured-server.js";

/** `count` copies of `packet`, back to back: one write's worth of a flood. */
export function repeated(packet: Uint8Array, count: number): Buffer {
  const out = Buffer.alloc(packet.length * count);
  for (let i = 0; i < count; i++) out.set(packet, i * packet.length);
  return out;
}

/** What slow-reader.py waits for before it floods (and reads nothing after). */
export type SlowReaderAwait = "none" | "usbip-import" | "usbredir-connect";

/** What the attacker sends, and how it connects. */
export interface SlowReaderPlan {
  readonly port: number;
  /** Sent first (a hello, an import request). */
  readonly prelude: Uint8Array;
  /** What it reads before flooding (nothing after). */
  readonly wait: SlowReaderAwait;
  /** Sent over and over. */
  readonly unit: Uint8Array;
  /** Mutual TLS (files: the CA that signed the server's certificate, the client's certificate and key). */
  readonly tls?: { readonly ca: string; readonly cert: string; readonly key: string };
}

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

  constructor(plan: SlowReaderPlan) {
    const tls = plan.tls === undefined ? [] : [plan.tls.ca, plan.tls.cert, plan.tls.key];
    this.child = spawn(
      "python3",
      [
        SLOW_READER,
        String(plan.port),
        Buffer.from(plan.prelude).toString("hex"),
        plan.wait,
        Buffer.from(plan.unit).toString("hex"),
        ...tls,
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

/** What a flood did to the server. */
export interface FloodResult {
  /** The most the server's RSS grew over its level before the flood, bytes. */
  readonly growth: number;
  /** The bound it was held to, bytes. */
  readonly bound: number;
  /** The most unsent bytes the server's stats reported (null: its stats have no unsent counter). */
  readonly unsent: number | null;
  /** The bound the unsent counter was held to. */
  readonly unsentBound: number;
  /** The server closed the connection. */
  readonly dropped: boolean;
  /** Log lines the server wrote from the peer's connection on, up to the end of the flood. */
  readonly lines: string[];
  /** Where they start in the server's log. */
  readonly since: number;
}

/** The largest number under a key naming unsent bytes, anywhere in the server's stats. */
export function unsentIn(stats: unknown): number | null {
  let most: number | null = null;
  const walk = (v: unknown, key: string) => {
    if (typeof v === "number" && /unsent/i.test(key)) most = Math.max(most ?? 0, v);
    else if (v !== null && typeof v === "object")
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) walk(x, Array.isArray(v) ? key : k);
  };
  walk(stats, "");
  return most;
}

/** The bounds a flood is held to. */
export interface FloodBounds {
  /** Growth of the server's resident memory, bytes. */
  readonly rss: number;
  /** The server's own unsent counter: its maxUnsentBytes, plus the replies to one read buffer of requests. */
  readonly unsent: number;
  /** Only turns a hang into a failure (a server held to its bounds may answer a slow flood slowly). */
  readonly limitMs: number;
}

/**
 * Start `peer` on `server` and watch the server's memory and its unsent counter until it drops the peer,
 * or (the defect) either passes its bound; the peer is stopped either way.
 */
export async function measureFlood(
  server: MeasuredServer,
  start: () => SlowReader,
  bounds: FloodBounds,
): Promise<FloodResult> {
  const linesBefore = server.lines().length;
  const before = server.rss();
  const peer = start();
  let growth = 0;
  let unsent: number | null = null;
  let dropped = false;
  let over = false;
  let sampling = true;
  // The stats go over IPC: sampled as fast as the server answers, beside the RSS checks.
  const sampler = (async () => {
    while (sampling) {
      const u = unsentIn(await server.stats());
      if (u !== null) unsent = Math.max(unsent ?? 0, u);
      if (u !== null && u > bounds.unsent) over = true;
    }
  })();
  try {
    await peer.ready;
    await eventually(
      () => {
        growth = Math.max(growth, server.rss() - before);
        dropped = peer.closed;
        return dropped || over || growth > bounds.rss;
      },
      bounds.limitMs,
      "the server to drop the flooding peer",
    );
  } finally {
    sampling = false;
    await sampler;
    await peer.stop();
  }
  return {
    growth,
    bound: bounds.rss,
    unsent,
    unsentBound: bounds.unsent,
    dropped,
    lines: server.lines().slice(linesBefore),
    since: linesBefore,
  };
}

const MiB = 1024 * 1024;

/** The result in words, for assertion messages. */
export function verdict(r: FloodResult): string {
  return (
    `the server grew by ${(r.growth / MiB).toFixed(1)} MiB (bound ${(r.bound / MiB).toFixed(1)} MiB), ` +
    `its unsent counter reached ${r.unsent ?? "(none)"} (bound ${r.unsentBound}); ` +
    `dropped: ${r.dropped}; ${r.lines.length} log lines, the first:\n${r.lines.slice(0, 4).join("\n")}`
  );
}

/**
 * What every flood test asks: the server's memory stayed within the bound, it dropped the peer with an
 * error line saying why, and wrote no line per packet (fewer than `maxLines` from the connection on).
 */
export async function expectBounded(server: MeasuredServer, r: FloodResult, maxLines = 12): Promise<void> {
  expect(r.growth, verdict(r)).toBeLessThanOrEqual(r.bound);
  expect(r.unsent ?? 0, verdict(r)).toBeLessThanOrEqual(r.unsentBound);
  expect(r.dropped, verdict(r)).toBe(true);
  // The peer by its address, and its certificate's name over TLS.
  const dropLine = (l: string) =>
    /usbvirt error: 127\.0\.0\.1:\d+( \([^)]*\))?: .*closing the connection/.test(l);
  await eventually(() => server.lines().slice(r.since).some(dropLine), 5000, "the line that drops the peer");
  const lines = server.lines().slice(r.since);
  expect(lines.length, lines.slice(0, 8).join("\n")).toBeLessThan(maxLines);
}
