"""`invmesh up` as a supervisor, on real processes: a component that dies is restarted while
the others serve, one that crash-loops is given up, and nothing starts when a port it needs is
taken or a setting is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from launcher.cli import main as invmesh
from launcher.ports import listen_problem
from launcher.supervisor import RestartPolicy
from tests.conftest import free_port

SERVICE_NAMES = ("AUTH", "PRODUCTS", "INVENTORY")
ADMIN = {"email": "admin@example.com", "password": "password1"}


def up_env(data_dir: Path) -> dict[str, str]:
    """A whole system on free ports, on SQLite files in `data_dir`, its admin ADMIN."""
    facade = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMTP_URL", "JWT_PRIVATE_KEY", "MALLOC_ARENA_MAX")
        and not k.endswith(("_DATABASE_URL", "_ADDR"))
    }
    return env | {
        "INVMESH_DATA_DIR": str(data_dir),
        **{f"{name}_ADDR": f"127.0.0.1:{free_port()}" for name in ("AUTH", "PRODUCTS", "INVENTORY")},
        **{f"{name}_METRICS_ADDR": f"127.0.0.1:{free_port()}" for name in ("FACADE", *SERVICE_NAMES)},
        "FACADE_PORTS": str(facade),
        "PUBLIC_URL": f"http://127.0.0.1:{facade}",
        "ADMIN_EMAILS": ADMIN["email"],
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
    }


@dataclass
class Up:
    """A running `python -m launcher up` and what it has said on stderr so far."""

    process: asyncio.subprocess.Process
    env: dict[str, str]
    said: list[str] = field(default_factory=list)
    _news: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.said.append(line.decode().rstrip("\n"))
            self._news.set()
        self._news.set()

    async def line(self, pattern: str, *, after: int = 0, timeout: float = 60) -> str:
        """The first line from index `after` on that matches `pattern`, once it is said."""
        async with asyncio.timeout(timeout):
            while True:
                self._news.clear()
                for line in self.said[after:]:
                    if re.search(pattern, line):
                        return line
                assert self.process.returncode is None, f"invmesh up exited; it said {self.said}"
                await self._news.wait()

    def address(self, name: str) -> str:
        return self.env[f"{name.upper()}_ADDR"]

    @property
    def facade_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FACADE_PORTS']}"


@contextlib.asynccontextmanager
async def invmesh_up(
    env: dict[str, str], *args: str, stop: signal.Signals = signal.SIGTERM
) -> AsyncIterator[Up]:
    """`invmesh up ARGS`; at the end `stop` (SIGINT is Ctrl-C), and it must exit 0, unless it
    has exited already."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "launcher", "up", *args), env=env, stderr=asyncio.subprocess.PIPE
    )
    up = Up(process, env)
    reader = asyncio.create_task(up.read())
    try:
        yield up
    finally:
        if process.returncode is None:
            process.send_signal(stop)
            async with asyncio.timeout(30):
                await process.wait()
            assert process.returncode == 0, up.said
        await reader


def child_pid(parent: int, *argv: str) -> int:
    """The pid of the child of `parent` whose command line ends with `argv`."""
    wanted = "\0".join(argv).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid …: comm may hold spaces, so count from its closing parenthesis
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                if (entry / "cmdline").read_bytes().endswith(wanted):
                    return int(entry.name)
    raise AssertionError(f"no child of {parent} runs {' '.join(argv)}")


async def health_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary(  # HealthStub(channel).Check, which its type stubs lack
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply: health_pb2.HealthCheckResponse = await check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status


async def admin_token(http: httpx.AsyncClient, outbox: Path) -> str:
    """Registers ADMIN, follows the link of the verification mail in the outbox, logs in."""
    assert (await http.post("/users/register", json=ADMIN)).status_code == 202
    async with asyncio.timeout(10):
        while not (mails := list(outbox.glob("*.eml"))):
            await asyncio.sleep(0.05)
    body = BytesParser(policy=policy.default).parsebytes(mails[0].read_bytes()).get_body(("plain",))
    assert body is not None
    link = re.search(r"https?://\S+", body.get_content())
    assert link is not None
    assert (await http.get(link.group(0))).status_code == 200
    token: str = (await http.post("/users/login", json=ADMIN)).json()["access_token"]
    return token


def test_restarts_back_off_and_a_crash_loop_is_given_up() -> None:
    policy = RestartPolicy()
    at, waits = 0.0, []
    while (wait := policy.after_exit(at, healthy_since=None)) is not None:
        waits.append(wait)
        at += wait + 1  # each start fails a second after it began
    assert waits == [0.5, 1, 2, 4]  # the fifth exit, within 2 minutes of the first, gives it up


def test_restart_delays_grow_to_30s_while_exits_are_too_sparse_for_a_crash_loop() -> None:
    policy = RestartPolicy()
    waits = [policy.after_exit(40.0 * n, healthy_since=40.0 * n - 30) for n in range(12)]
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30]


def test_a_minute_healthy_restarts_the_backoff() -> None:
    policy = RestartPolicy()
    assert [policy.after_exit(at, healthy_since=None) for at in (0, 1, 3)] == [0.5, 1, 2]
    assert policy.after_exit(200, healthy_since=141) == 4  # healthy 59 s: not yet a good run
    assert policy.after_exit(300, healthy_since=240) == 0.5  # healthy 60 s: a good run
    assert policy.after_exit(301, healthy_since=None) == 1


async def test_the_children_stop_when_up_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves up no time to stop its children: they stop by themselves, freeing their
    ports, rather than live on as orphans that the next `invmesh up` finds in the way. (Each
    runs with glibc's arenas capped, as up starts them unless told otherwise.)"""
    async with invmesh_up(up_env(tmp_path)) as up:
        await up.line("all healthy")
        children = [
            child_pid(up.process.pid, "serve", name) for name in ("auth", "products", "inventory", "facade")
        ]
        for pid in children:
            assert b"MALLOC_ARENA_MAX=2" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        up.process.kill()
        try:
            async with asyncio.timeout(30):
                while [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]:
                    await asyncio.sleep(0.1)
        finally:  # orphans would hold up's stderr open, and this test's reader with it
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in ("auth", "products", "inventory"):
            assert listen_problem(up.address(name)) is None, name


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [0, 2], ids=["one process", "replicas"])
async def test_a_killed_service_is_restarted_while_the_others_serve(tmp_path: Path, replicas: int) -> None:
    env = up_env(tmp_path)
    host, port = env["INVENTORY_ADDR"].rsplit(":", 1)
    if replicas:  # the last replica is killed, on the port of INVENTORY_ADDR + 10 per replica before it
        label, address = f"inventory[{replicas - 1}]", f"{host}:{int(port) + 10 * (replicas - 1)}"
        args, argv = ["--replicas", f"inventory={replicas}"], ["serve", "inventory", "--listen", address]
    else:
        label, address, args, argv = "inventory", env["INVENTORY_ADDR"], [], ["serve", "inventory"]
    async with invmesh_up(env, *args) as up:
        await up.line("all healthy")
        async with httpx.AsyncClient(base_url=up.facade_url) as http:
            token = await admin_token(http, tmp_path / "outbox")
            http.headers["authorization"] = f"Bearer {token}"
            created = await http.post("/products", json={"sku": "KEPT-1", "name": "Kept", "price": "2.50"})
            assert created.status_code == 201, created.text
            reads = 0

            async def read_the_product_until_cancelled() -> None:
                nonlocal reads
                while True:
                    read = await http.get(f"/products/{created.json()['id']}")
                    assert read.status_code == 200 and read.json()["sku"] == "KEPT-1", read.text
                    reads += 1
                    await asyncio.sleep(0.02)

            reader = asyncio.create_task(read_the_product_until_cancelled())
            killed = child_pid(up.process.pid, *argv)
            seen, reads_before = len(up.said), reads
            os.kill(killed, signal.SIGKILL)
            await up.line(
                rf"^invmesh: {re.escape(label)} was killed by SIGKILL; restarting it in 0\.5s$", after=seen
            )
            await up.line(f"^invmesh: {re.escape(label)} is serving again on {address}$", after=seen)
            reads_while_restarted = reads - reads_before
            assert await health_status(address) == health_pb2.HealthCheckResponse.SERVING
            assert child_pid(up.process.pid, *argv) != killed
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # raises what a failed read asserted
    assert reads_while_restarted > 0, "no product read was made while inventory was restarted"


@pytest.mark.slow
async def test_a_crash_looping_service_is_given_up_and_the_rest_go_on(tmp_path: Path) -> None:
    """Inventory cannot reach its database (a closed port) and exits at each start: it is
    restarted after 0.5, 1, 2 and 4 s, then given up at its fifth exit."""
    env = up_env(tmp_path) | {
        "INVENTORY_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/invmesh"
    }
    async with invmesh_up(env) as up:
        for delay in ("0.5", "1", "2", "4"):
            await up.line(rf"^invmesh: inventory exited with status 1; restarting it in {delay}s$")
        await up.line(
            r"^invmesh: inventory exited with status 1: 5 exits within 120s; "
            r"giving up on it \(the rest go on\)$"
        )
        await up.line(f"^invmesh: inventory did not become healthy on {up.address('inventory')}$")
        for name in ("auth", "products"):
            assert await health_status(up.address(name)) == health_pb2.HealthCheckResponse.SERVING
        async with httpx.AsyncClient(base_url=up.facade_url) as http:
            assert (await http.get("/healthz")).status_code == 200
        assert up.process.returncode is None, up.said
        assert not any("all healthy" in line for line in up.said), up.said
        assert sum("cannot use the inventory database" in line for line in up.said) == 5, up.said


@pytest.mark.slow
async def test_up_exits_1_once_it_has_given_up_every_component(tmp_path: Path) -> None:
    env = up_env(tmp_path) | {
        "INVENTORY_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/invmesh"
    }
    async with invmesh_up(env, "inventory") as up:
        async with asyncio.timeout(60):
            await up.process.wait()
        assert up.process.returncode == 1
        await up.line("giving up on it")
        assert up.said[-1] == "invmesh: every component has been given up; exiting"


async def test_a_second_up_exits_naming_the_taken_ports_and_starts_nothing(tmp_path: Path) -> None:
    """Before, it printed "all healthy": the first system answered its health checks."""
    env = up_env(tmp_path / "first")
    async with invmesh_up(env, stop=signal.SIGINT) as first:
        await first.line("all healthy")
        second_dir = tmp_path / "second"
        second = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "launcher", "up"),
            env=env | {"INVMESH_DATA_DIR": str(second_dir)},
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, stderr = await second.communicate()
        assert second.returncode == 1
        said = stderr.decode().splitlines()
        taken = []
        for name in ("auth", "products", "inventory"):
            pid = child_pid(first.process.pid, "serve", name)
            for setting in (f"{name.upper()}_ADDR", f"{name.upper()}_METRICS_ADDR"):
                port = env[setting].rsplit(":", 1)[1]
                taken.append(
                    f"invmesh: port {port} ({name}, {setting}) is taken, probably by pid {pid}: "
                    f"python -m launcher serve {name} — is another invmesh up running?"
                )
        facade_pid = child_pid(first.process.pid, "serve", "facade")
        for setting in ("FACADE_PORTS", "FACADE_METRICS_ADDR"):
            port = env[setting].rsplit(":", 1)[-1]
            taken.append(
                f"invmesh: port {port} (facade, {setting}) is taken, probably by pid "
                f"{facade_pid}: python -m launcher serve facade — is another invmesh up running?"
            )
        assert said == taken
        assert not second_dir.exists(), "the second up migrated (created) its databases"


async def test_a_port_held_by_another_program_is_named_so(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    port = env["PRODUCTS_ADDR"].rsplit(":", 1)[1]
    holder = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); "
          "print('listening', flush=True); time.sleep(60)"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"listening\n"
        up = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "launcher", "up"), env=env, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, stderr = await up.communicate()
    finally:
        holder.kill()
        await holder.wait()
    assert up.returncode == 1
    assert stderr.decode().splitlines() == [
        f"invmesh: port {port} (products, PRODUCTS_ADDR) is taken, probably by pid {holder.pid}: "
        f"python -c import socket, time; s = socket.create_server(('127.0.0.1', {port})); "
        "print('listening', flush=True); time.sleep(60)"
    ]
    assert not list(tmp_path.iterdir()), "up wrote to its data directory"


async def test_two_components_on_one_address_are_refused(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    env["INVENTORY_ADDR"] = env["PRODUCTS_ADDR"]
    up = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "launcher", "up"), env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await up.communicate()
    assert up.returncode == 1
    assert stderr.decode().splitlines() == [
        f"invmesh: products (PRODUCTS_ADDR) and inventory (INVENTORY_ADDR) would both listen on "
        f"{env['PRODUCTS_ADDR']}"
    ]


@pytest.mark.parametrize("command", [["up"], ["serve", "auth"], ["migrate"], ["keys", "rotate"]])
async def test_a_bad_address_stops_any_command_before_it_starts(tmp_path: Path, command: list[str]) -> None:
    env = up_env(tmp_path) | {"AUTH_ADDR": "bogus:xx"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "launcher", *command), env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 1
    assert stderr.decode().splitlines() == [
        "invmesh: invalid configuration:",
        "  AUTH_ADDR: 'bogus:xx': the port 'xx' is not a number",
    ]
    assert not list(tmp_path.iterdir()), "the command wrote to its data directory"


async def test_an_address_of_another_machine_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = up_env(tmp_path) | {"AUTH_ADDR": "192.0.2.1:50051"}  # TEST-NET-1: never this machine's
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "launcher", "up"), env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 1
    assert stderr.decode().splitlines() == [
        "invmesh: auth cannot listen on 192.0.2.1:50051 (AUTH_ADDR): Cannot assign requested address"
    ]


def test_a_unix_socket_is_taken_while_something_answers_on_it(tmp_path: Path) -> None:
    path = tmp_path / "auth.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        problem = listen_problem(f"unix://{path}")
        assert problem is not None and problem.errno == errno.EADDRINUSE
    # gRPC replaces a socket file nobody answers on, as one left by a process that was killed.
    assert path.exists() and listen_problem(f"unix://{path}") is None


def test_the_listen_flag_of_serve_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    for value, message in [
        ("bogus:xx", "the port 'xx' is not a number"),
        ("127.0.0.1:1,127.0.0.1:11", "names 2 addresses; a process listens on one"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            invmesh(["serve", "auth", "--listen", value])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
