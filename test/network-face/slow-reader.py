#!/usr/bin/env python3
"""A peer that floods a server and never reads, with the smallest receive buffers TCP allows.

It asks for a 2 KiB receive buffer and a 536-byte MSS before it connects, so that what the server
answers cannot hide in the kernel's buffers (on loopback they would otherwise take megabytes): the
server's own bounds have to hold it. Standard library only.

usage: slow-reader.py PORT PRELUDE_HEX AWAIT UNIT_HEX [CA CERT KEY]
  PRELUDE_HEX  bytes to send first (a hello, an import request)
  AWAIT        what to read before flooding, and nothing after: "none", "usbip-import" (the 320-byte
               OP_REP_IMPORT), "usbredir-connect" (packets up to device_connect, 12-byte headers)
  UNIT_HEX     bytes sent over and over until the server closes the connection
  CA CERT KEY  PEM files: speak mutual TLS 1.3 (the server verified by CA, this client's certificate
               and key), over the same small buffers
Prints one line on stdout: "ready" once flooding, then "closed SENT" with the bytes sent when dropped.
"""
import socket
import ssl
import struct
import sys


def read_exactly(s, n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise ConnectionError("closed while awaiting")
        got += chunk
    return got


def main():
    port = int(sys.argv[1])
    prelude = bytes.fromhex(sys.argv[2])
    wait = sys.argv[3]
    unit = bytes.fromhex(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.connect(("127.0.0.1", port))
    if len(sys.argv) > 5:
        ca, cert, key = sys.argv[5:8]
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(prelude)
    if wait == "usbip-import":
        read_exactly(s, 320)
    elif wait == "usbredir-connect":
        while True:
            kind, length, _ = struct.unpack("<III", read_exactly(s, 12))
            read_exactly(s, length)
            if kind == 1:  # device_connect
                break
    print("ready", flush=True)
    sent = 0
    try:
        while True:
            s.sendall(unit)
            sent += len(unit)
    except OSError:
        pass
    print(f"closed {sent}", flush=True)


main()
