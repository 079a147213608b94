"""Whether a server could listen on an address now, and, when another process holds the
port, which one (best effort, from Linux's /proc)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from mesh.config import parse_host_port

_LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


def listen_problem(address: str) -> OSError | None:
    """Why a server could not listen on `address` (`host:port` or `unix:PATH`) now, or None if
    it could: a port another process holds, a host no interface of this machine has, a name
    that does not resolve. Each socket is bound as gRPC and the facade bind theirs
    (SO_REUSEADDR, never SO_REUSEPORT), then closed."""
    if address.startswith("unix:"):
        return _unix_socket_problem(address)
    host, port = parse_host_port(address)
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    problems: list[OSError] = []
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                problems.append(exc)
    # gRPC listens on every address a name resolves to that it can bind: one taken is a
    # conflict, one absent (::1 without IPv6) is not, unless none is left.
    taken = [p for p in problems if p.errno == errno.EADDRINUSE]
    if taken or len(problems) == len(resolved):
        return (taken or problems)[0]
    return None


def _unix_socket_problem(address: str) -> OSError | None:
    # gRPC removes a socket file it finds at the path, so a second server would quietly take
    # the path over: whoever answers a connection there holds it.
    path = address.removeprefix("unix:")
    path = path[2:] if path.startswith("//") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return None
    return OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def port_holder(port: int) -> str | None:
    """`pid 1234: python -m launcher serve products`, the process listening on TCP `port`, or
    None when it cannot be told (not Linux, or another user's process)."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not sockets:
        return None
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (process / "fd").iterdir()):
                argv = (process / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                return f"pid {process.name}: {_command(argv)}"
        except OSError:  # gone meanwhile, or not ours to look into
            continue
    return None


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP `port`, over IPv4 and IPv6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            fields = row.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _command(argv: list[bytes]) -> str:
    """The command line, its program by name only: `python -m launcher serve products`."""
    words = [os.fsdecode(word) for word in argv]
    return " ".join([os.path.basename(words[0]), *words[1:]])
