/**
 * A usbfs device that never completes a URB, for UsbfsChannel on the real libuv pool: what a reaper costs
 * while its stream waits (bench/iso.ts) and whether its waits hold the pool (test/host/usbfs-channel.test.ts).
 *
 * The channel's device fd is the read end of a real pipe nobody writes: poll() never reports it ready, as
 * a usbfs fd with nothing to reap never is. umockdev's emulated node cannot stand in for it (a socket,
 * always writable: a reaper under the testbed never waits in poll at all). The ioctls are answered here
 * (the URBs reach no kernel; a reap finds nothing, EAGAIN); poll, pipe2, read, write, close, and koffi's
 * async call on the pool are libc's own, so every wait occupies a real pool thread.
 */
import { USBDEVFS_REAPURBNDELAY, type UsbfsChannel } from "../src/devices/host/usbfs-iso.js";

type Libc = Parameters<typeof UsbfsChannel.open>[0];

const EAGAIN = 11;
const O_CLOEXEC = 0o2000000;

export class NeverReadyUsbfs {
  readonly libc: Libc;
  /** poll() calls made by the channels on this libc (each holds a pool thread until it returns). */
  polls = 0;
  /** The pipes' write ends: kept open so that the read ends never hang up. */
  private readonly writeEnds: number[] = [];
  private lastErrno = 0;

  constructor(private readonly real: Libc) {
    // The channel calls only poll.async: counted, then libc's poll on a pool thread.
    const poll = {
      async: (...args: unknown[]) => {
        this.polls++;
        (real.poll.async as (...a: unknown[]) => void)(...args);
      },
    } as unknown as Libc["poll"];
    this.libc = {
      ...real,
      open: () => {
        const fds = new Int32Array(2);
        this.lastErrno = 0; // a failure here is libc's: errno() asks it
        if (real.pipe2(fds, O_CLOEXEC) !== 0) return -1;
        this.writeEnds.push(fds[1]!);
        return fds[0]!;
      },
      ioctl: (_fd, request) => {
        if (request !== USBDEVFS_REAPURBNDELAY) return 0;
        this.lastErrno = EAGAIN;
        return -1;
      },
      ioctlValue: () => 0,
      poll,
      errno: () => (this.lastErrno !== 0 ? this.lastErrno : real.errno()),
    };
  }

  /** Close the pipes' write ends (after every channel on this libc was closed). */
  close(): void {
    for (const fd of this.writeEnds.splice(0)) this.real.close(fd);
  }
}
