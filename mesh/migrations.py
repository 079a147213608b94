"""Alembic, configured in code: one migration history per service.

Each service keeps its history in its own package (`auth/migrations/versions/…`) and its
revision in its own version table (`alembic_version_auth`), so services may share one
database server, or even one database, without seeing each other's migrations. No
alembic.ini: `config(service)` builds the configuration, and the service's `env.py` hands
its models' metadata to `run_env`.

Migrations run on the connection `upgrade`/`downgrade` pass in, inside one transaction
(PostgreSQL and SQLite roll back DDL with it; MariaDB commits each DDL statement), under a
lock that keeps two replicas starting together from migrating at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from mesh.revisions import version_table

if TYPE_CHECKING:
    from mesh.db import Database

_LOCK_WAIT_SECONDS = 60


def config(service: str, connection: Connection | None = None) -> Config:
    """The Alembic configuration of `service`'s history; `connection` is the one to migrate."""
    cfg = Config()
    cfg.set_main_option("script_location", f"{service}:migrations")
    cfg.attributes["service"] = service
    cfg.attributes["connection"] = connection
    return cfg


def head(service: str) -> str:
    head = ScriptDirectory.from_config(config(service)).get_current_head()
    assert head is not None, f"{service} has no migrations"
    return head


def context_options(service: str, metadata: MetaData, connection: Connection) -> dict[str, Any]:
    """How Alembic sees `service`'s schema: its version table, and only its own tables."""
    tables = set(metadata.tables)

    def include_name(name: str | None, kind: str, parent: Any) -> bool:
        return kind != "table" or name in tables

    return {
        "connection": connection,
        "target_metadata": metadata,
        "version_table": version_table(service),
        "include_name": include_name,
        "compare_type": True,
        "render_as_batch": connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    }


def run_env(metadata: MetaData) -> None:
    """The body of every service's `env.py`: run the migrations on the connection given."""
    from alembic import context

    cfg = context.config
    connection = cfg.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `invmesh migrate`, which passes the connection in")
    context.configure(**context_options(cfg.attributes["service"], metadata, connection))
    with context.begin_transaction():
        context.run_migrations()


def knows(service: str, revision: str) -> bool:
    """Whether `revision` is in this code's history of `service` (not one of a newer version)."""
    try:
        return ScriptDirectory.from_config(config(service)).get_revision(revision) is not None
    except CommandError:
        return False


async def current(db: Database, service: str) -> str | None:
    """The revision the database is at; None when it was never migrated."""

    def read(connection: Connection) -> str | None:
        options = {"version_table": version_table(service)}
        return MigrationContext.configure(connection, opts=options).get_current_revision()

    async with db.session() as session:
        conn = await session.connection()
        return await conn.run_sync(read)


async def upgrade(db: Database, service: str, revision: str = "head") -> None:
    await _run(db, service, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(db: Database, service: str, revision: str) -> None:
    await _run(db, service, lambda cfg: command.downgrade(cfg, revision))


async def _run(db: Database, service: str, step: Callable[[Config], None]) -> None:
    async with db.write_connection() as conn:
        await conn.run_sync(lambda sync: _locked(sync, service, lambda: step(config(service, sync))))


def _locked(connection: Connection, service: str, run: Callable[[], None]) -> None:
    """Runs `run` holding a lock named after the service (SQLite's write lock is held already)."""
    name = f"invmesh_migrate_{service}"
    dialect = connection.dialect.name
    if dialect == "postgresql":  # released when the transaction ends
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
    elif dialect in ("mysql", "mariadb"):
        got = connection.execute(
            text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": _LOCK_WAIT_SECONDS}
        ).scalar()
        if got != 1:
            raise TimeoutError(f"another process has been migrating {service} for {_LOCK_WAIT_SECONDS}s")
        try:
            run()
        finally:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        return
    run()
