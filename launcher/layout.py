"""What the launcher's commands share: the components by name, the settings, and where
replicas listen."""

from __future__ import annotations

import argparse
import sys

from mesh.config import (
    ConfigError,
    Settings,
    join_host_port,
    load_settings,
    parse_host_port,
    service_endpoints,
)
from mesh.services import SERVICES

FACADE = "facade"
COMPONENTS = [*SERVICES, FACADE]


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.exit(f"invmesh: {exc}")


REPLICA_PORT_STEP = 10  # replica k of a service listens on the port of its address + 10*k


def listen_address(address: str) -> str:
    """Where a service listens by default: the first place its `<SERVICE>_ADDR` names."""
    return service_endpoints(address)[0]


def replica_addresses(address: str, count: int) -> list[str]:
    """`count` addresses from a service's listen address: its port, then the port + 10, + 20, …"""
    first = listen_address(address)
    if first.startswith("unix:"):
        raise ValueError(f"{first!r} is a socket path, with no port for replicas to count from")
    host, port = parse_host_port(first)
    if (last := port + REPLICA_PORT_STEP * (count - 1)) > 65535:
        raise ValueError(f"{first!r} leaves no room for {count} replicas: the last would need port {last}")
    return [join_host_port(host, port + REPLICA_PORT_STEP * k) for k in range(count)]


def replica_metrics_address(address: str, k: int) -> str:
    """Where replica k serves its metrics: the port of its `<SERVICE>_METRICS_ADDR` + 10*k."""
    host, port = parse_host_port(address)
    if (moved := port + REPLICA_PORT_STEP * k) > 65535:
        raise ValueError(f"{address!r} leaves no room for replica {k}: it would need port {moved}")
    return join_host_port(host, moved)


def parse_replicas(text: str) -> dict[str, int]:
    """`inventory=2,products=2` -> {"inventory": 2, "products": 2} (argparse type)."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        name = name.strip()
        if not sep:
            raise argparse.ArgumentTypeError(f"{part!r} is not SERVICE=COUNT")
        if name not in SERVICES:
            raise argparse.ArgumentTypeError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
        try:
            counts[name] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"the count of {name} must be a whole number, not {count!r}"
            ) from None
        if counts[name] < 1:
            raise argparse.ArgumentTypeError(f"the count of {name} must be at least 1, not {counts[name]}")
    if not counts:
        raise argparse.ArgumentTypeError("expected SERVICE=COUNT[,SERVICE=COUNT…]")
    return counts


def parse_listen(text: str) -> str:
    """The argparse type of `serve --listen`: one place a `<SERVICE>_ADDR` could name."""
    try:
        places = service_endpoints(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(places) > 1:
        raise argparse.ArgumentTypeError(f"{text!r} names {len(places)} addresses; a process listens on one")
    return places[0]
