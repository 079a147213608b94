"""What a service needs at startup to see that its schema is current without loading Alembic,
which brings Mako and Pygments and holds about 10 MiB for the life of the process: the newest
revision of its history, read from the file names, and the revision the database is at, read
with one SELECT. Alembic itself (`mesh.migrations`) loads only to migrate or to explain.

A revision's id is the four digits its file name starts with, and it revises the one before:
tests/test_databases.py holds every history to that, against Alembic's own reading.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Select, column, select, table
from sqlalchemy import exc as sa_exc

if TYPE_CHECKING:
    from mesh.db import Database


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def newest(service: str) -> str:
    versions = resources.files(service).joinpath("migrations", "versions")
    return max(f.name[:4] for f in versions.iterdir() if f.name[:4].isdigit() and f.name.endswith(".py"))


async def is_newest(db: Database, service: str) -> bool:
    """Whether the database is at `service`'s newest revision."""
    query: Select[str] = select(column("version_num")).select_from(table(version_table(service)))
    try:
        found = await db.fetch(query)
    except sa_exc.DBAPIError:  # no version table: never migrated, or not invmesh's database
        return False
    return [row[0] for row in found] == [newest(service)]
