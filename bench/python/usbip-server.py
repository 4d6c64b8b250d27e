"""A naive pure-Python USB/IP server: the peer the bench measures `usbvirt serve` against.

Written the plain way, on purpose: a thread per connection on a blocking socket; each request read
with exact recv()s (the 48-byte header, then its OUT data), answered with one sendall(). It exports
one device, busid 1-1, that behaves like usbvirt's emulated loopback where the bench looks: endpoint 0
answers every control request with success and no data (SET_CONFIGURATION, the vendor RESET_STATS),
bulk OUT on endpoint 1 queues what it got, bulk IN on endpoint 1 returns the oldest queued message
(an IN that finds the queue empty waits for the next OUT, as the loopback's does).

Run by the bench (bench/python-peer.ts): it prints {"ev": "listening", "port": P} on stdout once
listening on 127.0.0.1 (port 0: any free port, or argv[1]), and exits when stdin closes.
"""

import json
import socket
import struct
import sys
import threading
from collections import deque

USBIP_VERSION = 0x0111
OP_REQ_IMPORT = 0x8003
OP_REP_IMPORT = 0x0003
CMD_SUBMIT = 1
CMD_UNLINK = 2
RET_SUBMIT = 3
RET_UNLINK = 4
BUSID = b"1-1"
BUSNUM, DEVNUM = 1, 2
HEADER = struct.Struct(">10I8s")
RET = struct.Struct(">5I5i8x")
MAX_LENGTH = 4 * 1024 * 1024


def recv_exact(conn, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = conn.recv_into(view[got:], n - got)
        if r == 0:
            raise EOFError
        got += r
    return buf


def device_record():
    # path[256], busid[32], busnum, devnum, speed (high), idVendor, idProduct, bcdDevice, class,
    # subclass, protocol, bConfigurationValue, bNumConfigurations, bNumInterfaces.
    return struct.pack(
        ">256s32s3I3H6B", b"/sys/devices/python/usb1/1-1", BUSID, BUSNUM, DEVNUM, 3,
        0x1209, 0x0001, 0x0100, 0xFF, 0, 0, 1, 2, 1,
    )


def ret_submit(seqnum, status, actual):
    return RET.pack(RET_SUBMIT, seqnum, 0, 0, 0, status, actual, 0, 0, 0)


def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    version, code, _ = struct.unpack(">HHI", recv_exact(conn, 8))
    if version != USBIP_VERSION or code != OP_REQ_IMPORT:
        return
    busid = bytes(recv_exact(conn, 32)).rstrip(b"\0")
    if busid != BUSID:
        conn.sendall(struct.pack(">HHI", USBIP_VERSION, OP_REP_IMPORT, 1))
        return
    conn.sendall(struct.pack(">HHI", USBIP_VERSION, OP_REP_IMPORT, 0) + device_record())
    fifo = deque()  # OUT messages not read back yet
    waiting = deque()  # (seqnum, length) of INs that found the queue empty
    while True:
        command, seqnum, _, direction, ep, _, length, _, _, _, setup = HEADER.unpack(recv_exact(conn, 48))
        if command == CMD_UNLINK:
            # Every request is answered before the next is read: nothing is left to unlink.
            conn.sendall(RET.pack(RET_UNLINK, seqnum, 0, 0, 0, 0, 0, 0, 0, 0))
            continue
        if command != CMD_SUBMIT or length > MAX_LENGTH:
            return
        data = recv_exact(conn, length) if direction == 0 and length > 0 else None
        if ep == 0:
            conn.sendall(ret_submit(seqnum, 0, 0))
        elif ep == 1 and direction == 0:
            fifo.append(data if data is not None else b"")
            conn.sendall(ret_submit(seqnum, 0, length))
            while fifo and waiting:
                seq, want = waiting.popleft()
                message = fifo.popleft()[:want]
                conn.sendall(ret_submit(seq, 0, len(message)) + message)
        elif ep == 1:
            if fifo:
                message = fifo.popleft()[:length]
                conn.sendall(ret_submit(seqnum, 0, len(message)) + message)
            else:
                waiting.append((seqnum, length))
        else:
            conn.sendall(ret_submit(seqnum, -32, 0))  # -EPIPE: no such endpoint


def connection(conn):
    try:
        with conn:
            serve(conn)
    except (EOFError, OSError):
        pass


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    listener.listen(8)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdout.write(json.dumps({"ev": "listening", "port": listener.getsockname()[1]}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent goes
    return 0


if __name__ == "__main__":
    sys.exit(main())
