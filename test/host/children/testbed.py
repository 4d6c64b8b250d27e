#!/usr/bin/python3
"""
Interactive umockdev testbed for the hotplug test (USB-TESTING.md, interactive mode).

  testbed.py [--start-unplugged] [--driver NAME] [--alt ALT.umockdev] DEVICE.umockdev SYSFS_PATH
             -- node --import tsx CHILD.ts

The child is killed after USBVIRT_TESTBED_SECONDS (default 30).
Adds the described device (unless --start-unplugged), answers its usbdevfs ioctls
(capabilities, claim/release, kernel drivers, reset, set configuration / interface,
clear halt, and SUBMITURB / REAPURB(NDELAY) / DISCARDURB), runs the Node child, and
follows the child's `STAGE <name>` lines:
  STAGE plugged, STAGE unplug    -> unplug: uevent 'remove', then remove the device
  STAGE unplugged, STAGE plug    -> plug it (back): add the device, uevent 'add'
  STAGE plug alt                 -> plug ALT.umockdev's device at the same path (a device that
                                    re-enumerated with another id: its sysfs attributes and descriptors)
  STAGE refuse claims            -> from now on CLAIMINTERFACE fails with EBUSY (as when another program
                                    holds the interface), until
  STAGE accept claims            -> claims are answered again (both logged: `refuse claims`, `accept claims`)
  STAGE hold connect N           -> the next USBDEVFS_IOCTL(CONNECT) of interface N is logged and left
                                    unanswered (its caller stays in the ioctl) until
  STAGE answer connect           -> it is answered (both logged: `hold connect N`, `answer connect`)
Kernel drivers (as Linux's usbfs has them): without --driver no interface has one (GETDRIVER says
ENODATA). With --driver NAME, every interface of the active configuration is bound to NAME when
plugged and after a SET_CONFIGURATION (the kernel probes the new interfaces); GETDRIVER says NAME,
or "usbfs" for a claimed interface; CLAIMINTERFACE of a bound interface fails with EBUSY;
USBDEVFS_IOCTL(DISCONNECT) unbinds, USBDEVFS_IOCTL(CONNECT) binds again (EBUSY while claimed).
SET_CONFIGURATION updates sysfs bConfigurationValue, as the kernel does.
When USBVIRT_TESTBED_LOG names a file, every ioctl that changes or asks the device's state is
appended to it, one line each, before the ioctl returns: `claim N`, `release N`, `getdriver N NAME`,
`disconnect N`, `connect N`, `reset`, `setconfiguration V`, `setinterface N ALT`, `clearhalt EP`
(failures end with ` -> ERRNO`). The child reads it to see what reached the device.
URBs: a control GET_DESCRIPTOR of the device, a configuration (by index) or a string is answered (from
the description; the strings are test/host/fixture.ts's), other control requests stall; a bulk OUT is taken whole and its bytes come back
on the next bulk IN (an echo); any other URB (a bulk IN with nothing to echo, interrupt)
stays in flight until discarded or the device is unplugged.
The child's output is passed through; the exit code is the child's.
"""
import os
import struct
import sys

# The usbdevfs vocabulary and the child's runner, shared with the iso testbed.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bench", "python"))
from usbdevfs_testbed import (  # noqa: E402
    CLAIMINTERFACE,
    CLEAR_HALT,
    DISCARDURB,
    DISCONNECT_CLAIM,
    EAGAIN,
    EBUSY,
    EINVAL,
    ENODATA,
    ENODEV,
    ENOENT,
    EPIPE,
    GET_CAPABILITIES,
    GETDRIVER,
    IOCTL,
    IOCTL_CONNECT,
    IOCTL_DISCONNECT,
    REAPURB,
    REAPURBNDELAY,
    RELEASEINTERFACE,
    RESET,
    SETCONFIGURATION,
    SETINTERFACE,
    SUBMITURB,
    new_testbed,
    run_under_umockdev,
    serve_child,
)

run_under_umockdev()

import gi  # noqa: E402

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402

URB_TYPE_CONTROL, URB_TYPE_BULK = 2, 3
LANGIDS = bytes([4, 3, 0x09, 0x04])
# The strings of test/host/fixture.ts (iManufacturer 1, iProduct 2, iSerialNumber 3).
STRINGS = {1: "usbvirt tests", 2: "replayed echo", 3: "UV-0001"}


def string_descriptor(text):
    body = text.encode("utf-16-le")
    return bytes([len(body) + 2, 3]) + body


def configurations(descriptors):
    """{bConfigurationValue: (descriptor set bytes, interface numbers)} and the sets in index order."""
    by_value, ordered, at = {}, [], 18
    while at + 4 <= len(descriptors):
        total = descriptors[at + 2] | descriptors[at + 3] << 8
        block = descriptors[at : at + total]
        interfaces, i = set(), 0
        while i + 2 <= len(block) and block[i] > 0:
            if block[i + 1] == 4:
                interfaces.add(block[i + 2])
            i += block[i]
        by_value[block[5]] = (block, interfaces)
        ordered.append(block)
        at += total
    return by_value, ordered


class Device(UMockdev.IoctlBase):
    """A device that accepts URBs and never answers them (they stay in flight until discarded)."""

    def __init__(self, descriptors, driver=None, log=None, on_configuration=None):
        super().__init__()
        self.driver = driver  # the kernel driver interfaces are bound to (None: no driver)
        self.log_file = log
        self.on_configuration = on_configuration  # called with the new value (sysfs bConfigurationValue)
        self.set_descriptors(descriptors)
        self.flying = []  # IoctlData of submitted urbs
        self.done = []  # (IoctlData, status, actual length) ready to reap
        self.gone = False
        self.echo = []  # bytes of bulk OUTs not read back yet
        self.waiting_in = []  # (urb IoctlData, buffer IoctlData, length) of bulk INs waiting for data
        self.refuse_claims = False  # STAGE refuse claims: every CLAIMINTERFACE fails with EBUSY
        self.hold_connect = None  # STAGE hold connect N: the interface whose next CONNECT is held
        self.held_connect = None  # (client, result, errno) of that CONNECT, until STAGE answer connect

    def control(self, urb, length):
        """A control URB: answer GET_DESCRIPTOR from the description, stall the rest."""
        buf = urb.resolve(16, length)
        setup = bytes(buf.retrieve())[:8]
        request_type, request, value, wlength = setup[0], setup[1], setup[2] | setup[3] << 8, setup[6] | setup[7] << 8
        data = None
        if request_type == 0x80 and request == 6:
            kind, index = value >> 8, value & 0xFF
            if kind == 1:
                data = self.descriptors[:18]
            elif kind == 2 and index < len(self.config_sets):
                data = self.config_sets[index]
            elif kind == 3 and index == 0:
                data = LANGIDS
            elif kind == 3 and index in STRINGS:
                data = string_descriptor(STRINGS[index])
        if data is None:
            self.done.append((urb, -EPIPE, 0))
            return
        data = data[: min(wlength, length - 8)]
        buf.update(8, data)
        self.done.append((urb, 0, len(data)))

    def bulk(self, urb, endpoint, length):
        """Bulk OUT: keep the bytes; bulk IN: give back what was written (waits until there is some)."""
        buf = urb.resolve(16, length)
        if endpoint & 0x80 == 0:
            self.echo.append(bytes(buf.retrieve())[:length])
            self.done.append((urb, 0, length))
            self.feed()
        else:
            self.waiting_in.append((urb, buf, length))
            self.feed()

    def feed(self):
        while self.echo and self.waiting_in:
            urb, buf, length = self.waiting_in.pop(0)
            data = self.echo.pop(0)[:length]
            buf.update(0, data)
            self.done.append((urb, 0, len(data)))

    def do_handle_ioctl(self, client):
        req = client.get_request()
        arg = client.get_arg()
        if req == GET_CAPABILITIES:
            arg.update(0, struct.pack("<I", 0))
            client.complete(0, 0)
        elif req in (CLAIMINTERFACE, RELEASEINTERFACE, DISCONNECT_CLAIM, RESET, SETCONFIGURATION, SETINTERFACE, CLEAR_HALT, GETDRIVER, IOCTL):
            self.state_ioctl(client, req, arg)
        elif req == SUBMITURB:
            if self.gone:
                client.complete(-1, ENODEV)
                return True
            # The argument is the pointer; resolve the struct usbdevfs_urb (56 bytes) behind it.
            urb = arg.resolve(0, 56)
            raw = bytes(urb.retrieve())
            kind, endpoint = raw[0], raw[1]
            (length,) = struct.unpack_from("<i", raw, 24)
            if kind == URB_TYPE_CONTROL and length >= 8:
                self.control(urb, length)
            elif kind == URB_TYPE_BULK and length > 0:
                self.bulk(urb, endpoint, length)
            else:
                self.flying.append(urb)
            client.complete(0, 0)
        elif req == DISCARDURB:
            (addr,) = struct.unpack("<Q", bytes(arg.retrieve())[:8])  # the urb's address itself
            for urb in self.flying:
                if urb.client_addr == addr:
                    self.flying.remove(urb)
                    self.done.append((urb, -ENOENT, 0))
                    client.complete(0, 0)
                    return True
            for entry in self.waiting_in:
                if entry[0].client_addr == addr:
                    self.waiting_in.remove(entry)
                    self.done.append((entry[0], -ENOENT, 0))
                    client.complete(0, 0)
                    return True
            client.complete(-1, EINVAL)
        elif req in (REAPURB, REAPURBNDELAY):
            if not self.done:
                client.complete(-1, ENODEV if self.gone and not self.flying else EAGAIN)
                return True
            urb, status, actual = self.done.pop(0)
            urb.update(4, struct.pack("<i", status))  # struct usbdevfs_urb.status
            urb.update(28, struct.pack("<i", actual))  # .actual_length
            arg.resolve(0, 8).set_ptr(0, urb)  # *(void **)arg = the reaped urb
            client.complete(0, 0)
        else:
            client.complete(-1, EINVAL)
        return True

    def log(self, line, errno=0):
        if self.log_file is not None:
            with open(self.log_file, "a") as f:
                f.write(line + (f" -> {errno}" if errno else "") + "\n")

    def set_descriptors(self, descriptors):
        """The device's descriptors (device descriptor + configuration sets); configured as plugged."""
        self.descriptors = descriptors
        self.by_value, self.config_sets = configurations(descriptors)
        self.config = self.config_sets[0][5] if self.config_sets else 0
        self.claimed = set()
        self.bind_all()

    def bind_all(self):
        """What the kernel does when interfaces appear: its driver probes (binds) each of them."""
        interfaces = self.by_value.get(self.config, (b"", set()))[1]
        self.bound = set(interfaces) if self.driver is not None else set()

    def state_ioctl(self, client, req, arg):
        """Claim/release, kernel drivers, reset, configuration, interface, halt: logged, then answered."""
        u32 = lambda: struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))[0]  # noqa: E731
        errno = ENODEV if self.gone else 0
        if req in (CLAIMINTERFACE, DISCONNECT_CLAIM):
            n = u32()
            interfaces = self.by_value.get(self.config, (b"", set()))[1]
            if not errno:
                errno = ENOENT if n not in interfaces else EBUSY if n in self.bound and req == CLAIMINTERFACE else 0
            if not errno and self.refuse_claims:
                errno = EBUSY
            if not errno:
                self.bound.discard(n)
                self.claimed.add(n)
            self.log(f"claim {n}", errno)
        elif req == RELEASEINTERFACE:
            n = u32()
            errno = errno or (0 if n in self.claimed else EINVAL)
            self.claimed.discard(n)
            self.log(f"release {n}", errno)
        elif req == GETDRIVER:
            # struct usbdevfs_getdriver { unsigned interface; char driver[256]; }, resolved whole at once
            # (a second resolve of the same argument returns the first, shorter copy).
            getdriver = arg.resolve(0, 260)
            (n,) = struct.unpack_from("<I", bytes(getdriver.retrieve()))
            name = "usbfs" if n in self.claimed else self.driver if n in self.bound else None
            errno = errno or (0 if name is not None else ENODATA)
            if not errno:
                getdriver.update(4, name.encode() + b"\0")
            self.log(f"getdriver {n} {name}", errno)
        elif req == IOCTL:
            ifno, code = struct.unpack("<iI", bytes(arg.resolve(0, 8).retrieve()))
            interfaces = self.by_value.get(self.config, (b"", set()))[1]
            errno = errno or (0 if ifno in interfaces else EINVAL)  # proc_ioctl: no such interface
            if code == IOCTL_DISCONNECT:
                errno = errno or (0 if ifno in self.bound else ENODATA)
                self.bound.discard(ifno)
                self.log(f"disconnect {ifno}", errno)
            elif code == IOCTL_CONNECT:
                errno = errno or (EBUSY if ifno in self.claimed else 0)
                if not errno and self.driver is not None:
                    self.bound.add(ifno)
                self.log(f"connect {ifno}", errno)
                # The kernel returns device_attach()'s result: 1 when a driver was bound, 0 when none was.
                answer = (-1 if errno else int(ifno in self.bound), errno)
                if ifno == self.hold_connect:
                    self.hold_connect = None
                    self.held_connect = (client, *answer)
                    return
                client.complete(*answer)
                return
            else:
                errno = EINVAL
                self.log(f"ioctl {ifno} {code:#x}", errno)
        elif req == RESET:
            self.log("reset", errno)
        elif req == SETCONFIGURATION:
            value = u32()
            errno = errno or (0 if value == 0 or value in self.by_value else EINVAL)
            if not errno:
                self.config = value
                self.claimed = set()
                self.bind_all()
                if self.on_configuration is not None:
                    self.on_configuration(value)
            self.log(f"setconfiguration {value}", errno)
        elif req == SETINTERFACE:
            n, alt = struct.unpack("<II", bytes(arg.resolve(0, 8).retrieve()))
            errno = errno or (0 if n in self.claimed else EINVAL)
            self.log(f"setinterface {n} {alt}", errno)
        elif req == CLEAR_HALT:
            ep = u32()
            self.log(f"clearhalt {ep:#04x}", errno)
        client.complete(-1 if errno else 0, errno)

    def replug(self, descriptors=None):
        """A new device on the same node: nothing in flight, nothing to echo."""
        self.set_descriptors(descriptors if descriptors is not None else self.descriptors)
        self.gone = False
        self.flying = []
        self.done = []
        self.echo = []
        self.waiting_in = []

    def unplug(self):
        """What the kernel does on disconnect: every URB completes with -ENODEV."""
        self.gone = True
        self.done.extend((u, -ENODEV, 0) for u in self.flying)
        self.done.extend((u, -ENODEV, 0) for (u, _, _) in self.waiting_in)
        self.flying = []
        self.waiting_in = []


def option(args, name):
    """The value after `name` in args (and both removed), or None."""
    if name not in args:
        return None
    i = args.index(name)
    value = args[i + 1]
    del args[i : i + 2]
    return value


def attributes(text):
    """The A: (text) and H: (binary) sysfs attributes of a description, to apply to a device in place."""
    out = []
    for line in text.splitlines():
        if line.startswith("A: ") or line.startswith("H: "):
            name, value = line[3:].split("=", 1)
            binary = line.startswith("H: ")
            out.append((name, bytes.fromhex(value) if binary else value.replace("\\n", "\n"), binary))
    return out


def main():
    args = sys.argv[1 : sys.argv.index("--")]
    driver = option(args, "--driver")
    alt_description = option(args, "--alt")
    start_unplugged = "--start-unplugged" in args
    description, sysfs = [a for a in args if not a.startswith("--")][:2]
    child_argv = sys.argv[sys.argv.index("--") + 1 :]
    text = open(description).read()
    devnode = [line[3:] for line in text.splitlines() if line.startswith("N: ")][0]

    def descriptors_of(t):
        return bytes.fromhex([line for line in t.splitlines() if line.startswith("H: descriptors=")][0][15:])

    descriptors = descriptors_of(text)
    alt_text = open(alt_description).read() if alt_description is not None else None
    testbed = new_testbed()
    state = {"device": None, "handler": None, "showing": text}

    def show(t):
        """Make the sysfs attributes those of description t (the same node and path: a re-enumeration)."""
        if state["showing"] is t:
            return
        for name, value, binary in attributes(t):
            if binary:
                testbed.set_attribute_binary(sysfs, name, value)
            else:
                testbed.set_attribute(sysfs, name, value)
        state["showing"] = t

    def on_configuration(value):
        testbed.set_attribute(sysfs, "bConfigurationValue", f"{value}\n")

    def plug(t=text):
        if state["device"] is not None:
            return
        if state["handler"] is None:
            testbed.add_from_string(text)
            state["handler"] = Device(descriptors, driver, os.environ.get("USBVIRT_TESTBED_LOG"), on_configuration)
            testbed.attach_ioctl("/dev/" + devnode, state["handler"])
            show(t)
            if t is not text:
                state["handler"].replug(descriptors_of(t))
        else:
            # The node and its handler stay for the testbed's whole life: a program may still issue ioctls
            # on a descriptor it opened before an unplug (they get ENODEV), and removing the node or
            # detaching the handler under it makes umockdev's preload abort that program. libusb follows
            # the uevents alone.
            show(t)
            state["handler"].replug(descriptors_of(t))
            on_configuration(state["handler"].config)
        state["device"] = state["handler"]

    def unplug():
        if state["device"] is None:
            return
        state["device"].unplug()
        testbed.uevent(sysfs, "remove")
        state["device"] = None

    if not start_unplugged:
        plug()
    # Stages are applied in order, at most one every 5 ms: umockdev's uevent sender aborts when the
    # program's netlink socket is full, which a burst of hundreds of uevents (a hotplug storm) can do.
    stages = []
    pacing = {"busy": False}

    def apply_stage():
        if not stages:
            pacing["busy"] = False
            return False
        line = stages.pop(0)
        if line.startswith("STAGE plugged") or line.startswith("STAGE unplug\n"):
            unplug()
        elif line.startswith("STAGE unplugged") or line.startswith("STAGE plug\n"):
            if state["device"] is None:
                plug()
                testbed.uevent(sysfs, "add")
        elif line.startswith("STAGE refuse claims\n") or line.startswith("STAGE accept claims\n"):
            if state["handler"] is not None:
                state["handler"].refuse_claims = line.startswith("STAGE refuse")
                state["handler"].log(line[len("STAGE ") :].strip())
        elif line.startswith("STAGE hold connect ") and state["handler"] is not None:
            state["handler"].hold_connect = int(line.split()[-1])
            state["handler"].log(line[len("STAGE ") :].strip())
        elif line.startswith("STAGE answer connect\n") and state["handler"] is not None:
            held, state["handler"].held_connect = state["handler"].held_connect, None
            if held is not None:
                held[0].complete(held[1], held[2])  # thread-safe: umockdev passes it to the handler's thread
            state["handler"].log("answer connect")
        elif line.startswith("STAGE plug alt\n") and alt_text is not None:
            if state["device"] is None:
                plug(alt_text)
                testbed.uevent(sysfs, "add")
        return True  # look again in 5 ms

    def on_line(line):
        if line.startswith("STAGE "):
            stages.append(line)
            if not pacing["busy"]:
                pacing["busy"] = True
                apply_stage()
                GLib.timeout_add(5, apply_stage)

    sys.exit(serve_child(child_argv, on_line))


main()
