/**
 * What a port worker's host device holds outside its thread, published in a
 * small shared record so that the thread that spawned the worker can give it
 * back when the worker ended without doing so itself (terminate() by the
 * watchdog or the control plane, an OOM, a crash whose exit hook could not
 * finish). fds and interface claims belong to the process, not the thread:
 *
 *   word 0      state: 0 nothing held, 1 held (set last on publish, cleared last on release)
 *   words 1, 2  bus number, device address (the device node, and the lock file of ./device-claim.ts)
 *   word 3      the usbfs fd of the isochronous path (./usbfs-iso.ts), -1 if none
 *   words 4-11  interfaces that fd has claimed (a 256-bit set)
 *   words 12-19 interfaces whose kernel driver was detached, to re-attach (a 256-bit set)
 *   bytes 80-91 the lock's token (12 bytes)
 *   bytes 96-111 st_dev and st_ino of the usbfs fd when published (BigInt64)
 *
 * libusb's own fd is not listed: node-usb closes it when the worker's
 * environment is torn down (seen under umockdev: terminate() leaves no fd on
 * the device node), and the kernel drops that fd's claims on close.
 *
 * The device gives things back one at a time (its close(), or the exit hook), and the
 * worker may be killed at any point of that: each part leaves the record only once it
 * was given back (one atomic operation each), and the state is cleared after the lock was
 * released, so a release that did not finish leaves the record naming what is still
 * held, and each part is given back by exactly one side.
 *
 * releaseHeld (the spawning thread, after the worker's 'exit'): the usbfs fd,
 * if fstat still names the same file, releases its interfaces and is closed;
 * the device node is opened again to re-attach each detached kernel driver
 * (USBDEVFS_IOCTL / USBDEVFS_CONNECT, as libusb_attach_kernel_driver does);
 * the lock file is removed if it still carries the token.
 */
import { fstatSync } from "node:fs";
import { claimPath, releaseClaim } from "./device-claim.js";
import { loadUsbfs } from "./usbfs-iso.js";

const kState = 0;
const kBus = 1;
const kAddress = 2;
const kUsbfsFd = 3;
const kClaimed = 4;
const kDetached = 12;
const SET_WORDS = 8;
const TOKEN_AT = 80;
const TOKEN_BYTES = 12;
const IDENTITY_AT = 96;
export const HELD_RECORD_BYTES = 128;

// include/uapi/linux/usbdevice_fs.h (x86-64 / arm64).
const USBDEVFS_RELEASEINTERFACE = 0x80045510;
const USBDEVFS_IOCTL = 0xc0105512;
const USBDEVFS_CONNECT = 0x5517;
const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;

export function createHeldRecord(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(HELD_RECORD_BYTES);
  Atomics.store(new Int32Array(sab), kUsbfsFd, -1);
  return sab;
}

/** What a host device holds (HostUsbDevice publishes it after each change). */
export interface Holdings {
  readonly busNumber: number;
  readonly deviceAddress: number;
  /** The lock's token (./device-claim.ts), 24 hex digits. */
  readonly token: string;
  readonly usbfsFd: number;
  readonly usbfsInterfaces: readonly number[];
  readonly detachedDrivers: readonly number[];
}

/** The writer's side: one host device on one port worker. */
export class HeldRecord {
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly identity: BigInt64Array;

  constructor(sab: SharedArrayBuffer) {
    this.words = new Int32Array(sab);
    this.bytes = new Uint8Array(sab);
    this.identity = new BigInt64Array(sab, IDENTITY_AT, 2);
  }

  publish(h: Holdings): void {
    const w = this.words;
    Atomics.store(w, kState, 0); // a reader in between sees nothing rather than half a record
    w[kBus] = h.busNumber;
    w[kAddress] = h.deviceAddress;
    w[kUsbfsFd] = h.usbfsFd;
    writeSet(w, kClaimed, h.usbfsInterfaces);
    writeSet(w, kDetached, h.detachedDrivers);
    this.bytes.set(Buffer.from(h.token, "hex").subarray(0, TOKEN_BYTES), TOKEN_AT);
    this.identity[0] = 0n;
    this.identity[1] = 0n;
    if (h.usbfsFd >= 0) {
      try {
        const st = fstatSync(h.usbfsFd, { bigint: true });
        this.identity[0] = st.dev;
        this.identity[1] = st.ino;
      } catch {
        w[kUsbfsFd] = -1;
      }
    }
    Atomics.store(w, kState, 1); // publishes the words above (seq-cst)
  }

  /** The usbfs fd was closed by the device (its claims went with it). */
  usbfsClosed(): void {
    Atomics.store(this.words, kUsbfsFd, -1);
  }

  /** The device re-attached (or tried to re-attach) interface n's kernel driver itself. */
  driverReattached(n: number): void {
    if (n < 0 || n >= SET_WORDS * 32) return;
    Atomics.and(this.words, kDetached + (n >>> 5), ~(1 << (n & 31)));
  }

  /** Nothing is held any more (released by the device itself, the lock last). */
  clear(): void {
    Atomics.store(this.words, kState, 0);
  }
}

/** What the record says is held, without taking it (null when nothing is). */
export function readHeld(sab: SharedArrayBuffer): Holdings | null {
  const w = new Int32Array(sab);
  return Atomics.load(w, kState) === 1 ? holdingsIn(sab) : null;
}

function holdingsIn(sab: SharedArrayBuffer): Holdings {
  const w = new Int32Array(sab);
  return {
    busNumber: w[kBus]!,
    deviceAddress: w[kAddress]!,
    token: Buffer.from(new Uint8Array(sab, TOKEN_AT, TOKEN_BYTES)).toString("hex"),
    usbfsFd: w[kUsbfsFd]!,
    usbfsInterfaces: readSet(w, kClaimed),
    detachedDrivers: readSet(w, kDetached),
  };
}

/** What releaseHeld did, for one log line; null when the record held nothing. */
export interface HeldRelease {
  readonly usbfsFd: "closed" | "not ours any more" | "none";
  readonly reattached: readonly number[];
  /** Interfaces whose driver could not be re-attached, with the errno. */
  readonly failed: readonly string[];
}

/** Give back what the record says is held (see the header). Never throws. */
export function releaseHeld(sab: SharedArrayBuffer): HeldRelease | null {
  if (Atomics.exchange(new Int32Array(sab), kState, 0) !== 1) return null;
  const {
    busNumber,
    deviceAddress,
    token,
    usbfsFd: fd,
    usbfsInterfaces: claimed,
    detachedDrivers: detached,
  } = holdingsIn(sab);
  const identity = new BigInt64Array(sab, IDENTITY_AT, 2);
  const load = loadUsbfs();
  let usbfsFd: HeldRelease["usbfsFd"] = "none";
  const reattached: number[] = [];
  const failed: string[] = [];
  if (fd >= 0) {
    let same = false;
    try {
      const st = fstatSync(fd, { bigint: true });
      same = st.dev === identity[0] && st.ino === identity[1];
    } catch {
      same = false;
    }
    usbfsFd = same ? "closed" : "not ours any more";
    if (same && load.ok) {
      const arg = new Uint8Array(4);
      for (const n of claimed) {
        new DataView(arg.buffer).setUint32(0, n, true);
        load.libc.ioctl(fd, USBDEVFS_RELEASEINTERFACE, arg);
      }
      load.libc.close(fd);
    }
  }
  if (detached.length > 0) {
    const node = `/dev/bus/usb/${pad3(busNumber)}/${pad3(deviceAddress)}`;
    const dev = load.ok ? load.libc.open(node, O_RDWR | O_CLOEXEC) : -1;
    if (dev < 0) {
      const why = load.ok ? `open ${node}: errno ${load.libc.errno()}` : load.reason;
      for (const n of detached) failed.push(`${n} (${why})`);
    } else if (load.ok) {
      for (const n of detached) {
        // struct usbdevfs_ioctl { int ifno; int ioctl_code; void *data; }
        const arg = new Uint8Array(16);
        const view = new DataView(arg.buffer);
        view.setInt32(0, n, true);
        view.setInt32(4, USBDEVFS_CONNECT, true);
        if (load.libc.ioctl(dev, USBDEVFS_IOCTL, arg) < 0) failed.push(`${n} (errno ${load.libc.errno()})`);
        else reattached.push(n);
      }
      load.libc.close(dev);
    }
  }
  releaseClaim(claimPath({ busNumber, deviceAddress }), token);
  return { usbfsFd, reattached, failed };
}

function writeSet(w: Int32Array, at: number, members: readonly number[]): void {
  for (let i = 0; i < SET_WORDS; i++) w[at + i] = 0;
  for (const n of members) {
    if (n < 0 || n >= SET_WORDS * 32) continue;
    const i = at + (n >>> 5);
    w[i] = (w[i] ?? 0) | (1 << (n & 31));
  }
}

function readSet(w: Int32Array, at: number): number[] {
  const out: number[] = [];
  for (let n = 0; n < SET_WORDS * 32; n++) if ((w[at + (n >>> 5)]! >>> (n & 31)) & 1) out.push(n);
  return out;
}

const pad3 = (n: number) => String(n).padStart(3, "0");
