"""The administrative commands: `invmesh migrate`, `invmesh keys rotate`, `invmesh users …`.
They work on the services' databases directly, with the same settings as the services.

Every command but `migrate` needs a database that holds the invmesh schema: pointed at any
other, it says so and changes nothing there (it creates no SQLite file, and no table).
Messages go to stderr; what `users list` and `users show` find goes to stdout.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.layout import settings_or_exit
from mesh.config import Settings
from mesh.paging import DEFAULT_PAGE_SIZE

if TYPE_CHECKING:
    from auth.directory import AccountDetails
    from auth.models import User
    from mesh.db import Database

_WHICH_DATABASE = (
    "INVMESH_DATA_DIR or AUTH_DATABASE_URL must be those of the running services "
    "(a new database gets its schema from `invmesh migrate auth`)"
)


class Refusal(Exception):
    """The command cannot go on; the message says why, and is printed after "invmesh: "."""


def _refuse(message: str) -> int:
    print(f"invmesh: {message}", file=sys.stderr)
    return 1


async def migrate(names: list[str], *, tell_current: bool = True) -> int:
    """Upgrades each service's database to its newest migration; 1 if any could not be."""
    from mesh import migrations  # alembic is only needed here and at startup
    from mesh.db import Database, describe_error

    settings = settings_or_exit()
    status = 0
    for name in names:
        db = Database.for_service(settings, name)
        try:
            before = await migrations.current(db, name)
            await migrations.upgrade(db, name)
            head = migrations.head(name)
            if before != head or tell_current:
                done = "already at" if before == head else f"migrated from {before or 'empty'} to"
                print(f"invmesh: {name}: {done} revision {head}", file=sys.stderr)
        except Exception as exc:
            print(f"invmesh: {name}: migration failed: {describe_error(exc)}", file=sys.stderr)
            status = 1
        finally:
            await db.dispose()
    return status


@asynccontextmanager
async def _auth_database(settings: Settings) -> AsyncIterator[Database]:
    """The auth database, once it is known to hold this version's schema. Anything that goes
    wrong on it, here or in the block, becomes a Refusal that names the database (never its
    password)."""
    from mesh import revisions
    from mesh.db import Database, describe_error, is_unavailable
    from mesh.errors import DatabaseUnavailable, DomainError

    where = _existing_auth_database(settings)
    db = Database.for_service(settings, "auth")
    try:
        if not await revisions.is_newest(db, "auth"):
            raise await _wrong_schema(db, where)
        yield db
    except Refusal:
        raise
    except DatabaseUnavailable as exc:
        raise Refusal(f"cannot reach the auth database {where}: {describe_error(exc)}") from exc
    except DomainError as exc:
        raise Refusal(exc.message) from exc
    except Exception as exc:
        doing = "reach" if is_unavailable(exc) else "use"
        raise Refusal(f"cannot {doing} the auth database {where}: {describe_error(exc)}") from exc
    finally:
        await db.dispose()


def _existing_auth_database(settings: Settings) -> str:
    """The auth database as messages name it: its URL without the password, or its SQLite
    file, which must exist (connecting would create an empty one)."""
    from sqlalchemy.engine import make_url  # not at import: the facade's process loads this module

    url = make_url(settings.database_url("auth"))
    if url.get_backend_name() != "sqlite":
        return url.render_as_string(hide_password=True)
    path = url.database or ":memory:"
    if not Path(path).is_file():
        raise Refusal(f"no auth database at {path}: {_WHICH_DATABASE}")
    return path


async def _wrong_schema(db: Database, where: str) -> Refusal:
    """What the schema is, when it is not at this version's revision."""
    from mesh import migrations  # Alembic: only to explain

    current, head = await migrations.current(db, "auth"), migrations.head("auth")
    if current is None:
        return Refusal(f"the auth database {where} holds no invmesh schema: {_WHICH_DATABASE}")
    if migrations.knows("auth", current):
        return Refusal(
            f"the auth database {where} is at revision {current}, but this version of invmesh "
            f"needs {head}: run `invmesh migrate auth`"
        )
    return Refusal(
        f"the auth database {where} is at revision {current}, which this version of invmesh does "
        f"not know (a newer version migrated it): use that version"
    )


def _address(email: str) -> str:
    """`email` as accounts store it; a Refusal naming it if it is not an email address."""
    from auth.accounts import normalize_email
    from mesh.errors import InvalidArgument

    try:
        return normalize_email(email)
    except InvalidArgument as exc:
        raise Refusal(f"{email}: {exc.message}") from exc


async def grant(email: str, role: str) -> int:
    """Gives the account `role` in the auth database; it shows in tokens from its next sign-in."""
    from auth.accounts import grant_role
    from mesh.errors import NotFound

    settings = settings_or_exit()
    try:
        address = _address(email)
        async with _auth_database(settings) as db:
            try:
                granted = await grant_role(db, email=address, role=role)
            except NotFound:
                raise Refusal(f"no account {address}") from None
    except Refusal as refusal:
        return _refuse(str(refusal))
    if not granted.changed:
        print(f"invmesh: {address} is already {role}", file=sys.stderr)
    else:
        print(f"invmesh: {address} is now {role}; it takes effect at the next sign-in", file=sys.stderr)
    return 0


async def list_users(*, after: str | None, page_size: int, as_json: bool) -> int:
    """Prints a page of accounts, by email, and how to ask for the next one if more remain."""
    from auth.directory import list_accounts

    try:
        async with _auth_database(settings_or_exit()) as db:
            page = await list_accounts(db, after=after.strip().lower() if after else None, limit=page_size)
    except Refusal as refusal:
        return _refuse(str(refusal))
    if as_json:
        print(
            json.dumps(
                {"accounts": [_account(user) for user in page.accounts], "next_after": page.next_after}
            )
        )
        return 0
    if not page.accounts:
        print(f"invmesh: no accounts{f' after {after}' if after else ''}", file=sys.stderr)
        return 0
    _print_table(
        ["EMAIL", "ROLES", "VERIFIED", "CREATED (UTC)"],
        [
            [
                user.email,
                ",".join(user.roles),
                _yes_no(user.email_verified),
                f"{user.created_at:%Y-%m-%d %H:%M:%S}",
            ]
            for user in page.accounts
        ],
    )
    if page.next_after is not None:
        size = "" if page_size == DEFAULT_PAGE_SIZE else f" --page-size {page_size}"
        print(
            f"invmesh: more accounts follow: invmesh users list{size} --after {shlex.quote(page.next_after)}",
            file=sys.stderr,
        )
    return 0


async def show_user(email: str, *, as_json: bool) -> int:
    """Prints everything stored about one account that an operator may need."""
    from auth.directory import account_details
    from mesh.db import utcnow

    settings = settings_or_exit()
    try:
        address = _address(email)
        async with _auth_database(settings) as db:
            details = await account_details(db, settings, email=address, now=utcnow())
        if details is None:
            raise Refusal(f"no account {address}")
    except Refusal as refusal:
        return _refuse(str(refusal))
    if as_json:
        print(json.dumps(_details(details)))
        return 0
    user, failures = details.user, details.login_failures
    if failures is None:
        failed = "none"
    elif failures.locked:
        failed = f"{failures.count} of {failures.allowed}: locked until {_when(failures.window_ends_at)}"
    else:
        failed = (
            f"{failures.count} of {failures.allowed} allowed, counted until {_when(failures.window_ends_at)}"
        )
    fields = {
        "id": user.id,
        "email": user.email,
        "name": user.name or "(none)",
        "roles": ",".join(user.roles),
        "verified": _yes_no(user.email_verified),
        "created": _when(user.created_at),
        "password changed": _when(user.password_changed_at) if user.password_changed_at else "never",
        "sessions": f"{details.sessions} signed in (live refresh tokens)",
        "failed logins": failed,
    }
    width = max(map(len, fields)) + 2
    for label, value in fields.items():
        print(f"{label + ':':<{width}}{value}")
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns, two spaces apart; the last one is not padded."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _when(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _account(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "roles": user.roles,
        "verified": user.email_verified,
        "created": user.created_at.isoformat(),
    }


def _details(details: AccountDetails) -> dict[str, Any]:
    user, failures = details.user, details.login_failures
    changed = user.password_changed_at
    return _account(user) | {
        "password_changed": changed.isoformat() if changed else None,
        "sessions": details.sessions,
        "login_failures": None
        if failures is None
        else {
            "count": failures.count,
            "allowed": failures.allowed,
            "window_ends": failures.window_ends_at.isoformat(),
            "locked": failures.locked,
        },
    }


async def rotate_keys() -> int:
    """Stores a new signing key in the auth database (see auth.keys); 1 if it could not."""
    from auth.keys import Schedule, rotate

    settings = settings_or_exit()
    if settings.jwt_private_key is not None:
        return _refuse(
            "JWT_PRIVATE_KEY is set, so that key alone signs; to rotate it, set another "
            "key (tokens of the old one then stop verifying), or unset it to use rotating keys"
        )
    try:
        async with _auth_database(settings) as db:
            rotation = await rotate(db, Schedule.from_settings(settings))
    except Refusal as refusal:
        return _refuse(str(refusal))
    print(
        f"invmesh: new signing key {rotation.kid} (generation {rotation.generation}), published now, "
        f"signs from {rotation.signs_from:%Y-%m-%d %H:%M:%S} UTC",
        file=sys.stderr,
    )
    for kid in rotation.retired:
        print(f"invmesh: retired signing key {kid}: every token it signed has expired", file=sys.stderr)
    return 0
