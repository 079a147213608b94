"""The databases each side runs on: SQLite files in the run's folder, or fresh PostgreSQL databases.

On PostgreSQL every run creates its own databases, `bench_<pid>_auth`, `…_products`,
`…_inventory` (one per invmesh service, as deployed) and `…_peer`, and drops them at the end,
also after an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

SERVICES = ("auth", "products", "inventory")
DATABASES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Databases:
    name: str  # sqlite or postgresql
    invmesh_env: dict[str, str]  # <SERVICE>_DATABASE_URL for every service
    peer_url: str  # the peer's DATABASE_URL
    description: str  # for the report


@contextlib.contextmanager
def databases(name: str, workdir: Path, server: str) -> Iterator[Databases]:
    """SQLite files under `workdir`, or databases created on the PostgreSQL `server` and dropped after."""
    if name == "sqlite":
        env = {f"{service.upper()}_DATABASE_URL": "" for service in SERVICES}  # files in INVMESH_DATA_DIR
        yield Databases(name, env, f"sqlite+aiosqlite:///{workdir / 'peer.db'}", "SQLite files (WAL)")
        return
    prefix = f"bench_{os.getpid()}"
    names = {service: f"{prefix}_{service}" for service in (*SERVICES, "peer")}
    drop = [f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in names.values()]
    try:
        asyncio.run(_admin(server, [f'CREATE DATABASE "{db}"' for db in names.values()]))
    except (OSError, asyncpg.PostgresError) as exc:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            asyncio.run(_admin(server, drop))  # any created before the failure
        raise SystemExit(
            f"bench: cannot create databases on {server}: {exc}\n"
            "Start PostgreSQL (see bench/README.md), pass --postgres URL, or --databases sqlite."
        ) from None
    try:
        urls = {service: _sqlalchemy_url(server, db) for service, db in names.items()}
        env = {f"{service.upper()}_DATABASE_URL": urls[service] for service in SERVICES}
        where = urlsplit(server).netloc.rpartition("@")[2]
        yield Databases(name, env, urls["peer"], f"PostgreSQL on {where}, databases {prefix}_*")
    finally:
        asyncio.run(_admin(server, drop))


def _sqlalchemy_url(server: str, database: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", parts.query, ""))


async def _admin(server: str, statements: list[str]) -> None:
    """Runs each statement outside a transaction, connected to the server's `postgres` database."""
    parts = urlsplit(server)
    connection = await asyncpg.connect(urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, "")))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()
