"""The TCP sockets of a run's processes, read from ``/proc`` (Linux).

- What they listen on: every socket in state LISTEN one of them holds, as ``address:port``. The launcher looks when
  every rank has joined, and the run's summary carries the union (``listen_addresses``), so a
  run shows that it listened on loopback only.
- A real partition (fault injection): :func:`cut` closes, both ways, the TCP connections between this process and
  another process of the same host (gloo's link to that rank), so every later send over it fails in gloo itself.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

LISTEN, ESTABLISHED = "0A", "01"  # the state column of /proc/net/tcp


def _address(hexaddr: str) -> str:
    """An address of /proc/net/tcp{,6} (hex, in the kernel's byte order) as text."""
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _table() -> dict[int, tuple[str, str, str]]:
    """Socket inode -> (local, remote, state) of every TCP socket of this host's network namespace (hex, as /proc)."""
    out = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if path.is_file():
            for line in path.read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9:
                    out[int(cols[9])] = (cols[1], cols[2], cols[3])
    return out


def _fds(pid: int | str = "self") -> dict[int, int]:
    """Socket inode -> file descriptor of process ``pid``."""
    out = {}
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:  # gone, or not ours to read
        return out
    for fd in entries:
        try:
            target = os.readlink(fd.path)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(fd.name)
    return out


def connections_to(pid: int) -> dict[int, int]:
    """Socket inode -> file descriptor of this process's established TCP connections whose other end ``pid`` holds."""
    table = _table()
    theirs = {table[i][:2] for i in _fds(pid) if i in table and table[i][2] == ESTABLISHED}
    return {i: fd for i, fd in _fds().items() if i in table and table[i][2] == ESTABLISHED
            and (table[i][1], table[i][0]) in theirs}


def cut(pid: int) -> int:
    """Close both ways every TCP connection between this process and process ``pid``; returns how many.

    Each descriptor is duplicated and checked to still be the socket found (a descriptor closed and reused
    meanwhile is left alone); a connection already gone is not counted."""
    closed = 0
    for inode, fd in connections_to(pid).items():
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            if os.fstat(dup).st_ino == inode:
                with socket.socket(fileno=dup) as s:
                    dup = None  # the socket object owns it now
                    s.shutdown(socket.SHUT_RDWR)
                    closed += 1
        except OSError:
            pass
        finally:
            if dup is not None:
                os.close(dup)
    return closed


def listening_table(text: str) -> dict[int, str]:
    """Socket inode -> ``address:port`` of the LISTEN rows of one /proc/net/tcp or tcp6 file's text."""
    out = {}
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[3] == LISTEN:
            host, port = cols[1].split(":")
            out[int(cols[9])] = f"{_address(host)}:{int(port, 16)}"
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds (empty when it is gone)."""
    return set(_fds(pid))


def listening(pids) -> set[str]:
    """``address:port`` of every socket the processes ``pids`` listen on."""
    table = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if path.is_file():
            table.update(listening_table(path.read_text()))
    return {table[i] for pid in pids for i in socket_inodes(pid) if i in table}


def is_loopback_host(host: str) -> bool:
    """``host`` is or resolves to a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def is_loopback(address: str) -> bool:
    """``address:port`` is on a loopback address."""
    return is_loopback_host(address.rsplit(":", 1)[0])


class Watch:
    """The union of what ``procs`` (rank -> Popen) listened on, over every :meth:`look`."""

    def __init__(self, procs: dict):
        self.procs, self.seen = procs, set()

    def look(self) -> None:
        self.seen |= listening(p.pid for p in self.procs.values() if p.poll() is None)

    @property
    def addresses(self) -> list[str]:
        return sorted(self.seen)
