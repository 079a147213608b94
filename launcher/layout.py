"""What the launcher's commands share: the components by name, the settings, and where
replicas listen."""

from __future__ import annotations

import argparse
import sys

from mesh.config import ConfigError, Settings, load_settings
from mesh.services import SERVICES

FACADE = "facade"
COMPONENTS = [*SERVICES, FACADE]


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.exit(f"invmesh: {exc}")


REPLICA_PORT_STEP = 10  # replica k of a service listens on the port of its address + 10*k


def first_address(address: str) -> str:
    """The first `host:port` of a `*_ADDR` that may be a comma list of replicas."""
    return address.split(",", 1)[0].strip()


def replica_addresses(address: str, count: int) -> list[str]:
    """`count` addresses from one `host:port`: the port, then the port + 10, + 20, …"""
    host, _, port = first_address(address).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return [f"{host}:{int(port) + REPLICA_PORT_STEP * k}" for k in range(count)]


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
