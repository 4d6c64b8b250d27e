#!/usr/bin/python3
"""
Interactive umockdev testbed for the hotplug test (USB-TESTING.md, interactive mode).

  testbed.py DEVICE.umockdev SYSFS_PATH -- node --import tsx test/host/children/hotplug.ts

Adds the described device, answers its usbdevfs ioctls (capabilities, claim/release,
"no kernel driver", and SUBMITURB / REAPURB(NDELAY) / DISCARDURB for URBs that the
device never answers, so they stay in flight until discarded), runs the Node child,
and follows the child's `STAGE <name>` lines:
  STAGE plugged    -> unplug: uevent 'remove', then remove the device
  STAGE unplugged  -> plug it back: add the device again, uevent 'add'
The child's output is passed through; the exit code is the child's.
"""
import os
import struct
import subprocess
import sys

if os.environ.get("USBVIRT_TESTBED_WRAPPED") != "1":
    # The controller itself must run under the umockdev preload.
    os.environ["USBVIRT_TESTBED_WRAPPED"] = "1"
    os.execvp("umockdev-wrapper", ["umockdev-wrapper", sys.executable] + sys.argv)

import gi  # noqa: E402

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

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
ENODATA, EAGAIN, EINVAL, ENOENT, ENODEV = 61, 11, 22, 2, 19


class Device(UMockdev.IoctlBase):
    """A device that accepts URBs and never answers them (they stay in flight until discarded)."""

    def __init__(self):
        super().__init__()
        self.flying = []  # IoctlData of submitted urbs
        self.done = []  # (IoctlData, status) ready to reap
        self.gone = False

    def do_handle_ioctl(self, client):
        req = client.get_request()
        arg = client.get_arg()
        if req == GET_CAPABILITIES:
            arg.update(0, struct.pack("<I", 0))
            client.complete(0, 0)
        elif req in (CLAIMINTERFACE, RELEASEINTERFACE, DISCONNECT_CLAIM):
            client.complete(0, 0)
        elif req == GETDRIVER:
            client.complete(-1, ENODATA)
        elif req == SUBMITURB:
            if self.gone:
                client.complete(-1, ENODEV)
                return True
            # The argument is the pointer; resolve the struct usbdevfs_urb (56 bytes) behind it.
            self.flying.append(arg.resolve(0, 56))
            client.complete(0, 0)
        elif req == DISCARDURB:
            (addr,) = struct.unpack("<Q", bytes(arg.retrieve())[:8])  # the urb's address itself
            for urb in self.flying:
                if urb.client_addr == addr:
                    self.flying.remove(urb)
                    self.done.append((urb, -ENOENT))
                    client.complete(0, 0)
                    return True
            client.complete(-1, EINVAL)
        elif req in (REAPURB, REAPURBNDELAY):
            if not self.done:
                client.complete(-1, ENODEV if self.gone and not self.flying else EAGAIN)
                return True
            urb, status = self.done.pop(0)
            urb.update(4, struct.pack("<i", status))  # struct usbdevfs_urb.status
            urb.update(28, struct.pack("<i", 0))  # .actual_length
            arg.resolve(0, 8).set_ptr(0, urb)  # *(void **)arg = the reaped urb
            client.complete(0, 0)
        else:
            client.complete(-1, EINVAL)
        return True

    def unplug(self):
        """What the kernel does on disconnect: every URB completes with -ENODEV."""
        self.gone = True
        self.done.extend((u, -ENODEV) for u in self.flying)
        self.flying = []


def main():
    description, sysfs = sys.argv[1], sys.argv[2]
    child_argv = sys.argv[sys.argv.index("--") + 1 :]
    text = open(description).read()
    devnode = [line[3:] for line in text.splitlines() if line.startswith("N: ")][0]
    testbed = UMockdev.Testbed.new()
    state = {"device": None, "code": 1}

    def plug():
        testbed.add_from_string(text)
        dev = Device()
        testbed.attach_ioctl("/dev/" + devnode, dev)
        state["device"] = dev

    plug()
    loop = GLib.MainLoop()
    child = subprocess.Popen(child_argv, stdout=subprocess.PIPE, bufsize=0)

    def on_line(line):
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith("STAGE plugged"):
            state["device"].unplug()
            testbed.detach_ioctl("/dev/" + devnode)
            testbed.uevent(sysfs, "remove")
            testbed.remove_device(sysfs)
        elif line.startswith("STAGE unplugged"):
            plug()
            testbed.uevent(sysfs, "add")

    buf = {"data": b""}

    def on_output(fd, cond):
        chunk = os.read(fd, 65536) if cond & GLib.IO_IN else b""
        if chunk:
            buf["data"] += chunk
            while b"\n" in buf["data"]:
                line, buf["data"] = buf["data"].split(b"\n", 1)
                on_line(line.decode() + "\n")
            return True
        state["code"] = child.wait()
        loop.quit()
        return False

    GLib.io_add_watch(child.stdout.fileno(), GLib.IO_IN | GLib.IO_HUP, on_output)
    GLib.timeout_add_seconds(30, lambda: (child.kill(), loop.quit()))
    loop.run()
    sys.exit(state["code"])


main()
