"""A USB/IP and usbredir bench client written as a Python user would write one (stdlib only).

The bench (bench/python-peer.ts) runs it in a process of its own and drives it with JSON lines on
stdin, answered on stdout, in the protocol of bench/stream-bench.ts:
  {"cmd": "connect", "protocol": "usbip", "port": P, "busid": "1-1"}   -> {"ev": "connected"}
  {"cmd": "connect", "protocol": "usbredir", "port": P}                -> {"ev": "connected"}
  {"cmd": "start", "workload": {"kind": "null", "depth": N}}           -> {"ev": "started"}
  {"cmd": "start", "workload": {"kind": "bulk64k", "pairs": N}}        -> {"ev": "started"}
      (with "verify": true, every IN must bring back its pair's OUT data: pair i sends 64 KiB of i + 1)
  {"cmd": "wait", "items": N}  -> {"ev": "waited", "items": N, "ms": ...} (timed here)
  {"cmd": "stop"}              -> {"ev": "stopped", "items": ..., "inBytes": ..., "outBytes": ...}
It exits 0 when stdin closes, non-zero with a message on stderr when anything is unexpected.

The hot path is the pattern the bench compares servers on: one non-blocking socket; a bulk pair's
two requests and its 64 KiB of OUT data leave in one send() (the rest queued if the kernel took less);
replies are read with recv(1 MiB) and parsed in place, IN data counted and skipped; every request
whose reply is in is sent again at once (null requests of one read leave in one send()).
Workloads: null control requests (the loopback's vendor RESET_STATS, no data) at a depth, and 64 KiB
bulk OUT + IN pairs on endpoint 1 of the emulated loopback (what is written is read back).
"""

import json
import os
import selectors
import socket
import struct
import sys
import time

KIB64 = 64 * 1024
RECV_BYTES = 1 << 20

# USB/IP (Linux Documentation/usb/usbip_protocol.rst): big-endian, 48-byte URB headers.
USBIP_VERSION = 0x0111
OP_REQ_IMPORT = 0x8003
OP_REP_IMPORT = 0x0003
DEVICE_RECORD = 312
CMD_SUBMIT = 1
RET_SUBMIT = 3
URB_HEADER = 48
CMD_SUBMIT_HEAD = struct.Struct(">10I")  # command .. interval; the setup packet follows
RET_SUBMIT_HEAD = struct.Struct(">2I3I5i")  # command, seqnum, devid, direction, ep, status, actual, ...

# usbredir (spice/usbredir usb-redirection-protocol.md): little-endian; 64-bit ids and 32-bit bulk
# lengths negotiated, so a reply is a 16-byte header and a 10-byte type header, then its data.
REDIR_HELLO = 0
REDIR_DEVICE_CONNECT = 1
REDIR_CONTROL = 100
REDIR_BULK = 101
# connect_device_version, filter, device_disconnect_ack, ep_info_max_packet_size, 64-bit ids,
# 32-bit bulk lengths: what QEMU 7 advertises, minus bulk receiving (not used here).
REDIR_CAPS = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6)
REDIR_HEADER = 16
REDIR_TYPE_HEADER = 10
REDIR_REPLY = REDIR_HEADER + REDIR_TYPE_HEADER
REDIR_HEAD = struct.Struct("<4I")  # type, length, id_low, id_high


class ClientError(Exception):
    pass


def fail(message):
    raise ClientError(message)


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def recv_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            fail("the server closed the connection during setup")
        out += chunk
    return bytes(out)


# ---------------------------------------------------------------- protocols (setup and framing)


class Usbip:
    """USB/IP: import a busid, configure the device, then 48-byte RET_SUBMIT headers."""

    header = URB_HEADER
    tag_at = 4

    def __init__(self, sock, busid):
        self.devid = self.import_device(sock, busid)
        # SET_CONFIGURATION(1), as vhci's USB core would before any transfer.
        sock.sendall(self.submit(1, 0, False, 0, bytes([0, 9, 1, 0, 0, 0, 0, 0])))
        ret = recv_exact(sock, URB_HEADER)
        command, seqnum, _, _, _, status, _, _, _, _ = RET_SUBMIT_HEAD.unpack_from(ret)
        if command != RET_SUBMIT or seqnum != 1 or status != 0:
            fail(f"SET_CONFIGURATION: command {command}, seqnum {seqnum}, status {status}")

    def import_device(self, sock, busid):
        sock.sendall(struct.pack(">HHI32s", USBIP_VERSION, OP_REQ_IMPORT, 0, busid.encode()))
        _, code, status = struct.unpack(">HHI", recv_exact(sock, 8))
        if code != OP_REP_IMPORT or status != 0:
            fail(f"import of {busid}: reply code 0x{code:x}, status {status}")
        record = recv_exact(sock, DEVICE_RECORD)
        busnum, devnum = struct.unpack_from(">II", record, 288)
        return (busnum << 16) | devnum

    def submit(self, seqnum, ep, direction_in, length, setup=bytes(8)):
        head = CMD_SUBMIT_HEAD.pack(
            CMD_SUBMIT, seqnum, self.devid, 1 if direction_in else 0, ep, 0, length, 0, 0xFFFFFFFF, 0
        )
        return head + setup

    def null_request(self):
        # Vendor OUT, RESET_STATS (0x05), no data.
        return bytearray(self.submit(0, 0, False, 0, bytes([0x40, 0x05, 0, 0, 0, 0, 0, 0])))

    def bulk_request(self, direction_in, length):
        return bytearray(self.submit(0, 1, direction_in, length))

    def set_tag(self, pdu, at, tag):
        struct.pack_into(">I", pdu, at + 4, tag)

    def parse(self, b, at):
        """A reply header at b[at]: (tag, status, actual length, data bytes that follow)."""
        command, seqnum, _, _, _, status, actual, _, _, _ = RET_SUBMIT_HEAD.unpack_from(b, at)
        if command != RET_SUBMIT:
            fail(f"command {command} for seqnum {seqnum}, want RET_SUBMIT")
        return seqnum, status, actual, -1  # data: actual_length bytes of an IN reply


class Usbredir:
    """usbredir as a usb-guest: hellos, then wait for device_connect; 26-byte reply headers."""

    header = REDIR_REPLY
    tag_at = 8

    def __init__(self, sock):
        version = b"usbvirt python bench guest".ljust(64, b"\0")
        sock.sendall(struct.pack("<3I", REDIR_HELLO, 64 + 4, 0) + version + struct.pack("<I", REDIR_CAPS))
        head = 12  # the host's hello comes with the 32-bit-id header
        while True:
            raw = recv_exact(sock, head)
            kind, length = struct.unpack_from("<II", raw)
            body = recv_exact(sock, length) if length > 0 else b""
            if kind == REDIR_HELLO:
                caps = struct.unpack_from("<I", body, 64)[0] if length >= 68 else 0
                if caps & REDIR_CAPS & ((1 << 5) | (1 << 6)) != (1 << 5) | (1 << 6):
                    fail(f"the host did not offer 64-bit ids and 32-bit bulk lengths (caps 0x{caps:x})")
                head = REDIR_HEADER
            elif kind == REDIR_DEVICE_CONNECT:
                return

    def null_request(self):
        head = REDIR_HEAD.pack(REDIR_CONTROL, REDIR_TYPE_HEADER, 0, 0)
        return bytearray(head + struct.pack("<BBBBHHH", 0, 0x05, 0x40, 0, 0, 0, 0))

    def bulk_request(self, direction_in, length):
        data = 0 if direction_in else length
        head = REDIR_HEAD.pack(REDIR_BULK, REDIR_TYPE_HEADER + data, 0, 0)
        ep = 0x81 if direction_in else 0x01
        return bytearray(head + struct.pack("<BBHIH", ep, 0, length & 0xFFFF, 0, length >> 16))

    def set_tag(self, pdu, at, tag):
        struct.pack_into("<I", pdu, at + 8, tag)

    def parse(self, b, at):
        kind, length, tag, high = REDIR_HEAD.unpack_from(b, at)
        if high != 0:
            fail(f"reply for id {high}:{tag}, not sent")
        if kind == REDIR_CONTROL:
            status = b[at + 19]
            actual = struct.unpack_from("<H", b, at + 24)[0]
        elif kind == REDIR_BULK:
            status = b[at + 17]
            low, high16 = struct.unpack_from("<H4xH", b, at + 18)
            actual = low | (high16 << 16)
        else:
            fail(f"packet type {kind} in the data stream")
        return tag, status, actual, length - REDIR_TYPE_HEADER


# ---------------------------------------------------------------- the stream (the hot path)


class Stream:
    """Requests kept in flight on one non-blocking socket, each resubmitted when its reply is in."""

    def __init__(self, sock, proto):
        self.sock = sock
        self.proto = proto
        self.kind = None
        self.streaming = False
        self.inflight = 0
        self.items = 0
        self.in_bytes = 0
        self.out_bytes = 0
        self.target = -1
        self.wait_items = 0
        self.wait_start = 0.0
        self.outq = []  # buffers (memoryviews) to send, in order
        self.partial = bytearray()
        self.skip = 0
        self.skip_slot = 0
        self.verify = False
        self.serial = 1
        self.slots = []

    # A slot is [pdu, tag offsets, expected length]: a null request, or a bulk pair whose pdu is OUT header
    # + data + IN header with a tag in each header; a slot is an item once all its replies are in.

    def start(self, workload):
        if self.kind is not None:
            fail(f"start while {self.kind} runs")
        kind = workload["kind"]
        self.kind = kind
        self.streaming = True
        self.items = self.in_bytes = self.out_bytes = 0
        self.target = -1
        self.partial = bytearray()
        self.skip = 0
        self.verify = bool(workload.get("verify", False))
        self.replies_left = {}
        self.outstanding = {}  # tag -> slot, for every request in flight
        proto = self.proto
        if kind == "null":
            depth = int(workload["depth"])
            self.slots = [[proto.null_request(), (0,), 0] for _ in range(depth)]
            batch = [self.arm(i) for i in range(depth)]
            self.queue(b"".join(batch))
        elif kind == "bulk64k":
            pairs = int(workload["pairs"])
            self.slots = []
            for i in range(pairs):
                out = proto.bulk_request(False, KIB64)
                pdu = out + bytes([i + 1]) * KIB64 + proto.bulk_request(True, KIB64)
                self.slots.append([pdu, (0, len(out) + KIB64), KIB64])
            for i in range(pairs):
                self.queue(self.arm(i))
        else:
            fail(f"unknown workload {kind}")
        self.flush()

    def arm(self, slot):
        """Give the slot's requests fresh tags (serial << 8 | slot << 1 | 0 or 1) and count them in flight."""
        s = self.slots[slot]
        pdu = s[0]
        serial = self.serial
        self.serial = serial + 1 if serial < 0xFFFFFF else 1
        for k, at in enumerate(s[1]):
            tag = (serial << 8) | (slot << 1) | k
            self.proto.set_tag(pdu, at, tag)
            self.outstanding[tag] = slot
        self.replies_left[slot] = len(s[1])
        self.inflight += len(s[1])
        if len(s[1]) == 2:
            self.out_bytes += KIB64
        return pdu

    def queue(self, pdu):
        self.outq.append(memoryview(pdu))

    def flush(self):
        """send() everything queued, as far as the kernel takes it now."""
        q = self.outq
        while q:
            try:
                n = self.sock.send(q[0])
            except BlockingIOError:
                return False
            if n < len(q[0]):
                q[0] = q[0][n:]
                return False
            q.pop(0)
        return True

    def on_reply(self, b, at, resend):
        tag, status, actual, data = self.proto.parse(b, at)
        slot = self.outstanding.pop(tag, None)
        if slot is None:
            fail(f"reply for tag {tag}, not in flight (or answered twice)")
        s = self.slots[slot]
        is_in = len(s[1]) == 2 and (tag & 1) == 1
        if status != 0:
            fail(f"{self.kind} request (tag {tag}) ended with status {status}")
        if actual != s[2]:
            fail(f"{self.kind} request (tag {tag}): length {actual}, want {s[2]}")
        if data < 0:
            data = actual if is_in else 0
        if data != (actual if is_in else 0):
            fail(f"{self.kind} reply (tag {tag}) carries {data} data bytes")
        if data > 0:
            self.skip = data
            self.skip_slot = slot
            self.in_bytes += data
        else:
            self.replied(slot, resend)

    def replied(self, slot, resend):
        self.inflight -= 1
        self.replies_left[slot] -= 1
        if self.replies_left[slot] > 0:
            return
        self.items += 1
        if self.items == self.target:
            self.target = -1
            reply({"ev": "waited", "items": self.wait_items, "ms": (time.perf_counter() - self.wait_start) * 1000})
        if self.streaming:
            resend.append(self.arm(slot))

    def on_data(self, chunk):
        if self.kind is None:
            fail(f"{len(chunk)} bytes from the server with nothing sent")
        size = self.proto.header
        end = len(chunk)
        at = 0
        resend = []
        while at < end:
            if self.skip > 0:
                n = min(self.skip, end - at)
                if self.verify and chunk.count(self.skip_slot + 1, at, at + n) != n:
                    fail(f"IN data of pair {self.skip_slot} is not the {KIB64} bytes of {self.skip_slot + 1} its OUT sent")
                self.skip -= n
                at += n
                if self.skip == 0:
                    self.replied(self.skip_slot, resend)
            elif not self.partial and end - at >= size:
                self.on_reply(chunk, at, resend)
                at += size
            else:
                n = min(size - len(self.partial), end - at)
                self.partial += chunk[at : at + n]
                at += n
                if len(self.partial) == size:
                    header = bytes(self.partial)
                    self.partial = bytearray()
                    self.on_reply(header, 0, resend)
        if resend:
            if self.kind == "null":
                self.queue(b"".join(resend))
            else:
                for pdu in resend:
                    self.queue(pdu)
            self.flush()
        self.maybe_stopped()

    def wait(self, items):
        if self.kind is None or not self.streaming or self.target != -1:
            fail("wait with no stream running, or twice")
        self.wait_items = items
        self.wait_start = time.perf_counter()
        self.target = self.items + items

    def stop(self):
        if self.kind is None or not self.streaming:
            fail("stop with no stream running")
        self.streaming = False
        self.target = -1
        self.maybe_stopped()

    def maybe_stopped(self):
        if not self.streaming and self.inflight == 0 and self.kind is not None:
            self.kind = None
            reply({"ev": "stopped", "items": self.items, "inBytes": self.in_bytes, "outBytes": self.out_bytes})


# ---------------------------------------------------------------- control (stdin) and the loop


def connect(m):
    sock = socket.create_connection(("127.0.0.1", int(m["port"])))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if m["protocol"] == "usbip":
        proto = Usbip(sock, m["busid"])
    elif m["protocol"] == "usbredir":
        proto = Usbredir(sock)
    else:
        fail(f"unknown protocol {m['protocol']}")
    sock.setblocking(False)
    return sock, Stream(sock, proto)


def main():
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "control")
    stream = None
    sock = None
    writing = False
    lines = b""
    reply({"ev": "ready"})
    while True:
        for key, mask in sel.select():
            if key.data == "control":
                got = os.read(0, 65536)
                if not got:
                    return 0
                lines += got
                while b"\n" in lines:
                    line, lines = lines.split(b"\n", 1)
                    m = json.loads(line)
                    cmd = m["cmd"]
                    if cmd == "connect":
                        if stream is not None:
                            fail("connect twice")
                        sock, stream = connect(m)
                        sel.register(sock, selectors.EVENT_READ, "socket")
                        reply({"ev": "connected"})
                    elif stream is None:
                        fail(f"{cmd} before connect")
                    elif cmd == "start":
                        stream.start(m["workload"])
                        reply({"ev": "started"})
                    elif cmd == "wait":
                        stream.wait(int(m["items"]))
                    elif cmd == "stop":
                        stream.stop()
                    else:
                        fail(f"unknown request {line!r}")
            else:
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(RECV_BYTES)
                    except BlockingIOError:
                        chunk = None
                    if chunk is not None:
                        if not chunk:
                            fail("the server closed the connection")
                        stream.on_data(chunk)
                if mask & selectors.EVENT_WRITE:
                    stream.flush()
            if stream is not None and bool(stream.outq) != writing:
                writing = bool(stream.outq)
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
                sel.modify(sock, events, "socket")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ClientError, OSError, KeyError, ValueError) as err:
        sys.stderr.write(f"python bench client: {err}\n")
        sys.exit(1)
