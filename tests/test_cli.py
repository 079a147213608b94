"""The `invmesh` command as a person uses it, run as a real process (`python -m launcher`):
--version, the command list, `users list` and `users show` on accounts made through the auth
service, and the admin commands pointed at a database that is not the running system's."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from mesh import migrations
from mesh.config import Settings
from mesh.db import Database
from tests import databases
from tests.conftest import METRICS_OFF, AuthEndpoint, SmtpServer, free_port, link_token
from tests.rpc import expect_error

PASSWORD = "cli-password"
ADMIN_COMMANDS = [
    ["keys", "rotate"],
    ["users", "list"],
    ["users", "show", "ann@example.com"],
    ["users", "grant", "ann@example.com", "admin"],
]


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str


def cli_env(**variables: str) -> dict[str, str]:
    """This environment without any invmesh database or key setting, plus `variables`."""
    own = ("INVMESH_DATA_DIR", "DB_AUTO_MIGRATE", "JWT_PRIVATE_KEY", "LOGIN_FAILURES_PER_ACCOUNT")
    inherited = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL") and k not in own}
    return inherited | METRICS_OFF | variables


def env_of(settings: Settings, **variables: str) -> dict[str, str]:
    """The environment of an operator's shell that matches the running services' `settings`."""
    return cli_env(
        INVMESH_DATA_DIR=str(settings.data_dir),
        AUTH_DATABASE_URL=settings.database_url("auth"),
        LOGIN_FAILURES_PER_ACCOUNT=str(settings.login_failures_per_account),
        **variables,
    )


async def invmesh(*args: str, env: dict[str, str] | None = None) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "launcher",
        *args,
        env=cli_env() if env is None else env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def test_version_is_the_installed_packages() -> None:
    run = await invmesh("--version")
    assert (run.status, run.out, run.err) == (0, f"invmesh {metadata.version('invmesh')}\n", "")


async def test_no_command_lists_every_command_with_what_it_does() -> None:
    run = await invmesh()
    assert run.status == 0 and run.err == "", run
    for command in ("up", "serve", "migrate", "keys", "users"):
        assert re.search(rf"^ +{command} +\w.*$", run.out, re.MULTILINE), (
            f"{command} is not listed:\n{run.out}"
        )
    assert "users list" in run.out and "users show" in run.out and "users grant" in run.out


async def register(auth: AuthEndpoint, email: str, name: str = "") -> None:
    await auth.stub.Register(auth_pb.RegisterRequest(email=email, password=PASSWORD, name=name))


async def test_users_list_pages_through_every_account_once(auth: AuthEndpoint, smtp: SmtpServer) -> None:
    emails = [f"user{n}@example.com" for n in (4, 1, 5, 3, 2)]
    for email in emails:
        await register(auth, email)
    (mail,) = await smtp.inbox.mail_to("user3@example.com")
    await auth.stub.VerifyEmail(auth_pb.VerifyEmailRequest(token=link_token(mail, auth.settings.public_url)))
    env = env_of(auth.settings)

    pages: list[list[str]] = []
    command = ["users", "list", "--page-size", "2"]
    while True:
        run = await invmesh(*command, env=env)
        assert run.status == 0, run
        header, *rows = run.out.splitlines()
        assert header.split() == ["EMAIL", "ROLES", "VERIFIED", "CREATED", "(UTC)"]
        pages.append([row.split()[0] for row in rows])
        assert all(row.split()[1] == "viewer" for row in rows)
        for row in rows:
            assert row.split()[2] == ("yes" if row.startswith("user3@") else "no"), row
        if not run.err:
            break
        follow = re.fullmatch(r"invmesh: more accounts follow: invmesh (.+)\n", run.err)
        assert follow, run.err
        command = shlex.split(follow.group(1))
    assert pages == [
        ["user1@example.com", "user2@example.com"],
        ["user3@example.com", "user4@example.com"],
        ["user5@example.com"],
    ]

    run = await invmesh(
        "users", "list", "--json", "--page-size", "3", "--after", "USER1@example.com", env=env
    )
    listed = json.loads(run.out)
    assert [account["email"] for account in listed["accounts"]] == [f"user{n}@example.com" for n in (2, 3, 4)]
    assert listed["next_after"] == "user4@example.com"
    assert [account["verified"] for account in listed["accounts"]] == [False, True, False]

    run = await invmesh("users", "list", "--page-size", "501", env=env)
    assert run.status == 2 and "--page-size: must be a whole number from 1 to 500" in run.err


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"login_failures_per_account": 3})


async def test_users_show_tells_roles_sessions_and_a_lockout(auth: AuthEndpoint, smtp: SmtpServer) -> None:
    await register(auth, "Ann@Example.com", name="Ann Smith")
    env = env_of(auth.settings)
    run = await invmesh("users", "grant", "ann@example.com", "staff", env=env)
    assert run.status == 0, run
    await auth.stub.Login(auth_pb.LoginRequest(email="ann@example.com", password=PASSWORD))
    for _ in range(2):
        await expect_error(
            auth.stub.Login(auth_pb.LoginRequest(email="ann@example.com", password="not-it")),
            grpc.StatusCode.UNAUTHENTICATED,
        )

    run = await invmesh("users", "show", "ANN@example.com", env=env)
    assert run.status == 0 and run.err == "", run
    shown = dict(re.split(r": +", line, maxsplit=1) for line in run.out.splitlines())
    assert re.fullmatch(r"[0-9a-f-]{36}", shown.pop("id"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown.pop("created"))
    failed = shown.pop("failed logins")
    assert re.fullmatch(r"2 of 3 allowed, counted until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", failed)
    assert shown == {
        "email": "ann@example.com",
        "name": "Ann Smith",
        "roles": "staff",
        "verified": "no",
        "password changed": "never",
        "sessions": "1 signed in (live refresh tokens)",
    }

    await expect_error(
        auth.stub.Login(auth_pb.LoginRequest(email="ann@example.com", password="not-it")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    run = await invmesh("users", "show", "ann@example.com", "--json", env=env)
    details = json.loads(run.out)
    assert details["login_failures"]["locked"] is True
    assert (details["login_failures"]["count"], details["login_failures"]["allowed"]) == (3, 3)
    assert (details["email"], details["roles"], details["sessions"]) == ("ann@example.com", ["staff"], 1)

    run = await invmesh("users", "show", "bob@example.com", env=env)
    assert (run.status, run.out, run.err) == (1, "", "invmesh: no account bob@example.com\n")


async def test_admin_commands_refuse_an_empty_data_dir_and_create_no_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for command in ADMIN_COMMANDS:
        run = await invmesh(*command, env=cli_env(INVMESH_DATA_DIR=str(data_dir)))
        assert (run.status, run.out) == (1, ""), (command, run)
        assert run.err.startswith(f"invmesh: no auth database at {data_dir.resolve() / 'auth.db'}: "), run.err
        assert "INVMESH_DATA_DIR or AUTH_DATABASE_URL must be those of the running services" in run.err
    assert not data_dir.exists(), list(data_dir.iterdir())


async def tables(url: str) -> list[str]:
    db = Database(url)
    try:
        async with db.session() as session:
            connection = await session.connection()
            return await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await db.dispose()


async def test_admin_commands_refuse_a_database_without_the_schema_and_change_nothing(
    tmp_path: Path,
) -> None:
    async with databases.fresh_database(tmp_path, "empty") as url:
        where = url  # the test servers ask for no password
        if databases.SERVER is None:
            where = str(make_url(url).database)
            Path(where).touch()  # an SQLite database of no tables
        for command in ADMIN_COMMANDS:
            run = await invmesh(*command, env=cli_env(INVMESH_DATA_DIR=str(tmp_path), AUTH_DATABASE_URL=url))
            assert (run.status, run.out) == (1, ""), (command, run)
            assert run.err == (
                f"invmesh: the auth database {where} holds no invmesh schema: INVMESH_DATA_DIR or "
                "AUTH_DATABASE_URL must be those of the running services (a new database gets its schema "
                "from `invmesh migrate auth`)\n"
            )
        assert await tables(url) == []


async def test_admin_commands_refuse_an_outdated_schema(tmp_path: Path) -> None:
    async with databases.fresh_database(tmp_path, "old") as url:
        db = Database(url)
        try:
            await migrations.upgrade(db, "auth", "0002")
        finally:
            await db.dispose()
        run = await invmesh("users", "list", env=cli_env(AUTH_DATABASE_URL=url))
        assert run.status == 1
        assert (
            f"is at revision 0002, but this version of invmesh needs {migrations.head('auth')}: " in run.err
        )
        assert "run `invmesh migrate auth`" in run.err


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "mysql+asyncmy"])
async def test_an_unreachable_auth_database_is_named_without_its_password(scheme: str) -> None:
    port = free_port()  # nothing listens there
    env = cli_env(AUTH_DATABASE_URL=f"{scheme}://ops:pw-s3cret@127.0.0.1:{port}/auth")
    run = await invmesh("users", "list", env=env)
    assert run.status == 1 and run.out == ""
    assert run.err.startswith(
        f"invmesh: cannot reach the auth database {scheme}://ops:***@127.0.0.1:{port}/auth: "
    )
    assert "pw-s3cret" not in run.err and "Traceback" not in run.err


@pytest.mark.parametrize("command", [["migrate", "auth"], ["users", "list"]])
async def test_a_one_shot_command_ends_on_sigterm_at_once(command: list[str]) -> None:
    """As on Ctrl-C, status 143: the handler is what makes a migration stoppable as PID 1 of a
    container (tests/deploy/test_image.py), where a signal without one is ignored."""
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{silent.getsockname()[1]}/auth"
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "launcher", *command),
            env=cli_env(AUTH_DATABASE_URL=url, DB_CONNECT_TIMEOUT_SECONDS="60"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(2)  # started, and waiting for the database
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            _, err = await process.communicate()
    assert process.returncode == 143
    assert err.decode().strip().endswith("invmesh: stopped by SIGTERM")
