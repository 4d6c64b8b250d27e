/**
 * The usbfs path (src/devices/host/usbfs-iso.ts) where umockdev cannot take it: a SUBMITURB refused in the
 * middle of a request (the host-wide usbfs memory budget), packets that overlap beyond the guest's buffer,
 * a URB answered before the kernel gave it back, and what the reaper's poll costs the libuv pool. The libc
 * under the channel is a fake kernel (it keeps the URBs the channel submits and writes results into them
 * as usbfs does), except in the pool test, where poll() is the real one on a real pipe that never becomes
 * ready (bench/usbfs-never-ready.ts): four channels waiting on it must leave the pool free for file I/O.
 */
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { NeverReadyUsbfs } from "../../bench/usbfs-never-ready.js";
import type { TransferRequest, TransferResult } from "../../src/devices/device.js";
import {
  POLL_SLICE_ENV,
  POLL_SLICE_MS,
  pollSliceOf,
  probeUsbfs,
  USBFS_MAX_PACKETS_PER_URB,
  UsbfsChannel,
} from "../../src/devices/host/usbfs-iso.js";
import { ECONNRESET, EINVAL, ENOMEM, ESHUTDOWN, OK } from "../../src/urb/status.js";
import { eventually } from "../support/eventually.js";
import { found, missing, need, skipWithout } from "../support/tools.js";

type Libc = Parameters<typeof UsbfsChannel.open>[0];

// include/uapi/linux/usbdevice_fs.h (as the module under test uses them).
const SUBMITURB = 0x8038550a;
const DISCARDURB = 0x0000550b;
const REAPURBNDELAY = 0x4008550d;
const CLAIMINTERFACE = 0x8004550f;
const RELEASEINTERFACE = 0x80045510;
const EAGAIN = 11;
const ENOMEM_ERRNO = 12;
const ENOENT_ERRNO = 2;
const URB_SIZE = 56;
const DESC = 12;

interface Submitted {
  readonly urb: Buffer;
  readonly address: bigint;
}

/** A kernel with a usbfs fd: keeps submitted URBs, completes them on demand, reaps them in order. */
class FakeKernel {
  readonly submitted: Submitted[] = [];
  readonly reapable: bigint[] = [];
  /** SUBMITURB number `failAt` (0-based) fails with `failErrno`. */
  failAt = -1;
  failErrno = ENOMEM_ERRNO;
  errnoValue = 0;
  readonly closedFds: number[] = [];
  readonly claims = new Set<number>();
  pollTimeouts: number[] = [];
  private pendingPoll: ((err: unknown, ready: number) => void) | null = null;
  private readonly addresses = new WeakMap<ArrayBufferLike, bigint>();
  private nextBase = 0x10_0000n;

  address(view: Uint8Array): bigint {
    let base = this.addresses.get(view.buffer);
    if (base === undefined) {
      base = this.nextBase;
      this.nextBase += 0x100_0000n;
      this.addresses.set(view.buffer, base);
    }
    return base + BigInt(view.byteOffset);
  }

  /** Complete submitted URB `i` as the kernel would: every packet with `status` and `actual` bytes. */
  complete(i: number, status: number, actual: (packet: number, length: number) => number): void {
    const { urb, address } = this.submitted[i]!;
    const count = urb.readInt32LE(36);
    urb.writeInt32LE(count > 0 ? 0 : status, 4);
    for (let p = 0; p < count; p++) {
      const at = URB_SIZE + DESC * p;
      urb.writeUInt32LE(actual(p, urb.readUInt32LE(at)), at + 4);
      urb.writeInt32LE(status, at + 8);
    }
    this.reapable.push(address);
  }

  /** The poll the channel armed returns "a URB is ready". */
  firePoll(): void {
    const cb = this.pendingPoll;
    this.pendingPoll = null;
    if (cb === null) throw new Error("no poll armed");
    cb(null, 1);
  }

  /** The poll the channel armed returns at its timeout: nothing ready. */
  timeoutPoll(): void {
    const cb = this.pendingPoll;
    this.pendingPoll = null;
    if (cb === null) throw new Error("no poll armed");
    cb(null, 0);
  }

  get pollArmed(): boolean {
    return this.pendingPoll !== null;
  }

  libc(): Libc {
    const fail = (e: number) => {
      this.errnoValue = e;
      return -1;
    };
    return {
      koffi: null as never,
      open: () => 40,
      close: (fd) => {
        this.closedFds.push(fd);
        return 0;
      },
      ioctl: (_fd, request, arg) => {
        if (request === SUBMITURB) {
          if (this.submitted.length === this.failAt) {
            this.failAt = -1;
            return fail(this.failErrno);
          }
          const urb = arg as Buffer;
          this.submitted.push({ urb, address: this.address(urb) });
          return 0;
        }
        if (request === CLAIMINTERFACE) this.claims.add(Buffer.from(arg!).readUInt32LE(0));
        if (request === RELEASEINTERFACE) this.claims.delete(Buffer.from(arg!).readUInt32LE(0));
        if (request === REAPURBNDELAY) {
          const address = this.reapable.shift();
          if (address === undefined) return fail(EAGAIN);
          Buffer.from(arg!.buffer, arg!.byteOffset, 8).writeBigUInt64LE(address, 0);
          return 0;
        }
        return 0;
      },
      ioctlValue: (_fd, request, arg) => {
        if (request !== DISCARDURB) return 0;
        const i = this.submitted.findIndex((s) => s.address === arg);
        if (i < 0 || this.reapable.includes(arg)) return fail(22);
        this.complete(i, -ENOENT_ERRNO, () => 0); // usb_kill_urb: every packet -ENOENT, nothing moved
        return 0;
      },
      poll: {
        async: (_fds: Uint8Array, _n: number, timeout: number, cb: (err: unknown, ready: number) => void) => {
          this.pollTimeouts.push(timeout);
          this.pendingPoll = cb;
        },
      } as unknown as Libc["poll"],
      pipe2: (fds) => {
        fds[0] = 41;
        fds[1] = 42;
        return 0;
      },
      read: () => 0,
      write: () => {
        // The wake pipe: the armed poll returns.
        const cb = this.pendingPoll;
        this.pendingPoll = null;
        if (cb !== null) setImmediate(() => cb(null, 1));
        return 1;
      },
      errno: () => this.errnoValue,
      address: (view) => this.address(view),
    };
  }
}

function openChannel(kernel: FakeKernel, log: string[] = []): UsbfsChannel {
  const channel = UsbfsChannel.open(kernel.libc(), 1, 2, { log: (m) => log.push(m), onGone: () => {} });
  if (typeof channel === "string") throw new Error(channel);
  return channel;
}

/** An iso IN of `count` packets of `length` bytes, `stride` apart (a stride above the length forces a bounce). */
function isoIn(count: number, length: number, stride: number, bufferLength?: number): TransferRequest {
  const packets = Array.from({ length: count }, (_, i) => ({ offset: i * stride, length }));
  return {
    kind: "isochronous",
    endpoint: 2,
    directionIn: true,
    setup: null,
    buffer: new Uint8Array(bufferLength ?? (count - 1) * stride + length),
    shortNotOk: false,
    zeroPacket: false,
    interval: 1,
    isoPackets: packets,
    streamId: 0,
  };
}

function collector() {
  const results: TransferResult[] = [];
  return { results, done: (r: TransferResult) => results.push(r) };
}

describe("usbfs channel against a fake kernel", () => {
  it("a request whose second usbfs URB is refused answers each of its packets exactly once, the submitted ones as reaped", async () => {
    const kernel = new FakeKernel();
    kernel.failAt = 1; // the second 128-packet URB: ENOMEM (usbfs_memory_mb exhausted)
    const channel = openChannel(kernel);
    const { results, done } = collector();
    const request = isoIn(200, 8, 16); // gaps between packets: bounced
    channel.submit(1, request, done);
    expect(kernel.submitted).toHaveLength(1);
    expect(channel.stats.bounces).toBe(1);
    // The first URB was discarded when the second failed; the kernel gives it back -ENOENT.
    expect(kernel.reapable).toHaveLength(1);
    expect(() => kernel.firePoll()).not.toThrow();
    expect(results).toHaveLength(1);
    const r = results[0]!;
    expect(r.status).toBe(ENOMEM);
    expect(r.isoPackets).toHaveLength(200);
    expect(r.isoPackets!.slice(0, USBFS_MAX_PACKETS_PER_URB).every((p) => p.status === ECONNRESET)).toBe(
      true,
    );
    expect(r.isoPackets!.slice(USBFS_MAX_PACKETS_PER_URB).every((p) => p.status === ENOMEM)).toBe(true);
    expect(channel.inFlight).toBe(0);
    await channel.close();
  });

  it("a request refused at its first usbfs URB answers every packet with the refusal", async () => {
    const kernel = new FakeKernel();
    kernel.failAt = 0;
    const channel = openChannel(kernel);
    const { results, done } = collector();
    channel.submit(1, isoIn(4, 8, 8), done);
    await eventually(() => results.length === 1, 2000, "the refused request answered");
    expect(results[0]!.status).toBe(ENOMEM);
    expect(results[0]!.isoPackets?.map((p) => p.status)).toEqual([ENOMEM, ENOMEM, ENOMEM, ENOMEM]);
    await channel.close();
  });

  it("refuses with -EINVAL packets that overlap beyond the guest's buffer, before any bounce or URB", async () => {
    const kernel = new FakeKernel();
    const channel = openChannel(kernel);
    const { results, done } = collector();
    // 64 packets of 1024 bytes, all at offset 0 of a 1024-byte buffer: a bounce would be 64 KiB.
    channel.submit(1, isoIn(64, 1024, 0, 1024), done);
    await eventually(() => results.length === 1, 2000, "the oversized request answered");
    expect(results[0]!.status).toBe(EINVAL);
    expect(results[0]!.isoPackets).toHaveLength(64);
    expect(kernel.submitted).toHaveLength(0);
    expect(channel.stats).toMatchObject({ bounces: 0, bounceBytes: 0, oversizedBounces: 1 });
    // Overlap that still fits the guest's buffer is bounced as before.
    channel.submit(2, isoIn(4, 16, 8, 64), done);
    expect(kernel.submitted).toHaveLength(1);
    expect(channel.stats).toMatchObject({ bounces: 1, bounceBytes: 64 });
    kernel.complete(0, 0, (_p, length) => length);
    kernel.firePoll();
    expect(results[1]!.status).toBe(OK);
    await channel.close();
  });

  it("a request answered before the kernel gave its URBs back (drain timeout) keeps its URBs and bounce until close", async () => {
    const kernel = new FakeKernel();
    const channel = openChannel(kernel);
    const { results, done } = collector();
    const request = isoIn(4, 100, 128); // bounced: 400 bytes
    channel.submit(1, request, done);
    // drain() discards it; the kernel has it back but the poll never returns within the limit: not reaped.
    await channel.drain("close", 1);
    expect(kernel.reapable).toHaveLength(1);
    expect(results).toHaveLength(1);
    expect(results[0]!.status).toBe(ESHUTDOWN);
    expect(results[0]!.isoPackets).toHaveLength(4);
    // The URB (56 + 4 × 12 bytes) and the 400-byte bounce it points at stay alive for the kernel.
    expect(channel.stats.heldForKernelBytes).toBe(URB_SIZE + 4 * DESC + 400);
    await channel.close();
    expect(channel.stats.heldForKernelBytes).toBe(0);
  });

  it("arms a finite poll, not poll(-1), and re-arms it at each timeout while URBs are in flight", async () => {
    const kernel = new FakeKernel();
    const channel = openChannel(kernel);
    const { results, done } = collector();
    channel.submit(1, isoIn(2, 8, 8), done);
    expect(kernel.pollTimeouts).toHaveLength(1);
    expect(kernel.pollTimeouts[0]).toBeGreaterThan(0);
    kernel.timeoutPoll();
    kernel.timeoutPoll();
    expect(kernel.pollTimeouts).toHaveLength(3);
    kernel.complete(0, 0, (_p, length) => length);
    kernel.firePoll();
    expect(results.map((r) => r.status)).toEqual([OK]);
    expect(kernel.pollArmed).toBe(false); // nothing in flight: no poll holds a pool thread
    await channel.close();
  });

  it("polls without a timeout when the slice is indefinite (the old reaper, which bench/iso.ts measures against the slice)", async () => {
    const kernel = new FakeKernel();
    const channel = UsbfsChannel.open(kernel.libc(), 1, 2, {
      log: () => {},
      onGone: () => {},
      pollSliceMs: Number.POSITIVE_INFINITY,
    });
    if (typeof channel === "string") throw new Error(channel);
    channel.submit(1, isoIn(2, 8, 8), () => {});
    expect(kernel.pollTimeouts).toEqual([-1]);
    await channel.close();
  });

  it("takes the poll slice from the option, else the environment, else 50 ms, and refuses one that is not whole milliseconds", () => {
    expect(pollSliceOf(undefined, {})).toBe(POLL_SLICE_MS);
    expect(pollSliceOf(undefined, { [POLL_SLICE_ENV]: "indefinite" })).toBe(Number.POSITIVE_INFINITY);
    expect(pollSliceOf(undefined, { [POLL_SLICE_ENV]: "20" })).toBe(20);
    expect(pollSliceOf(5, { [POLL_SLICE_ENV]: "20" })).toBe(5);
    for (const bad of ["0", "1.5", "-1", "", "50ms", "60001", "Infinity"])
      expect(pollSliceOf(undefined, { [POLL_SLICE_ENV]: bad })).toBe(
        `${POLL_SLICE_ENV}=${JSON.stringify(bad)}: the usbfs poll slice must be a whole number of milliseconds from 1 to 60000, or indefinite`,
      );
    expect(pollSliceOf(0, {})).toMatch(/^pollSliceMs 0: /);
    // A channel refuses to open with such a slice, saying why (the host device logs it once).
    const refused = UsbfsChannel.open(new FakeKernel().libc(), 1, 2, {
      log: () => {},
      onGone: () => {},
      pollSliceMs: 0.5,
    });
    expect(refused).toMatch(/^pollSliceMs 0\.5: the usbfs poll slice must be/);
  });

  it("abandon (a port worker ending without close) releases the claims and closes the fd and the wake pipe at once", () => {
    const kernel = new FakeKernel();
    const channel = openChannel(kernel);
    expect(channel.claim(1)).toBe(0);
    channel.submit(1, isoIn(4, 8, 8), () => {});
    expect(kernel.claims).toEqual(new Set([1]));
    channel.abandon();
    expect(kernel.claims).toEqual(new Set());
    expect(kernel.closedFds.sort()).toEqual([40, 41, 42]);
    expect(kernel.pollArmed).toBe(false); // the poll on the pool was woken through the pipe
  });
});

const probed = probeUsbfs();
const realLibc = probed.ok ? found(probed) : missing(`the usbfs path cannot load here: ${probed.reason}`);

describe.skipIf(skipWithout("the usbfs channel test on the real libuv pool", realLibc))(
  "usbfs channel on the real libuv pool",
  () => {
    it("four channels with URBs pending leave the pool free: a file read completes while they wait", async () => {
      // Each channel's "device" is the read end of a real pipe nobody writes: poll() never reports it ready
      // (bench/usbfs-never-ready.ts), so the waits occupy real pool threads.
      const device = new NeverReadyUsbfs(need(realLibc).libc);
      const channels: UsbfsChannel[] = [];
      try {
        for (let i = 0; i < 4; i++) {
          const c = UsbfsChannel.open(device.libc, 1, 2 + i, { log: () => {}, onGone: () => {} });
          if (typeof c === "string") throw new Error(c);
          channels.push(c);
          c.submit(1, isoIn(2, 8, 8), () => {});
        }
        // The pool has 4 threads (UV_THREADPOOL_SIZE unset): with a poll(-1) each, this read would never run.
        const read = readFile(new URL(import.meta.url)).then(() => "read");
        const verdict = await Promise.race([
          read,
          new Promise<string>((resolve) => setTimeout(() => resolve("pool still held after 5 s"), 5000)),
        ]);
        expect(verdict).toBe("read");
      } finally {
        for (const c of channels) await c.close();
        device.close();
      }
    });
  },
);
