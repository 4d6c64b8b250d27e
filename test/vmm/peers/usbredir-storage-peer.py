#!/usr/bin/env python3
"""A naive usbredir usb-host serving a RAM disk as a USB mass-storage device (Bulk-Only Transport, SCSI).

The peer to beat in the QEMU guest's storage read (test/vmm/storage-read.test.ts): single-threaded,
one blocking socket, exact recv()s, one sendall() per reply, the disk a bytearray. Standard library
only (Debian's python3); run it with `python3 -B` so no .pyc is written.

    python3 -B usbredir-storage-peer.py [--size-mib 64] [--serial HEX] [--product NAME]

It listens on 127.0.0.1 on a free port, prints `LISTENING <port>` on stdout and serves one connection
after another (QEMU's usb-redir chardev connects) until it is killed. Per connection: hello (with the
capabilities QEMU's xHCI needs: 64-bit ids, 32-bit bulk lengths, ep_info max packet sizes), then, after
the peer's hello, ep_info, interface_info and device_connect. Data packets are answered at once:
control packets (GET_DESCRIPTOR, GET_STATUS, CLEAR_FEATURE, the BOT class requests), bulk packets
carrying Bulk-Only Transport (CBW, data, CSW) with INQUIRY, TEST UNIT READY, READ CAPACITY(10),
MODE SENSE(6), REQUEST SENSE, READ(10), WRITE(10); others fail with ILLEGAL REQUEST sense.
"""

import argparse
import socket
import struct
import sys

# usbredir packet types and values (usbredirproto.h).
HELLO, DEVICE_CONNECT, RESET, INTERFACE_INFO, EP_INFO = 0, 1, 3, 4, 5
SET_CONFIGURATION, GET_CONFIGURATION, CONFIGURATION_STATUS = 6, 7, 8
SET_ALT_SETTING, GET_ALT_SETTING, ALT_SETTING_STATUS = 9, 10, 11
CANCEL_DATA_PACKET = 21
CONTROL_PACKET, BULK_PACKET = 100, 101
SUCCESS, STALL = 0, 4
SPEED_HIGH = 2
EP_CONTROL, EP_BULK, EP_INVALID = 0, 2, 255
CAP_CONNECT_DEVICE_VERSION, CAP_EP_INFO_MAX_PACKET_SIZE, CAP_64BITS_IDS, CAP_32BITS_BULK_LENGTH = 1, 4, 5, 6
OUR_CAPS = (
    (1 << CAP_CONNECT_DEVICE_VERSION)
    | (1 << CAP_EP_INFO_MAX_PACKET_SIZE)
    | (1 << CAP_64BITS_IDS)
    | (1 << CAP_32BITS_BULK_LENGTH)
)

BULK_IN, BULK_OUT = 0x81, 0x02
BLOCK = 512


def string_descriptor(text):
    data = text.encode("utf-16-le")
    return bytes([2 + len(data), 3]) + data


class Disk:
    """The device: descriptors, control requests, and the Bulk-Only Transport over a RAM disk."""

    def __init__(self, size_mib, serial, product):
        self.data = bytearray(size_mib * 1024 * 1024)
        self.blocks = len(self.data) // BLOCK
        self.serial = serial
        self.product = product
        self.device_desc = struct.pack(
            "<BBHBBBBHHHBBBB", 18, 1, 0x0200, 0, 0, 0, 64, 0x1209, 0x0003, 0x0100, 1, 2, 3, 1
        )
        interface = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 2, 0x08, 0x06, 0x50, 0)
        ep_in = struct.pack("<BBBBHB", 7, 5, BULK_IN, 2, 512, 0)
        ep_out = struct.pack("<BBBBHB", 7, 5, BULK_OUT, 2, 512, 0)
        body = interface + ep_in + ep_out
        self.config_desc = struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0x80, 100) + body
        self.strings = {
            0: bytes([4, 3, 0x09, 0x04]),
            1: string_descriptor("naive python"),
            2: string_descriptor(product),
            3: string_descriptor(serial),
        }
        self.reset()

    def reset(self):
        self.phase = "cbw"
        self.tag = 0
        self.host_length = 0
        self.data_in = b""
        self.out_offset = 0
        self.out_left = 0
        self.status = 0
        self.sense = (0, 0, 0)

    # ---- control ----------------------------------------------------------------------------

    def control(self, request_type, request, value, index, length):
        """Returns (status, data) for an IN request, (status, b"") for an OUT one."""
        if request_type == 0x80 and request == 6:  # GET_DESCRIPTOR
            kind, number = value >> 8, value & 0xFF
            if kind == 1:
                return SUCCESS, self.device_desc[:length]
            if kind == 2 and number == 0:
                return SUCCESS, self.config_desc[:length]
            if kind == 3 and number in self.strings:
                return SUCCESS, self.strings[number][:length]
            return STALL, b""
        if request_type in (0x80, 0x81, 0x82) and request == 0:  # GET_STATUS
            return SUCCESS, b"\x00\x00"[:length]
        if request_type in (0x00, 0x01, 0x02) and request in (1, 3):  # CLEAR_FEATURE, SET_FEATURE
            return SUCCESS, b""
        if request_type == 0xA1 and request == 0xFE:  # GET MAX LUN
            return SUCCESS, b"\x00"[:length]
        if request_type == 0x21 and request == 0xFF:  # Bulk-Only Mass Storage Reset
            self.reset()
            return SUCCESS, b""
        return STALL, b""

    # ---- bulk: Bulk-Only Transport ----------------------------------------------------------

    def bulk_out(self, data):
        """Returns (status, bytes accepted)."""
        if self.phase == "cbw":
            if len(data) != 31 or data[:4] != b"USBC":
                return STALL, 0
            tag, length, _flags, _lun, cb_length = struct.unpack_from("<IIBBB", data, 4)
            self.command(tag, length, bytes(data[15 : 15 + min(cb_length, 16)]).ljust(16, b"\0"))
            return SUCCESS, len(data)
        if self.phase == "data-out":
            n = min(len(data), self.out_left)
            self.data[self.out_offset : self.out_offset + n] = data[:n]
            self.out_offset += n
            self.out_left -= n
            if self.out_left == 0:
                self.phase = "csw"
            return SUCCESS, len(data)
        if self.phase == "stall":
            self.phase = "csw"
        return STALL, 0

    def bulk_in(self, length):
        """Returns (status, data)."""
        if self.phase == "data-in":
            chunk = self.data_in[:length]
            self.data_in = self.data_in[length:]
            if len(self.data_in) == 0:
                self.phase = "csw"
            return SUCCESS, chunk
        if self.phase == "csw":
            self.phase = "cbw"
            residue = self.host_length - self.moved
            return SUCCESS, struct.pack("<4sIIB", b"USBS", self.tag, max(0, residue), self.status)
        if self.phase == "stall":
            self.phase = "csw"
        return STALL, b""

    def command(self, tag, host_length, cb):
        self.tag = tag
        self.host_length = host_length
        self.status = 0
        self.moved = 0
        op = cb[0] if cb else 0xFF
        data = None
        if op == 0x00:  # TEST UNIT READY
            data = b""
        elif op == 0x03:  # REQUEST SENSE
            key, asc, ascq = self.sense
            data = struct.pack(">BBBIBIBBBBBB", 0x70, 0, key, 0, 10, 0, asc, ascq, 0, 0, 0, 0)[: cb[4]]
        elif op == 0x12:  # INQUIRY (standard data only)
            if cb[1] & 1:
                return self.fail(host_length, (5, 0x24, 0))
            ident = b"PYTHON  " + self.product.encode()[:16].ljust(16) + b"0100"
            data = (bytes([0, 0, 5, 2, 31, 0, 0, 0]) + ident)[: (cb[3] << 8) | cb[4]]
        elif op == 0x25:  # READ CAPACITY(10)
            data = struct.pack(">II", self.blocks - 1, BLOCK)
        elif op == 0x1A:  # MODE SENSE(6): a header only, no pages, not write-protected
            data = bytes([3, 0, 0, 0])[: cb[4]]
        elif op in (0x28, 0x2A):  # READ(10), WRITE(10)
            lba, count = struct.unpack_from(">IxH", cb, 2)
            if lba + count > self.blocks:
                return self.fail(host_length, (5, 0x21, 0))
            start, n = lba * BLOCK, count * BLOCK
            if op == 0x28:
                data = bytes(self.data[start : start + n])
            else:
                self.sense = (0, 0, 0)
                self.out_offset, self.out_left, self.moved = start, n, n
                self.phase = "data-out" if n > 0 else "csw"
                return
        if data is None:
            return self.fail(host_length, (5, 0x20, 0))
        self.sense = (0, 0, 0)
        self.data_in = data[:host_length]
        self.moved = len(self.data_in)
        self.phase = "data-in" if self.data_in else "csw"

    def fail(self, host_length, sense):
        self.sense = sense
        self.status = 1
        self.moved = 0
        # A data stage the host expects gets a stall (it clears the halt, then reads the CSW).
        self.data_in = b""
        self.phase = "stall" if host_length > 0 else "csw"


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def serve(conn, disk):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    version = b"naive python usbredir".ljust(64, b"\0")
    conn.sendall(struct.pack("<III", HELLO, 64 + 4, 0) + version + struct.pack("<I", OUR_CAPS))
    ptype, length, _ = struct.unpack("<III", recv_exact(conn, 12))
    if ptype != HELLO:
        raise ValueError(f"expected a hello, got type {ptype}")
    hello = recv_exact(conn, length)
    peer_caps = struct.unpack_from("<I", hello, 64)[0] if length >= 68 else 0
    caps = peer_caps & OUR_CAPS
    wide = caps & (1 << CAP_64BITS_IDS)
    bulk_header = 10 if caps & (1 << CAP_32BITS_BULK_LENGTH) else 8
    header = "<IIQ" if wide else "<III"
    header_size = struct.calcsize(header)

    def send(ptype, pid, type_header, data=b""):
        conn.sendall(struct.pack(header, ptype, len(type_header) + len(data), pid) + type_header + data)

    # ep_info (with max packet sizes), interface_info, device_connect (with bcdDevice).
    types = [EP_INVALID] * 32
    types[0] = types[16] = EP_CONTROL
    types[BULK_OUT & 0x0F] = EP_BULK
    types[16 + (BULK_IN & 0x0F)] = EP_BULK
    sizes = [0] * 32
    sizes[0] = sizes[16] = 64
    sizes[BULK_OUT & 0x0F] = sizes[16 + (BULK_IN & 0x0F)] = 512
    send(EP_INFO, 0, bytes(types) + bytes(32) + bytes(32) + struct.pack("<32H", *sizes))
    itf = [0] * 32
    send(
        INTERFACE_INFO,
        0,
        struct.pack("<I", 1) + bytes(itf) + bytes([8] + itf[1:]) + bytes([6] + itf[1:]) + bytes([0x50] + itf[1:]),
    )
    send(DEVICE_CONNECT, 0, struct.pack("<BBBBHHH", SPEED_HIGH, 0, 0, 0, 0x1209, 0x0003, 0x0100))

    configuration = 1
    while True:
        ptype, length, pid = struct.unpack(header, recv_exact(conn, header_size))
        body = recv_exact(conn, length) if length else b""
        if ptype == CONTROL_PACKET:
            endpoint, request, request_type, _s, value, index, wlength = struct.unpack_from("<BBBBHHH", body)
            status, data = disk.control(request_type, request, value, index, wlength)
            reply = struct.pack("<BBBBHHH", endpoint, request, request_type, status, value, index, len(data))
            send(CONTROL_PACKET, pid, reply, data)
        elif ptype == BULK_PACKET:
            endpoint, _s, low, stream = struct.unpack_from("<BBHI", body)
            high = struct.unpack_from("<H", body, 8)[0] if bulk_header == 10 else 0
            want = (high << 16) | low
            if endpoint & 0x80:
                status, data = disk.bulk_in(want)
                n = len(data)
            else:
                status, n = disk.bulk_out(body[bulk_header:])
                data = b""
            reply = struct.pack("<BBHI", endpoint, status, n & 0xFFFF, stream)
            if bulk_header == 10:
                reply += struct.pack("<H", n >> 16)
            send(BULK_PACKET, pid, reply, data)
        elif ptype == SET_CONFIGURATION:
            configuration = body[0]
            disk.reset()
            send(CONFIGURATION_STATUS, pid, bytes([SUCCESS, configuration]))
        elif ptype == GET_CONFIGURATION:
            send(CONFIGURATION_STATUS, pid, bytes([SUCCESS, configuration]))
        elif ptype == SET_ALT_SETTING:
            send(ALT_SETTING_STATUS, pid, bytes([SUCCESS if body[1] == 0 else STALL, body[0], 0]))
        elif ptype == GET_ALT_SETTING:
            send(ALT_SETTING_STATUS, pid, bytes([SUCCESS, body[0], 0]))
        elif ptype == RESET:
            disk.reset()
        elif ptype == CANCEL_DATA_PACKET:
            pass  # every packet is answered at once: nothing is ever pending
        # Anything else (streams, filters) is not used by a BOT disk and is ignored.


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--serial", default="5059504545520001")
    parser.add_argument("--product", default="naive python disk")
    args = parser.parse_args()
    disk = Disk(args.size_mib, args.serial, args.product)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(f"LISTENING {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            serve(conn, disk)
        except (EOFError, ConnectionError):
            pass
        except Exception as err:  # a naive peer: say what broke, serve the next connection
            print(f"connection failed: {err!r}", file=sys.stderr, flush=True)
        finally:
            conn.close()
            disk.reset()


if __name__ == "__main__":
    main()
