/**
 * Isochronous (and same-interface bulk/interrupt) transfers to a host device
 * through Linux usbfs directly: the native boundary for what npm `usb@2`
 * cannot do. The ONLY module that loads `koffi` (an optionalDependency: an FFI
 * with prebuilt binaries for every platform, so no compiler on a user's
 * machine), and through it calls libc's open / ioctl / poll / pipe2 / read /
 * write / close on /dev/bus/usb/BBB/DDD (Linux include/uapi/linux/usbdevice_fs.h,
 * drivers/usb/core/devio.c).
 *
 * Why a second file descriptor, and why it owns whole interfaces: usbfs
 * claims are per open file. libusb (node-usb) has its own fd on the device and
 * reaps every URB completed on it, so URBs of ours can never travel on that
 * fd; and a URB on a second fd to an interface the first fd claimed fails
 * (-EBUSY, the implicit claim in devio.c checkintf). So the host device hands
 * every interface that has an isochronous endpoint in any alternate setting
 * to this module (CLAIMINTERFACE on our fd, libusb never claims it), and
 * everything on those interfaces goes through here: iso, bulk and interrupt
 * URBs, SET_INTERFACE (USBDEVFS_SETINTERFACE) and CLEAR_HALT. Control
 * transfers and the other interfaces stay with libusb.
 *
 * Why libc through `koffi.load(null)` (dlopen(NULL)): symbols are looked up
 * in the process's global scope, so an LD_PRELOADed libc wrapper (umockdev's
 * usbdevfs emulation, test/host) interposes exactly as it does for libusb.
 *
 * Transfers: an iso request becomes one usbfs URB per 128 packets (usbfs's
 * limit; the engine allows 1024), USBDEVFS_URB_ISO_ASAP (the guest's frame
 * numbers mean nothing to the host's controller), and the kernel schedules it
 * at the endpoint descriptor's bInterval (devio.c sets urb->interval from the
 * descriptor). usbfs wants the packets back to back in one buffer; when the
 * guest's packet offsets are back to back (the usual case) the URB points
 * straight at guest memory (a SharedArrayBuffer never moves), otherwise at a
 * bounce buffer (counted) no larger than the guest's buffer: packets that
 * overlap so much that they would need more are refused with -EINVAL. A
 * bounce buffer and its URBs stay referenced until the kernel gave them back
 * (reaped) or the fd is closed, even when their request was answered early
 * (a drain timeout). When a later 128-packet URB of a request cannot be
 * submitted, the submitted ones are discarded and the request answers once
 * they are back: every packet gets a result, those never submitted carry the
 * submit's status. Per-packet status and actual length come back in
 * the URB's iso_frame_desc[]; kernel errnos become URB statuses through
 * USBFS_STATUS_TABLE (./status.ts). An unlink is USBDEVFS_DISCARDURB; the
 * discarded URB is still reaped, and completes with -ECONNRESET.
 *
 * Reaping never spins the event loop: while URBs are in flight, one poll()
 * on {device fd POLLOUT, wake pipe POLLIN} runs on the libuv pool (koffi
 * async); usbfs signals POLLOUT when a completed URB waits, POLLHUP/POLLERR
 * when the device is gone. The poll is finite (POLL_SLICE_MS) and re-armed
 * while URBs are in flight, so a pool thread (libuv has 4 for the whole
 * process: file I/O, DNS, libusb's blocking calls) is never held for longer
 * than one slice: other pool work queued meanwhile runs between two slices,
 * and a worker that terminates waits one slice at most. (The slice is an
 * internal option, with poll(-1) as one value of it, only so that bench/iso.ts
 * can measure the finite poll against the indefinite one.) On return the event
 * loop thread reaps with REAPURBNDELAY until EAGAIN. A poll that says "ready"
 * but yields nothing (umockdev's emulated node is a socket, always writable)
 * re-arms after 1 ms. close() wakes the poll through the pipe and closes the
 * fds only after it returned.
 *
 * struct usbdevfs_urb (LP64: x86-64, arm64), then number_of_packets ×
 * struct usbdevfs_iso_packet_desc:
 *
 *    0  type u8 (0 iso, 1 interrupt, 3 bulk)   1 endpoint u8   2..3 pad
 *    4  status i32          8 flags u32           12 pad
 *   16  buffer ptr         24 buffer_length i32   28 actual_length i32
 *   32  start_frame i32    36 number_of_packets i32
 *   40  error_count i32    44 signr u32          48 usercontext ptr
 *   56  iso_frame_desc[i]: length u32, actual_length u32, status i32 (12 bytes)
 */
import { createRequire } from "node:module";
import type * as KoffiModule from "koffi";
import {
  ECONNRESET,
  EINVAL,
  ENODEV,
  EPROTO,
  EREMOTEIO,
  ESHUTDOWN,
  OK,
  type UrbStatus,
} from "../../urb/status.js";
import type {
  IsoPacketResult,
  TransferDone,
  TransferHandle,
  TransferRequest,
  TransferResult,
} from "../device.js";
import { usbfsStatus } from "./status.js";

// include/uapi/linux/usbdevice_fs.h, generic _IOC encoding (x86-64, arm64).
const USBDEVFS_SETINTERFACE = 0x80085504;
const USBDEVFS_SUBMITURB = 0x8038550a;
const USBDEVFS_DISCARDURB = 0x0000550b;
/** Exported for bench/usbfs-never-ready.ts, whose device has nothing to reap. */
export const USBDEVFS_REAPURBNDELAY = 0x4008550d;
const USBDEVFS_CLAIMINTERFACE = 0x8004550f;
const USBDEVFS_RELEASEINTERFACE = 0x80045510;
const USBDEVFS_CLEAR_HALT = 0x80045515;

const URB_TYPE_ISO = 0;
const URB_TYPE_INTERRUPT = 1;
const URB_TYPE_BULK = 3;
const URB_SHORT_NOT_OK = 0x01;
const URB_ISO_ASAP = 0x02;
const URB_ZERO_PACKET = 0x40;

/** struct usbdevfs_urb field offsets (LP64), asserted against the size below. */
const kType = 0;
const kEndpoint = 1;
const kStatus = 4;
const kFlags = 8;
const kBuffer = 16;
const kBufferLength = 24;
const kActualLength = 28;
const kStartFrame = 32;
const kNumberOfPackets = 36;
const URB_SIZE = 56;
const ISO_DESC_SIZE = 12;
/** usbfs refuses more packets per URB (devio.c: number_of_packets > 128 → -EINVAL). */
export const USBFS_MAX_PACKETS_PER_URB = 128;
if (kNumberOfPackets + 4 + 4 + 4 + 8 !== URB_SIZE) throw new Error("usbdevfs_urb layout is inconsistent");

/** Longest a poll holds a libuv pool thread before it is re-armed (see the header). */
export const POLL_SLICE_MS = 50;
/** The longest slice the option takes; Infinity stands for poll(-1). */
const MAX_POLL_SLICE_MS = 60_000;
/**
 * The environment variable that sets the slice for every channel of the process (port workers inherit
 * it): milliseconds, or `indefinite`. The bench's switch (bench/iso.ts), not a setting for users.
 */
export const POLL_SLICE_ENV = "USBVIRT_USBFS_POLL_SLICE_MS";

/**
 * The poll slice a channel uses: `asked` (UsbfsChannelOptions.pollSliceMs), else the environment's,
 * else POLL_SLICE_MS. Infinity is one poll(-1) for as long as nothing completes (the reaper before
 * the finite slice). A sentence when the value is not a whole number of milliseconds from 1 to 60000.
 */
export function pollSliceOf(
  asked: number | undefined,
  env: NodeJS.ProcessEnv = process.env,
): number | string {
  const raw = env[POLL_SLICE_ENV];
  const fromEnv =
    raw === undefined
      ? undefined
      : raw === "indefinite"
        ? Infinity
        : /^[0-9]+$/.test(raw)
          ? Number(raw)
          : NaN;
  const slice = asked ?? fromEnv ?? POLL_SLICE_MS;
  if (slice === Infinity || (Number.isInteger(slice) && slice >= 1 && slice <= MAX_POLL_SLICE_MS))
    return slice;
  const what = asked !== undefined ? `pollSliceMs ${asked}` : `${POLL_SLICE_ENV}=${JSON.stringify(raw)}`;
  return `${what}: the usbfs poll slice must be a whole number of milliseconds from 1 to ${MAX_POLL_SLICE_MS}, or indefinite`;
}

// poll.h and fcntl.h (Linux generic).
const POLLIN = 0x001;
const POLLOUT = 0x004;
const POLLERR = 0x008;
const POLLHUP = 0x010;
const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const EAGAIN = 11;
const EINTR = 4;
const ENODEV_ERRNO = 19;

/** The libc calls this module makes, bound once per thread. */
interface Libc {
  readonly koffi: typeof KoffiModule;
  open(path: string, flags: number): number;
  close(fd: number): number;
  ioctl(fd: number, request: number, arg: Uint8Array | null): number;
  /** ioctl with an integer argument (DISCARDURB takes the URB's address itself). */
  ioctlValue(fd: number, request: number, arg: bigint): number;
  poll: KoffiModule.KoffiFunc<(fds: Uint8Array, n: number, timeout: number) => number>;
  pipe2(fds: Int32Array, flags: number): number;
  read(fd: number, buf: Uint8Array, n: number): number;
  write(fd: number, buf: Uint8Array, n: number): number;
  errno(): number;
  address(view: Uint8Array): bigint;
}

/** Why the usbfs path cannot be used here (a sentence for the one log line), or the bound calls. */
export type UsbfsLoad =
  | { readonly ok: true; readonly libc: Libc }
  | { readonly ok: false; readonly reason: string };

let loaded: UsbfsLoad | null = null;

/** What loadUsbfs needs of Node's `require` (tests pass one that cannot find the package). */
export type KoffiRequire = (id: string) => unknown;

/**
 * Bind libc through koffi, once per thread. Never throws: where the platform,
 * the package or its binary is missing, the reason says which.
 */
export function loadUsbfs(): UsbfsLoad {
  if (loaded !== null) return loaded;
  loaded = probeUsbfs();
  return loaded;
}

/** loadUsbfs without the cache (tests pass a `req` that cannot find koffi). */
export function probeUsbfs(req: KoffiRequire = createRequire(import.meta.url)): UsbfsLoad {
  if (process.platform !== "linux") return { ok: false, reason: "usbfs exists only on Linux" };
  if (process.arch !== "x64" && process.arch !== "arm64") {
    return {
      ok: false,
      reason: `the usbfs URB layout is only defined here for x64 and arm64, not ${process.arch}`,
    };
  }
  let koffi: typeof KoffiModule;
  try {
    koffi = req("koffi") as typeof KoffiModule;
  } catch (err) {
    return {
      ok: false,
      reason: `they need the optional package 'koffi' (npm install koffi): ${(err as Error).message.split("\n")[0]}`,
    };
  }
  try {
    const libc = koffi.load(null); // the global scope: an LD_PRELOADed wrapper interposes (see the header)
    const ioctl = libc.func("int ioctl(int fd, unsigned long request, void *arg)");
    const ioctlValue = libc.func("int ioctl(int fd, unsigned long request, uintptr_t arg)");
    const poll = libc.func("int poll(void *fds, unsigned long nfds, int timeout)");
    return {
      ok: true,
      libc: {
        koffi,
        open: libc.func("int open(const char *path, int flags)"),
        close: libc.func("int close(int fd)"),
        ioctl,
        ioctlValue,
        poll: poll as Libc["poll"],
        pipe2: libc.func("int pipe2(int *fds, int flags)"),
        read: libc.func("long read(int fd, void *buf, unsigned long n)"),
        write: libc.func("long write(int fd, void *buf, unsigned long n)"),
        errno: () => koffi.errno(),
        address: (view) => koffi.address(view) as bigint,
      },
    };
  } catch (err) {
    return { ok: false, reason: `binding libc through koffi failed: ${(err as Error).message}` };
  }
}

/** How this module's URBs and calls went, for HostUsbDevice.stats. */
export interface UsbfsStats {
  /** Requests submitted through usbfs, and the usbfs URBs they became. */
  requests: number;
  urbs: number;
  /** Iso requests whose packets were not back to back in guest memory: bounced. */
  bounces: number;
  bounceBytes: number;
  discards: number;
  /** Refused because their packets overlap so much that a bounce buffer would outgrow the guest's buffer. */
  oversizedBounces: number;
  /** Bytes (URBs and bounce buffers) of answered requests the kernel has not given back: kept until close. */
  heldForKernelBytes: number;
}

/** The host device's view of one usbfs-owned interface set. */
export interface UsbfsChannelOptions {
  readonly log: (message: string) => void;
  /** The first sign that the device is gone (a reap, a submit or poll said so). */
  readonly onGone: (reason: string) => void;
  /** Internal (bench/iso.ts): the poll slice, see pollSliceOf. */
  readonly pollSliceMs?: number;
}

type CancelReason = "unlink" | "close" | "gone";

interface Flight {
  readonly handle: TransferHandle;
  readonly request: TransferRequest;
  readonly done: TransferDone;
  /** One per usbfs URB (≤ 128 packets each); kept referenced until reaped (the kernel writes into them). */
  readonly urbs: Buffer[];
  readonly addresses: bigint[];
  /** Packet index where each URB's packets start. */
  readonly firstPacket: number[];
  /** The buffer the URBs point into when it is not the guest's view. */
  readonly bounce: Uint8Array | null;
  /** URBs submitted and not yet reaped. */
  pending: number;
  cancelledBy: CancelReason | null;
  /** A later URB of the request failed to submit: the request completes with this once the others are back. */
  failed: UrbStatus | null;
}

/**
 * One usbfs file descriptor on a device, owning the interfaces it claimed.
 * Created by HostUsbDevice when the device has isochronous endpoints and the
 * usbfs path loads; every call is made from the port worker's event loop.
 */
export class UsbfsChannel {
  readonly stats: UsbfsStats = {
    requests: 0,
    urbs: 0,
    bounces: 0,
    bounceBytes: 0,
    discards: 0,
    oversizedBounces: 0,
    heldForKernelBytes: 0,
  };
  private readonly flights = new Map<TransferHandle, Flight>();
  private readonly byAddress = new Map<bigint, Flight>();
  private readonly claimedInterfaces = new Set<number>();
  private readonly pollfds = Buffer.alloc(16);
  private readonly wake: Int32Array;
  /** poll()'s timeout: the slice in ms, -1 for the indefinite poll. */
  private readonly pollTimeout: number;
  private polling = false;
  private pollSettled: (() => void) | null = null;
  private backoff: NodeJS.Timeout | null = null;
  private closed = false;
  private gone = false;
  private drained: (() => void) | null = null;
  private readonly scratch = Buffer.alloc(8);
  private readonly oneByte = new Uint8Array(8);
  /** URBs and bounce buffers of requests answered without being reaped: the kernel may still write them until close. */
  private limbo: Uint8Array[] = [];

  private constructor(
    private readonly libc: Libc,
    private readonly fd: number,
    wake: Int32Array,
    pollSliceMs: number,
    private readonly options: UsbfsChannelOptions,
  ) {
    this.wake = wake;
    this.pollTimeout = pollSliceMs === Infinity ? -1 : pollSliceMs;
    this.pollfds.writeInt32LE(fd, 0);
    this.pollfds.writeInt16LE(POLLOUT, 4);
    this.pollfds.writeInt32LE(wake[0]!, 8);
    this.pollfds.writeInt16LE(POLLIN, 12);
  }

  /** Open /dev/bus/usb/BBB/DDD; a sentence on failure. */
  static open(
    libc: Libc,
    busNumber: number,
    deviceAddress: number,
    options: UsbfsChannelOptions,
  ): UsbfsChannel | string {
    const slice = pollSliceOf(options.pollSliceMs);
    if (typeof slice === "string") return slice;
    const path = `/dev/bus/usb/${String(busNumber).padStart(3, "0")}/${String(deviceAddress).padStart(3, "0")}`;
    const fd = libc.open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return `cannot open ${path} (errno ${libc.errno()})`;
    const wake = new Int32Array(2);
    if (libc.pipe2(wake, O_CLOEXEC | O_NONBLOCK) !== 0) {
      const e = libc.errno();
      libc.close(fd);
      return `pipe2 failed (errno ${e})`;
    }
    return new UsbfsChannel(libc, fd, wake, slice, options);
  }

  get inFlight(): number {
    return this.flights.size;
  }

  /** USBDEVFS_CLAIMINTERFACE on this fd; 0 or a positive errno. */
  claim(interfaceNumber: number): number {
    const rc = this.intCall(USBDEVFS_CLAIMINTERFACE, interfaceNumber);
    if (rc === 0) this.claimedInterfaces.add(interfaceNumber);
    return rc;
  }

  /** Release every interface this fd claimed. */
  releaseAll(): void {
    for (const n of this.claimedInterfaces) this.intCall(USBDEVFS_RELEASEINTERFACE, n);
    this.claimedInterfaces.clear();
  }

  /**
   * Claim the owned interfaces again after a port reset: the kernel unbinds
   * usbfs from every interface of a reset device (usbfs has no reset hooks)
   * and libusb re-claims only its own. Returns the interfaces that failed.
   */
  reclaim(): number[] {
    const failed: number[] = [];
    for (const n of this.claimedInterfaces)
      if (this.intCall(USBDEVFS_CLAIMINTERFACE, n) !== 0) failed.push(n);
    return failed;
  }

  owns(interfaceNumber: number): boolean {
    return this.claimedInterfaces.has(interfaceNumber);
  }

  /**
   * USBDEVFS_SETINTERFACE. Synchronous: the kernel sends the control request
   * before the ioctl returns (koffi's async calls cannot report errno), so
   * the port worker's loop waits for one control transfer.
   */
  setInterface(interfaceNumber: number, alternateSetting: number): UrbStatus {
    const arg = Buffer.alloc(8);
    arg.writeUInt32LE(interfaceNumber, 0);
    arg.writeUInt32LE(alternateSetting, 4);
    return this.callStatus(USBDEVFS_SETINTERFACE, arg);
  }

  /** USBDEVFS_CLEAR_HALT (synchronous, as setInterface). */
  clearHalt(endpointAddress: number): UrbStatus {
    const arg = Buffer.alloc(4);
    arg.writeUInt32LE(endpointAddress, 0);
    return this.callStatus(USBDEVFS_CLEAR_HALT, arg);
  }

  private intCall(request: number, value: number): number {
    this.scratch.writeUInt32LE(value, 0);
    return this.libc.ioctl(this.fd, request, this.scratch) === 0 ? 0 : this.libc.errno();
  }

  private callStatus(request: number, arg: Buffer): UrbStatus {
    if (this.gone) return ENODEV;
    if (this.libc.ioctl(this.fd, request, arg) === 0) return OK;
    const e = this.libc.errno();
    if (e === ENODEV_ERRNO) this.markGone("an ioctl found the device gone");
    return usbfsStatus(-e);
  }

  /**
   * Submit an iso, bulk or interrupt request on an endpoint of an owned
   * interface. `done` runs exactly once, from a later event-loop turn.
   */
  submit(handle: TransferHandle, request: TransferRequest, done: TransferDone): void {
    if (this.gone || this.closed) {
      const status = this.gone ? ENODEV : ESHUTDOWN;
      setImmediate(() => done({ status, actualLength: 0 }));
      return;
    }
    const iso = request.kind === "isochronous";
    const packets = iso ? (request.isoPackets ?? []) : [];
    const view = request.buffer;
    let bounce: Uint8Array | null = null;
    let target = view;
    if (iso && !backToBack(packets)) {
      let total = 0;
      for (const p of packets) total += p.length;
      if (total > view.length) {
        // Overlapping packets: the guest's buffer is the bound on what this request may cost.
        this.stats.oversizedBounces++;
        const result = everyPacket(packets.length, EINVAL);
        setImmediate(() => done(result));
        return;
      }
      bounce = new Uint8Array(total);
      if (!request.directionIn) {
        let at = 0;
        for (const p of packets) {
          bounce.set(view.subarray(p.offset, p.offset + p.length), at);
          at += p.length;
        }
      }
      target = bounce;
      this.stats.bounces++;
      this.stats.bounceBytes += total;
    }
    const base = this.libc.address(target);
    const flight: Flight = {
      handle,
      request,
      done,
      urbs: [],
      addresses: [],
      firstPacket: [],
      bounce,
      pending: 0,
      cancelledBy: null,
      failed: null,
    };
    this.stats.requests++;
    const endpoint = request.endpoint | (request.directionIn ? 0x80 : 0);
    const chunks = iso ? Math.max(1, Math.ceil(packets.length / USBFS_MAX_PACKETS_PER_URB)) : 1;
    let offset = 0;
    for (let c = 0; c < chunks; c++) {
      const first = c * USBFS_MAX_PACKETS_PER_URB;
      const count = iso ? Math.min(USBFS_MAX_PACKETS_PER_URB, packets.length - first) : 0;
      let length = target.length;
      if (iso) {
        length = 0;
        for (let i = 0; i < count; i++) length += packets[first + i]!.length;
      }
      const urb = Buffer.alloc(URB_SIZE + ISO_DESC_SIZE * count);
      urb.writeUInt8(
        iso ? URB_TYPE_ISO : request.kind === "interrupt" ? URB_TYPE_INTERRUPT : URB_TYPE_BULK,
        kType,
      );
      urb.writeUInt8(endpoint, kEndpoint);
      let flags = iso ? URB_ISO_ASAP : 0;
      if (!iso && request.directionIn && request.shortNotOk) flags |= URB_SHORT_NOT_OK;
      if (!iso && !request.directionIn && request.zeroPacket) flags |= URB_ZERO_PACKET;
      urb.writeUInt32LE(flags, kFlags);
      urb.writeBigUInt64LE(length === 0 ? 0n : base + BigInt(offset), kBuffer);
      urb.writeInt32LE(length, kBufferLength);
      urb.writeInt32LE(count, kNumberOfPackets);
      for (let i = 0; i < count; i++)
        urb.writeUInt32LE(packets[first + i]!.length, URB_SIZE + ISO_DESC_SIZE * i);
      offset += length;
      if (this.libc.ioctl(this.fd, USBDEVFS_SUBMITURB, urb) !== 0) {
        const e = this.libc.errno();
        if (e === ENODEV_ERRNO) this.markGone("submit found the device gone");
        const status = usbfsStatus(-e);
        if (flight.pending === 0) {
          const result = iso ? everyPacket(packets.length, status) : { status, actualLength: 0 };
          setImmediate(() => done(result));
          return;
        }
        // Earlier URBs of this request are in flight: take them back, answer when they are reaped.
        flight.failed = status;
        this.discardAll(flight);
        break;
      }
      const address = this.libc.address(urb);
      flight.urbs.push(urb);
      flight.addresses.push(address);
      flight.firstPacket.push(first);
      flight.pending++;
      this.byAddress.set(address, flight);
      this.stats.urbs++;
    }
    this.flights.set(handle, flight);
    this.arm();
  }

  /** Discard a request in flight; false when the handle is not one of ours (or already completed). */
  cancel(handle: TransferHandle, why: CancelReason = "unlink"): boolean {
    const flight = this.flights.get(handle);
    if (flight === undefined) return false;
    if (flight.cancelledBy === null) {
      flight.cancelledBy = why;
      this.discardAll(flight);
    }
    return true;
  }

  private discardAll(flight: Flight): void {
    for (const address of flight.addresses) {
      if (!this.byAddress.has(address)) continue; // already reaped
      // EINVAL: it completed meanwhile and waits to be reaped; either way it comes back through reap.
      this.libc.ioctlValue(this.fd, USBDEVFS_DISCARDURB, address);
      this.stats.discards++;
    }
  }

  /** Start (or keep) one poll on the pool while something is in flight. */
  private arm(): void {
    if (this.polling || this.backoff !== null || this.closed || this.byAddress.size === 0) return;
    this.polling = true;
    this.pollfds.writeInt16LE(0, 6);
    this.pollfds.writeInt16LE(0, 14);
    this.libc.poll.async(this.pollfds, 2, this.pollTimeout, (err: unknown, ready: unknown) => {
      this.polling = false;
      const settled = this.pollSettled;
      this.pollSettled = null;
      if (settled !== null) {
        settled();
        return;
      }
      if (err !== null && err !== undefined) {
        this.options.log(`usbfs poll failed: ${String(err)}`);
      } else if (ready === 0) {
        this.arm(); // the slice ended with nothing ready: give the pool thread back, then wait again
        return;
      }
      try {
        this.afterPoll();
      } catch (thrown) {
        // A bug here must not end the port worker (this runs from koffi's callback, outside any caller).
        this.options.log(`usbfs reaping threw: ${thrown instanceof Error ? thrown.message : String(thrown)}`);
        this.arm();
      }
    });
  }

  private afterPoll(): void {
    const revents = this.pollfds.readInt16LE(6);
    if ((this.pollfds.readInt16LE(14) & POLLIN) !== 0) {
      while (this.libc.read(this.wake[0]!, this.oneByte, 8) > 0) {
        // drain the wake pipe
      }
    }
    const reaped = this.reapAll();
    if ((revents & (POLLHUP | POLLERR)) !== 0 && reaped === 0) this.markGone("the device node hung up");
    if (this.gone && this.byAddress.size > 0 && reaped === 0) {
      // The kernel completes every URB of a disconnected device; what never comes back is failed here.
      for (const flight of [...this.flights.values()]) this.fail(flight, ENODEV);
    }
    if (reaped === 0 && !this.gone) {
      // Ready (or poll failed) but nothing reaped: an emulated node is a socket, always writable. Do not spin.
      this.backoff = setTimeout(() => {
        this.backoff = null;
        this.arm();
      }, 1);
      return;
    }
    this.arm();
  }

  /** REAPURBNDELAY until EAGAIN (bounded); returns how many URBs came back. */
  private reapAll(): number {
    let reaped = 0;
    for (let i = 0; i < 4096; i++) {
      if (this.libc.ioctl(this.fd, USBDEVFS_REAPURBNDELAY, this.scratch) !== 0) {
        const e = this.libc.errno();
        if (e === EINTR) continue;
        if (e !== EAGAIN) this.markGone(`reaping found the device gone (errno ${e})`);
        break;
      }
      const address = this.scratch.readBigUInt64LE(0);
      const flight = this.byAddress.get(address);
      if (flight === undefined) {
        this.options.log(`usbfs reaped an unknown URB ${address.toString(16)}; ignored`);
        continue;
      }
      this.byAddress.delete(address);
      flight.pending--;
      reaped++;
      if (flight.pending === 0) this.finish(flight);
    }
    return reaped;
  }

  /** Every URB of `flight` is back: build the result from what the kernel wrote into them. */
  private finish(flight: Flight): void {
    if (!this.flights.delete(flight.handle)) return;
    const r = flight.request;
    const iso = r.kind === "isochronous";
    let status: UrbStatus = OK;
    let actualLength = 0;
    let startFrame = 0;
    let errorCount = 0;
    const results: IsoPacketResult[] = [];
    const packets = iso ? r.isoPackets! : [];
    for (const [u, urb] of flight.urbs.entries()) {
      const raw = urb.readInt32LE(kStatus);
      if (raw !== 0 && status === OK) status = usbfsStatus(raw);
      if (u === 0) startFrame = urb.readInt32LE(kStartFrame);
      if (!iso) {
        actualLength = Math.max(0, Math.min(urb.readInt32LE(kActualLength), r.buffer.length));
        continue;
      }
      const count = urb.readInt32LE(kNumberOfPackets);
      for (let i = 0; i < count; i++) {
        const at = URB_SIZE + ISO_DESC_SIZE * i;
        const packet = packets[flight.firstPacket[u]! + i]!;
        const actual = Math.min(urb.readUInt32LE(at + 4), packet.length);
        const packetStatus = usbfsStatus(urb.readInt32LE(at + 8));
        if (packetStatus !== OK) errorCount++;
        results.push({ status: packetStatus, actualLength: actual });
        actualLength += actual;
      }
    }
    // Packets of URBs that were never submitted (a later SUBMITURB failed): answered with that failure.
    for (let i = results.length; i < packets.length; i++)
      results.push({ status: flight.failed ?? EPROTO, actualLength: 0 });
    if (iso && flight.bounce !== null && r.directionIn) {
      let at = 0;
      for (const [i, p] of packets.entries()) {
        r.buffer.set(flight.bounce.subarray(at, at + results[i]!.actualLength), p.offset);
        at += p.length;
      }
    }
    if (flight.failed !== null) status = flight.failed;
    // A discarded URB comes back -ENOENT / -ECONNRESET; one that had completed before the discard keeps its OK.
    else if (flight.cancelledBy !== null && status !== OK) status = cancelStatus(flight.cancelledBy);
    if (status === ENODEV) this.markGone("a URB found the device gone");
    if (status === OK && !iso && r.directionIn && r.shortNotOk && actualLength < r.buffer.length)
      status = EREMOTEIO;
    const result: TransferResult = iso
      ? { status, actualLength, isoPackets: results, startFrame, errorCount }
      : { status, actualLength };
    flight.done(result);
    this.checkDrained();
  }

  /** A request whose URBs will never be reaped (device gone): answer it anyway, forget its URBs. */
  private fail(flight: Flight, status: UrbStatus): void {
    if (!this.flights.delete(flight.handle)) return;
    for (const address of flight.addresses) this.byAddress.delete(address);
    // Kept alive (the kernel may still write into them, and into the bounce they point at) until close(fd).
    for (const urb of flight.urbs) this.hold(urb);
    if (flight.bounce !== null) this.hold(flight.bounce);
    const packets = flight.request.kind === "isochronous" ? (flight.request.isoPackets ?? []) : null;
    flight.done(packets === null ? { status, actualLength: 0 } : everyPacket(packets.length, status));
    this.checkDrained();
  }

  private hold(bytes: Uint8Array): void {
    this.limbo.push(bytes);
    this.stats.heldForKernelBytes += bytes.byteLength;
  }

  private checkDrained(): void {
    if (this.flights.size === 0 && this.drained !== null) {
      const resolve = this.drained;
      this.drained = null;
      setImmediate(resolve);
    }
  }

  private markGone(reason: string): void {
    if (this.gone || this.closed) return;
    this.gone = true;
    this.options.onGone(reason);
  }

  /**
   * Discard everything in flight and wait (at most `limitMs`) for it to be
   * reaped; what never comes back is failed with -ESHUTDOWN (close) or
   * -ENODEV (gone).
   */
  async drain(why: "close" | "gone", limitMs: number): Promise<void> {
    for (const flight of this.flights.values()) {
      if (flight.cancelledBy === null) {
        flight.cancelledBy = why;
        this.discardAll(flight);
      }
    }
    if (this.flights.size === 0) return;
    this.arm();
    const settled = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), limitMs);
      this.drained = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
    this.drained = null;
    if (!settled) {
      this.options.log(
        `${this.flights.size} usbfs request(s) did not come back within ${limitMs} ms; failing them`,
      );
      for (const flight of [...this.flights.values()])
        this.fail(flight, why === "close" ? ESHUTDOWN : ENODEV);
    }
  }

  /** The fd and the interfaces it has claimed (for ./held-record.ts); fd -1 once closed. */
  holdings(): { readonly fd: number; readonly interfaces: readonly number[] } {
    return this.closed
      ? { fd: -1, interfaces: [] }
      : { fd: this.fd, interfaces: [...this.claimedInterfaces] };
  }

  /**
   * The thread is ending without close() (HostUsbDevice.abandon): release the interfaces and close the fd
   * and the wake pipe now, synchronously. A poll still on the pool is woken first (it then finds its fds
   * closed and its callback never runs); nothing in flight is answered.
   */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.backoff !== null) clearTimeout(this.backoff);
    if (this.polling) this.libc.write(this.wake[1]!, this.oneByte, 1);
    if (!this.gone) this.releaseAll();
    this.claimedInterfaces.clear();
    this.libc.close(this.fd); // the kernel kills what is in flight and drops every claim of this fd
    this.libc.close(this.wake[0]!);
    this.libc.close(this.wake[1]!);
  }

  /** Release the interfaces and close the fd (after the pool's poll returned). Call after drain(). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.backoff !== null) {
      clearTimeout(this.backoff);
      this.backoff = null;
    }
    if (this.polling) {
      const returned = new Promise<void>((resolve) => {
        this.pollSettled = resolve;
      });
      this.libc.write(this.wake[1]!, this.oneByte, 1);
      await returned;
    }
    for (const flight of [...this.flights.values()]) this.fail(flight, ESHUTDOWN);
    if (!this.gone) this.releaseAll();
    this.claimedInterfaces.clear();
    this.libc.close(this.fd); // the kernel kills and frees whatever it still held
    this.limbo = [];
    this.stats.heldForKernelBytes = 0;
    this.libc.close(this.wake[0]!);
    this.libc.close(this.wake[1]!);
  }
}

/** An iso answer in which every one of `count` packets carries `status` and no data. */
function everyPacket(count: number, status: UrbStatus): TransferResult {
  const isoPackets: IsoPacketResult[] = [];
  for (let i = 0; i < count; i++) isoPackets.push({ status, actualLength: 0 });
  return { status, actualLength: 0, isoPackets, startFrame: 0, errorCount: status === OK ? 0 : count };
}

function cancelStatus(why: CancelReason): UrbStatus {
  return why === "close" ? ESHUTDOWN : why === "gone" ? ENODEV : ECONNRESET;
}

/** True when packet i starts where packet i-1 ended, from offset 0: usbfs's own layout. */
function backToBack(packets: readonly { offset: number; length: number }[]): boolean {
  let at = 0;
  for (const p of packets) {
    if (p.offset !== at) return false;
    at += p.length;
  }
  return true;
}
