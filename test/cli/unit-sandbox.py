#!/usr/bin/env python3
"""Run a command inside the parts of a systemd unit's sandbox that a process can impose on itself.

What it applies, as systemd does for the unit's service process:
  SystemCallFilter=       each line in order: a list adds to the allowed system calls, a "~" list takes
                          away; groups (@system-service) are expanded by `systemd-analyze syscall-filter`
  SystemCallErrorNumber=  what a call outside the list returns (default: the process is killed, SIGSYS)
  RestrictAddressFamilies= socket(2) with another family fails with EAFNOSUPPORT
  NoNewPrivileges=yes     (seccomp sets it)
  UMask=
The unit's user, mounts, device policy and namespaces are not reproduced: those need systemd itself.
Needs libseccomp's Python binding (Debian: python3-seccomp).

usage: unit-sandbox.py UNIT_FILE -- COMMAND [ARG...]
Prints "sandbox: N system calls allowed" on stderr, then execs COMMAND.
"""
import errno
import os
import re
import subprocess
import sys

import seccomp

FAMILIES = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def directives(path):
    """The unit file's KEY=VALUE lines in order (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", open(path, encoding="utf-8").read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def groups():
    """Each @group's members, as `systemd-analyze syscall-filter` lists them."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True
    ).stdout
    table, current = {}, None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            table[current] = []
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            table[current].append(line.split()[0])
    return table


def expand(names, table):
    out = set()
    for name in names:
        if name.startswith("@"):
            if name not in table:
                sys.exit(f"unit-sandbox: unknown system call group {name}")
            out |= expand(table[name], table)
        else:
            out.add(name)
    return out


def main():
    if "--" not in sys.argv or sys.argv.index("--") != 2:
        sys.exit("usage: unit-sandbox.py UNIT_FILE -- COMMAND [ARG...]")
    unit, command = sys.argv[1], sys.argv[3:]
    table = groups()
    allowed, denied_errno, families, umask = None, None, None, None
    for key, value in directives(unit):
        if key == "SystemCallFilter":
            deny = value.startswith("~")
            names = expand(value.lstrip("~").split(), table)
            if deny:
                allowed = (allowed if allowed is not None else set()) - names
            else:
                allowed = (allowed or set()) | names
        elif key == "SystemCallErrorNumber":
            denied_errno = getattr(errno, value)
        elif key == "RestrictAddressFamilies":
            families = [FAMILIES[f] for f in value.split()]
        elif key == "UMask":
            umask = int(value, 8)
    if allowed is None:
        sys.exit(f"unit-sandbox: {unit} has no SystemCallFilter=")
    action = seccomp.ERRNO(denied_errno) if denied_errno is not None else seccomp.KILL_PROCESS
    f = seccomp.SyscallFilter(defaction=action)
    count = 0
    for name in sorted(allowed):
        if name == "socket" and families is not None:
            continue
        try:
            f.add_rule(seccomp.ALLOW, name)
            count += 1
        except (RuntimeError, ValueError):
            pass  # not a system call of this architecture (the groups list every architecture's)
    if families is not None and "socket" in allowed:
        for family in families:
            f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
        count += 1
        for family in range(0, 64):
            if family not in families:
                f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    if umask is not None:
        os.umask(umask)
    f.load()
    sys.stderr.write(f"sandbox: {count} system calls allowed\n")
    sys.stderr.flush()
    os.execvp(command[0], command)


main()
