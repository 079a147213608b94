"""The administrative commands: `invmesh migrate`, `invmesh keys rotate`, `invmesh users grant`.
They work on the services' databases directly, with the same settings as the services."""

from __future__ import annotations

import sys

from launcher.layout import settings_or_exit


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


async def grant(email: str, role: str) -> int:
    """Gives the account `role` in the auth database; it shows in tokens from its next sign-in."""
    from auth.accounts import grant_role
    from mesh.db import Database, describe_error
    from mesh.errors import DomainError

    db = Database.for_service(settings_or_exit(), "auth")
    try:
        user = await grant_role(db, email=email, role=role)
    except DomainError as exc:
        print(f"invmesh: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"invmesh: auth: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(f"invmesh: {user.email} is now {role}; it takes effect at the next sign-in", file=sys.stderr)
    return 0


async def rotate_keys() -> int:
    """Stores a new signing key in the auth database (see auth.keys); 1 if it could not."""
    from auth.keys import Schedule, rotate
    from mesh.db import Database, describe_error
    from mesh.errors import DomainError

    settings = settings_or_exit()
    if settings.jwt_private_key is not None:
        print(
            "invmesh: JWT_PRIVATE_KEY is set, so that key alone signs; to rotate it, set another "
            "key (tokens of the old one then stop verifying), or unset it to use rotating keys",
            file=sys.stderr,
        )
        return 1
    db = Database.for_service(settings, "auth")
    try:
        rotation = await rotate(db, Schedule.from_settings(settings))
    except DomainError as exc:
        print(f"invmesh: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"invmesh: auth: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(
        f"invmesh: new signing key {rotation.kid} (generation {rotation.generation}), published now, "
        f"signs from {rotation.signs_from:%Y-%m-%d %H:%M:%S} UTC",
        file=sys.stderr,
    )
    for kid in rotation.retired:
        print(f"invmesh: retired signing key {kid}: every token it signed has expired", file=sys.stderr)
    return 0
