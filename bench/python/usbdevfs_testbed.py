"""
What the interactive umockdev testbeds share (bench/python/iso-testbed.py, test/host/children/testbed.py;
USB-TESTING.md, interactive mode): the usbdevfs ioctl numbers and errnos their devices answer, running the
controller under umockdev's preload, making the Testbed, and running the Node child under the testbed with
its output passed on. Nothing here imports gi before the script runs under the preload.
"""

import os
import subprocess
import sys

# include/uapi/linux/usbdevice_fs.h, x86-64 / arm64 encodings
GET_CAPABILITIES = 0x8004551A
CLAIMINTERFACE = 0x8004550F
RELEASEINTERFACE = 0x80045510
GETDRIVER = 0x41045508
DISCONNECT_CLAIM = 0x8108551B
SUBMITURB = 0x8038550A
DISCARDURB = 0x0000550B
REAPURB = 0x4008550C
REAPURBNDELAY = 0x4008550D
IOCTL = 0xC0105512  # struct usbdevfs_ioctl { int ifno; int ioctl_code; void *data; }
IOCTL_DISCONNECT, IOCTL_CONNECT = 0x5516, 0x5517
RESET = 0x00005514
SETCONFIGURATION = 0x80045505
SETINTERFACE = 0x80085504
CLEAR_HALT = 0x80045515
ENODATA, EAGAIN, EINVAL, ENOENT, ENODEV, EPIPE, EBUSY, EXDEV = 61, 11, 22, 2, 19, 32, 16, 18
# struct usbdevfs_urb (LP64) and one struct usbdevfs_iso_packet_desc after it per packet
URB_SIZE, DESC_SIZE = 56, 12


def run_under_umockdev():
    """The controller itself must run under the umockdev preload: re-run this script under umockdev-wrapper."""
    if os.environ.get("USBVIRT_TESTBED_WRAPPED") != "1":
        os.environ["USBVIRT_TESTBED_WRAPPED"] = "1"
        # -B: no __pycache__ beside the script (nothing in the tree is written by a test run).
        os.execvp("umockdev-wrapper", ["umockdev-wrapper", sys.executable, "-B"] + sys.argv)


def new_testbed():
    """
    A UMockdev.Testbed without its fallback ioctl socket (`ioctl/_default`). umockdev's preload keeps a table
    from fd numbers to ioctl sockets, filled by its open() wrapper and emptied only by its close() wrapper; a
    lookup returns the first entry with that number. With the fallback there, every /dev path the testbed
    does not emulate gets an entry: libuv opens /dev/null in each event loop (its EMFILE reserve) and closes
    it with the raw close syscall, so the entry outlives the fd. Once a worker thread ended, the next open of
    the device node (the control plane's give-back, say) may get that number, and its ioctls go to the
    fallback, which answers ENOTTY without the device's handler seeing them. Without the fallback, paths
    outside the testbed are not tracked (their ioctls reach the kernel, as without umockdev); emulated nodes
    have sockets of their own.
    """
    from gi.repository import UMockdev

    testbed = UMockdev.Testbed.new()
    # Bound by the Testbed's constructor; the preload takes a missing fallback as "not emulated".
    os.unlink(os.path.join(testbed.get_root_dir(), "ioctl", "_default"))
    return testbed


def serve_child(child_argv, on_line, stdin=None, on_start=None, seconds=30):
    """
    Run the child (its stdin `stdin`: a pipe, or None for this process's own) and the GLib loop that serves
    the testbed until it exits; each whole line of its stdout is passed on, then given to on_line. The child
    is killed after USBVIRT_TESTBED_SECONDS (default `seconds`). Returns its exit code (1 when killed).
    """
    from gi.repository import GLib

    loop = GLib.MainLoop()
    child = subprocess.Popen(child_argv, stdin=stdin, stdout=subprocess.PIPE, bufsize=0)
    if on_start is not None:
        on_start(child)
    state = {"code": 1, "buf": b""}

    def on_output(fd, cond):
        chunk = os.read(fd, 65536) if cond & GLib.IO_IN else b""
        if chunk:
            state["buf"] += chunk
            while b"\n" in state["buf"]:
                line, state["buf"] = state["buf"].split(b"\n", 1)
                sys.stdout.write(line.decode() + "\n")
                sys.stdout.flush()
                on_line(line.decode() + "\n")
            return True
        if state["buf"]:
            # The child ended inside a line: pass it on as it is (the parent says it was cut short).
            sys.stdout.write(state["buf"].decode(errors="replace"))
            state["buf"] = b""
        state["code"] = child.wait()
        loop.quit()
        return False

    GLib.io_add_watch(child.stdout.fileno(), GLib.IO_IN | GLib.IO_HUP, on_output)
    limit = int(os.environ.get("USBVIRT_TESTBED_SECONDS", str(seconds)))
    GLib.timeout_add_seconds(limit, lambda: (child.kill(), loop.quit()))
    loop.run()
    return state["code"]
