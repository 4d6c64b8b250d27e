#!/usr/bin/python3
"""
Interactive umockdev testbed that serves isochronous URBs (USB-TESTING.md, last section), for the usbfs
tests and the iso bench.

  iso-testbed.py DEVICE.umockdev -- node --import tsx test/host/children/iso.ts <scenario>
  iso-testbed.py --stream REPORT.json DEVICE.umockdev -- node dist/bench/iso-client.js

Answers the device's usbdevfs ioctls the way the kernel does for each open file (libusb's fd and
usbvirt's usbfs fd are separate clients here, as in the kernel):
  - CLAIMINTERFACE is per client: an interface another client holds answers EBUSY (devio.c);
  - SETINTERFACE / CLEAR_HALT are recorded;
  - REAPURB(NDELAY) returns only the calling client's URBs.
Tests (the device of test/host/iso-fixture.ts):
  - iso IN on 0x82: completed in batches of ISO_IN_BATCH, per-packet lengths and -EXDEV by the
    rule of iso-fixture.ts (isoInPacket / isoInByte), data written at the packet offsets;
  - iso OUT on 0x03: every packet checked against isoOutByte, completed in full;
  - iso IN on 0x84: never answered (until DISCARDURB: -ENOENT, or unplug: -ENODEV);
  - follows the child's `STAGE unplug` line (every URB in flight completes with -ENODEV, later
    submits fail with ENODEV), tells the child `INFLIGHT n` on its stdin; when the child exits it
    prints `TESTBED <json>` with what it saw.
--stream (the iso bench, bench/iso.ts): every iso URB on any endpoint is answered as it is submitted,
every packet in full (IN packets carry a fixed pattern); the child's stdin is this process's own (the
bench drives the child through it), and what the testbed saw goes to REPORT.json when the child exits.
The child is killed after USBVIRT_TESTBED_SECONDS (default 40).
"""
import json
import struct
import subprocess
import sys

from usbdevfs_testbed import (
    CLAIMINTERFACE,
    CLEAR_HALT,
    DESC_SIZE,
    DISCARDURB,
    DISCONNECT_CLAIM,
    EBUSY,
    EAGAIN,
    EINVAL,
    ENODATA,
    ENODEV,
    ENOENT,
    EPIPE,
    EXDEV,
    GET_CAPABILITIES,
    GETDRIVER,
    REAPURB,
    REAPURBNDELAY,
    RELEASEINTERFACE,
    SETINTERFACE,
    SUBMITURB,
    URB_SIZE,
    new_testbed,
    run_under_umockdev,
    serve_child,
)

run_under_umockdev()

import gi  # noqa: E402

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402

ISO_IN_BATCH = 4


def in_packet(seq, i, n, length):
    if (seq * n + i) % 7 == 3:
        return -EXDEV, 0
    return 0, max(0, length - ((seq + i) % 4) * 10)


def in_byte(seq, i, j):
    return (seq * 17 + i * 5 + j) & 0xFF


def out_byte(seq, i, j):
    return (seq * 13 + i * 3 + j + 1) & 0xFF


class Urb:
    def __init__(self, owner, data, buf, ep, n, lengths):
        self.owner, self.data, self.buf, self.ep, self.n, self.lengths = owner, data, buf, ep, n, lengths
        self.addr = data.client_addr


class Device(UMockdev.IoctlBase):
    def __init__(self, stream=False):
        super().__init__()
        self.stream = stream  # --stream: every iso URB answered at once, in full
        self.done = {}  # client key -> [(Urb, status)]
        self.claims = {}  # interface -> client key
        self.waiting_in = []  # iso IN URBs on 0x82 not answered yet
        self.silent = []  # iso IN URBs on 0x84 (never answered)
        self.gone = False
        self.seq_in = 0
        self.seq_out = 0
        self.report = {
            "clients": 0, "busy": 0, "setInterface": [], "clearHalt": [], "isoIn": 0, "isoOut": 0,
            "maxInFlight": 0, "outPackets": 0, "outBad": [], "outLengths": [], "discards": 0,
            "isoSubmitters": [], "other": [],
        }
        self.keys = {}
        self.child_stdin = None
        self.fill = b""

    def key(self, client):
        # One IoctlClient per open file (stream): the kernel's struct usb_dev_state.
        k = hash(client)
        if k not in self.keys:
            self.keys[k] = len(self.keys)
            self.report["clients"] = len(self.keys)
        return self.keys[k]

    def do_handle_ioctl(self, client):
        try:
            return self.handle(client)
        except Exception as e:  # never leave the client hanging
            self.report["other"].append("exception %r" % (e,))
            client.complete(-1, EINVAL)
            return True

    def handle(self, client):
        req = client.get_request()
        arg = client.get_arg()
        me = self.key(client)
        if req == GET_CAPABILITIES:
            arg.update(0, struct.pack("<I", 0))
            client.complete(0, 0)
        elif req in (CLAIMINTERFACE, RELEASEINTERFACE):
            (n,) = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))
            holder = self.claims.get(n)
            if req == CLAIMINTERFACE:
                if holder is not None and holder != me:
                    self.report["busy"] += 1
                    client.complete(-1, EBUSY)
                    return True
                self.claims[n] = me
            elif holder == me:
                del self.claims[n]
            client.complete(0, 0)
        elif req == DISCONNECT_CLAIM:
            client.complete(0, 0)
        elif req == GETDRIVER:
            client.complete(-1, ENODATA)
        elif req == SETINTERFACE:
            n, alt = struct.unpack("<II", bytes(arg.resolve(0, 8).retrieve()))
            if self.gone:
                client.complete(-1, ENODEV)
                return True
            self.report["setInterface"].append([n, alt, self.claims.get(n) == me])
            client.complete(0, 0)
        elif req == CLEAR_HALT:
            (ep,) = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))
            self.report["clearHalt"].append(ep)
            client.complete(0, 0)
        elif req == SUBMITURB:
            self.submit(client, arg, me)
        elif req == DISCARDURB:
            (addr,) = struct.unpack("<Q", bytes(arg.retrieve())[:8])  # the urb's address itself
            for queue in (self.silent, self.waiting_in):
                for urb in queue:
                    if urb.addr == addr:
                        queue.remove(urb)
                        self.report["discards"] += 1
                        self.finish(urb, -ENOENT, [(-ENOENT, 0)] * urb.n)
                        client.complete(0, 0)
                        return True
            client.complete(-1, EINVAL)
        elif req in (REAPURB, REAPURBNDELAY):
            queue = self.done.get(me, [])
            if not queue:
                client.complete(-1, ENODEV if self.gone else EAGAIN)
                return True
            urb = queue.pop(0)
            arg.resolve(0, 8).set_ptr(0, urb.data)  # *(void **)arg = the reaped urb
            client.complete(0, 0)
        else:
            self.report["other"].append(hex(req))
            client.complete(-1, EINVAL)
        return True

    def submit(self, client, arg, me):
        head = arg.resolve(0, URB_SIZE)
        raw = bytes(head.retrieve())
        typ, ep = raw[0], raw[1]
        (buffer_length,) = struct.unpack_from("<i", raw, 24)
        (n,) = struct.unpack_from("<i", raw, 36)
        if self.gone:
            client.complete(-1, ENODEV)
            return
        if typ != 0:
            # Only iso is served here (control and bulk are not part of these scenarios): stall.
            self.report["other"].append("urb type %d ep %#x" % (typ, ep))
            urb = Urb(me, head, None, ep, 0, [])
            self.finish(urb, -EPIPE, [])
            client.complete(0, 0)
            return
        # A second resolve(0, ...) returns the cached 56-byte copy: reload the argument, put the
        # client's URB address back into it, then resolve the URB with its packet descriptors.
        addr = head.client_addr
        arg.reload()
        arg.update(0, struct.pack("<Q", addr))
        full = arg.resolve(0, URB_SIZE + DESC_SIZE * n)
        buf = full.resolve(16, buffer_length) if buffer_length > 0 else None
        body = bytes(full.retrieve())
        lengths = [struct.unpack_from("<I", body, URB_SIZE + DESC_SIZE * i)[0] for i in range(n)]
        urb = Urb(me, full, buf, ep, n, lengths)
        if me not in self.report["isoSubmitters"]:
            self.report["isoSubmitters"].append(me)
        client.complete(0, 0)
        if self.stream:
            self.answer_stream(urb)
        elif ep == 0x82:
            self.waiting_in.append(urb)
            self.report["maxInFlight"] = max(self.report["maxInFlight"], len(self.waiting_in))
            if len(self.waiting_in) >= ISO_IN_BATCH:
                batch, self.waiting_in = self.waiting_in, []
                for u in batch:
                    self.answer_in(u)
        elif ep == 0x03:
            self.answer_out(urb)
        else:
            self.silent.append(urb)
        self.tell("INFLIGHT %d" % (len(self.silent) + len(self.waiting_in)))

    def tell(self, line):
        """A line on the child's stdin (it may not be listening: ignore a closed pipe)."""
        try:
            self.child_stdin.write((line + "\n").encode())
            self.child_stdin.flush()
        except (BrokenPipeError, OSError, AttributeError):
            pass

    def answer_in(self, urb):
        seq = self.seq_in
        self.seq_in += 1
        self.report["isoIn"] += 1
        packets, at, data = [], 0, bytearray(sum(urb.lengths))
        for i, length in enumerate(urb.lengths):
            status, actual = in_packet(seq, i, urb.n, length)
            data[at : at + actual] = bytes(in_byte(seq, i, j) for j in range(actual))
            packets.append((status, actual))
            at += length
        if urb.buf is not None:
            urb.buf.update(0, bytes(data))
        self.finish(urb, 0, packets)

    def answer_out(self, urb):
        seq = self.seq_out
        self.seq_out += 1
        self.report["isoOut"] += 1
        data = bytes(urb.buf.retrieve()) if urb.buf is not None else b""
        at = 0
        for i, length in enumerate(urb.lengths):
            want = bytes(out_byte(seq, i, j) for j in range(length))
            if data[at : at + length] != want:
                self.report["outBad"].append([seq, i])
            self.report["outPackets"] += 1
            self.report["outLengths"].append(length)
            at += length
        self.finish(urb, 0, [(0, length) for length in urb.lengths])

    def answer_stream(self, urb):
        """--stream: every packet in full; IN data is a fixed pattern, OUT data is taken as it is."""
        if urb.ep & 0x80:
            self.report["isoIn"] += 1
            if urb.buf is not None:
                urb.buf.update(0, self.pattern(sum(urb.lengths)))
        else:
            self.report["isoOut"] += 1
            self.report["outPackets"] += urb.n
        self.finish(urb, 0, [(0, length) for length in urb.lengths])

    def pattern(self, n):
        if len(self.fill) < n:
            self.fill = bytes(i & 0xFF for i in range(n))
        return self.fill[:n]

    def finish(self, urb, status, packets):
        # Every packet descriptor (length, actual_length, status) in one update.
        descs = b"".join(struct.pack("<IIi", urb.lengths[i], a, st) for i, (st, a) in enumerate(packets))
        if descs:
            urb.data.update(URB_SIZE, descs)
        urb.data.update(4, struct.pack("<i", status))
        urb.data.update(28, struct.pack("<i", sum(a for _, a in packets)))
        urb.data.update(32, struct.pack("<i", 1000 + self.seq_in))  # start_frame
        urb.data.update(40, struct.pack("<i", sum(1 for s, _ in packets if s != 0)))
        self.done.setdefault(urb.owner, []).append(urb)

    def unplug(self):
        """What the kernel does on disconnect: every URB in flight completes with -ENODEV."""
        self.gone = True
        for urb in self.silent + self.waiting_in:
            self.finish(urb, -ENODEV, [(-ENODEV, 0)] * urb.n)
        self.silent, self.waiting_in = [], []


def main():
    args = sys.argv[1 : sys.argv.index("--")]
    report_file = None
    if args[0] == "--stream":
        report_file = args[1]
        args = args[2:]
    description = args[0]
    child_argv = sys.argv[sys.argv.index("--") + 1 :]
    text = open(description).read()
    devnode = [line[3:] for line in text.splitlines() if line.startswith("N: ")][0]
    testbed = new_testbed()
    testbed.add_from_string(text)
    stream = report_file is not None
    device = Device(stream=stream)
    testbed.attach_ioctl("/dev/" + devnode, device)

    def on_line(line):
        if line.startswith("STAGE unplug"):
            device.unplug()

    def on_start(child):
        device.child_stdin = child.stdin

    code = serve_child(
        child_argv, on_line, stdin=None if stream else subprocess.PIPE, on_start=on_start, seconds=40
    )
    if stream:
        with open(report_file, "w") as f:
            json.dump(device.report, f)
    else:
        sys.stdout.write("TESTBED %s\n" % json.dumps(device.report))
        sys.stdout.flush()
    sys.exit(code)


main()
