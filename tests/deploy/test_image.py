"""The OCI image (deploy/image/Containerfile), built by the project's own script and run with
podman as on these machines: `invmesh migrate` on fresh PostgreSQL databases, each role in a
container of its own with a read-only root filesystem and the image's non-root user, each
reaching SERVING; the register → verify → login → product → movement journey through the
containerised facade; `invmesh up` (the whole system, on SQLite) in one container; and
`podman stop` ending every role at once with status 0 (and a migration with 143, not the
SIGKILL after the grace period)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests import databases
from tests.conftest import SERVICE_SECRET, SmtpServer, free_port, link_token
from tests.test_replicas import wait_serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        databases.KIND != "postgresql",
        reason="the image runs on PostgreSQL only: it runs in the INVMESH_TEST_DATABASE=postgresql pass",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/invmesh:latest"
# crun fails here (cgroups in hybrid mode); runc cannot apply podman's default ulimits.
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager=cgroupfs")
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
# TMPDIR and INVMESH_DATA_DIR; `U`: the latter owned by the image's user, as the image's folder is.
WRITABLE = ("--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/invmesh:rw,U")
SERVICES = ("auth", "products", "inventory")
# Seconds: lame duck (0.5 s) and an idle drain take 1-4 s on a busy machine; SIGKILL comes at 10.
STOP_WITHIN = 8.0


async def command(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Runs a command to its end: its status, and its output and errors together."""
    process = await asyncio.create_subprocess_exec(
        *args,
        env=None if env is None else os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.fixture(scope="module")
async def image() -> str:
    """The image, built by deploy/image/build.sh (as `make image`), which installs podman and
    makes the base when missing."""
    if shutil.which("podman") is None and os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("podman is missing, and only root may install it (deploy/image/build.sh does)")
    started = time.monotonic()
    status, output = await command(
        str(ROOT / "deploy/image/build.sh"), env={"PYTHON": sys.executable}, timeout=900
    )
    assert status == 0, f"deploy/image/build.sh failed:\n{output[-4000:]}"
    _, size = await command(*PODMAN, "image", "inspect", "--format", "{{.Size}}", IMAGE)
    print(f"{IMAGE}: built in {time.monotonic() - started:.0f} s, {int(size) / 1e6:.0f} MB")
    return IMAGE


class Containers:
    """Containers of the image, each started with the given settings in its environment
    (passed by name, so that no secret is on a command line); all removed at the end."""

    def __init__(self, image: str, env: dict[str, str]) -> None:
        self.image = image
        self.env = env
        self.prefix = f"invmesh-test-{secrets.token_hex(3)}"
        self.names: list[str] = []

    def _run_args(self, name: str, extra_env: dict[str, str], network: str = "host") -> list[str]:
        names = sorted(self.env.keys() | extra_env.keys())
        self.names.append(name)
        run = [*PODMAN, "run", "--name", name, *LIMITS, *WRITABLE, "--network", network]
        return [*run, *(a for n in names for a in ("-e", n)), self.image]

    async def run(self, role: str, *args: str, **extra_env: str) -> tuple[int, str]:
        """Runs `invmesh ARGS` in a container to its end."""
        name = f"{self.prefix}-{role}"
        return await command(*self._run_args(name, extra_env), *args, env=self.env | extra_env)

    async def start(self, role: str, *args: str, network: str = "host", **extra_env: str) -> str:
        """Starts `invmesh ARGS` in a detached container (on the host's network, where the
        PostgreSQL and SMTP servers are, by default); its name."""
        name = f"{self.prefix}-{role}"
        run = self._run_args(name, extra_env, network)
        status, output = await command(*run[:-1], "--detach", run[-1], *args, env=self.env | extra_env)
        assert status == 0, output
        return name

    async def stop(self, name: str) -> tuple[int, float]:
        """`podman stop` (SIGTERM, SIGKILL after 10 s): the exit status and how long it took."""
        started = time.monotonic()
        status, output = await command(*PODMAN, "stop", "--time", "10", name)
        elapsed = time.monotonic() - started
        assert status == 0, output
        status, output = await command(*PODMAN, "inspect", "--format", "{{.State.ExitCode}}", name)
        assert status == 0, output
        return int(output.strip()), elapsed

    async def logs(self) -> str:
        parts = []
        for name in self.names:
            _, output = await command(*PODMAN, "logs", name)
            parts.append(f"--- {name}\n{output[-3000:]}")
        return "\n".join(parts)

    async def remove(self) -> None:
        if self.names:
            await command(*PODMAN, "rm", "--force", "--ignore", *self.names)


@contextlib.asynccontextmanager
async def containers(image: str, env: dict[str, str]) -> AsyncIterator[Containers]:
    """Containers that are removed however the test ends; their logs are printed if it fails."""
    made = Containers(image, env)
    try:
        yield made
    except BaseException:
        print(await made.logs())
        raise
    finally:
        await made.remove()


@contextlib.asynccontextmanager
async def fresh_databases(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {
            f"{service.upper()}_DATABASE_URL": await stack.enter_async_context(
                databases.fresh_database(tmp_path, f"image_{service}")
            )
            for service in SERVICES
        }


def settings_env(
    urls: dict[str, str], smtp: SmtpServer, signing_key: ec.EllipticCurvePrivateKey, facade_port: int
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of every container, and where each service listens."""
    listen = {service: f"127.0.0.1:{free_port()}" for service in SERVICES}
    pem = signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    env = {
        **urls,
        **{f"{service.upper()}_ADDR": address for service, address in listen.items()},
        # Each role's metrics on a free port of the host's network, not on the machine's 9100-9103.
        **{
            f"{name}_METRICS_ADDR": f"127.0.0.1:{free_port()}"
            for name in ("FACADE", "AUTH", "PRODUCTS", "INVENTORY")
        },
        "FACADE_HOST": "127.0.0.1",  # the host's network: not every interface of the machine
        "FACADE_PORTS": str(facade_port),
        "PUBLIC_URL": f"http://127.0.0.1:{facade_port}",
        "SMTP_URL": smtp.url,
        "JWT_PRIVATE_KEY": pem,
        "SERVICE_SECRETS": f"products:{SERVICE_SECRET},inventory:{SERVICE_SECRET},facade:{SERVICE_SECRET}",
        "SERVICE_SECRET": SERVICE_SECRET,
        "ADMIN_EMAILS": "ann@example.com",
        "BCRYPT_ROUNDS": "4",
    }
    return env, listen


async def wait_healthz(http: httpx.AsyncClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            reply = await http.get("/healthz")
            if reply.status_code == 200:
                assert reply.json() == {"status": "SERVING"}
                return
        assert time.monotonic() < deadline, "the facade never answered /healthz"
        await asyncio.sleep(0.2)


async def journey(http: httpx.AsyncClient, smtp: SmtpServer, public_url: str) -> None:
    """register → the mail → verify → login → a product → a movement, over HTTP."""
    account = {"email": "ann@example.com", "password": "correct horse battery", "name": "Ann"}
    registered = await http.post("/users/register", json=account)
    assert registered.status_code == 202, registered.text
    (mail,) = await smtp.inbox.mail_to("ann@example.com", timeout=30)
    verified = await http.post("/users/verify", json={"token": link_token(mail, public_url)})
    assert verified.status_code == 200, verified.text
    user = verified.json()["user"]
    assert user["email_verified"] is True and "admin" in user["roles"]  # ADMIN_EMAILS
    login = await http.post("/users/login", json={"email": account["email"], "password": account["password"]})
    assert login.status_code == 200, login.text
    me = {"authorization": f"Bearer {login.json()['access_token']}"}
    lamp = {"sku": "LAMP-1", "name": "Desk lamp", "price": "24.90"}
    created = await http.post("/products", headers=me, json=lamp)
    assert created.status_code == 201, created.text
    product = created.json()["id"]
    moved = await http.post(
        "/inventory",
        headers=me,
        json={"product_id": product, "type": "IN", "quantity": 10, "request_id": "po-17"},
    )
    assert moved.status_code == 201, moved.text
    assert moved.json()["item"]["quantity"] == 10
    stock = await http.get(f"/inventory/{product}", headers=me)
    assert stock.status_code == 200 and stock.json()["quantity"] == 10, stock.text
    # The stock feed (inventory → products, as a service) reaches the catalog too.
    async with asyncio.timeout(10):
        while (await http.get(f"/products/{product}", headers=me)).json()["stock"] != 10:
            await asyncio.sleep(0.2)


async def stopped_promptly(made: Containers, names: Sequence[str]) -> None:
    for name in names:
        status, elapsed = await made.stop(name)
        print(f"{name}: exit {status} {elapsed:.1f} s after podman stop")
        assert (status, elapsed < STOP_WITHIN) == (0, True), f"{name}: exit {status} after {elapsed:.1f} s"


async def test_every_role_runs_from_the_image(
    image: str, tmp_path: Path, smtp: SmtpServer, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    facade_port = free_port()
    async with fresh_databases(tmp_path) as urls:
        env, listen = settings_env(urls, smtp, signing_key, facade_port)
        async with containers(image, env) as made:
            status, output = await made.run("migrate", "migrate")
            assert status == 0, output

            auth = await made.start("auth", "serve", "auth", "--listen", listen["auth"])
            await wait_serving(listen["auth"])
            others = [
                await made.start(service, "serve", service, "--listen", listen[service])
                for service in ("products", "inventory")
            ]
            await asyncio.gather(*(wait_serving(listen[service]) for service in ("products", "inventory")))
            facade = await made.start("facade", "serve", "facade")
            public_url = env["PUBLIC_URL"]
            async with httpx.AsyncClient(base_url=public_url, timeout=10) as http:
                await wait_healthz(http)
                await journey(http, smtp, public_url)

            await stopped_promptly(made, [facade, *others, auth])


async def test_a_migration_stops_at_once(image: str) -> None:
    """Python is PID 1: without its own SIGTERM handler a migration waiting on its database
    would ignore the signal until podman's SIGKILL, 10 s later."""
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        env = {
            "AUTH_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/auth",
            "DB_CONNECT_TIMEOUT_SECONDS": "60",
        }
        async with containers(image, env) as made:
            name = await made.start("migrate", "migrate", "auth")
            await asyncio.sleep(2)  # connecting
            status, elapsed = await made.stop(name)
            assert (status, elapsed < STOP_WITHIN) == (143, True), f"exit {status} after {elapsed:.1f} s"


async def test_the_whole_system_runs_in_one_container_on_sqlite(image: str) -> None:
    """`invmesh up`, as `make run` does, with its SQLite files and outbox in the data folder (a
    tmpfs, the root filesystem read-only) and a network of its own; stopped with status 0."""
    async with containers(image, {}) as made:
        name = await made.start("up", "up", network="none")
        async with asyncio.timeout(60):
            while "all healthy" not in (await command(*PODMAN, "logs", name))[1]:
                await asyncio.sleep(0.5)
        probe = (
            "import urllib.request as r; print(r.urlopen('http://127.0.0.1:8000/healthz').read().decode())"
        )
        status, output = await command(*PODMAN, "exec", name, "python3", "-c", probe)
        assert (status, output.strip()) == (0, '{"status":"SERVING"}')
        status, output = await command(*PODMAN, "exec", name, "ls", "/var/lib/invmesh")
        assert {"auth.db", "products.db", "inventory.db"} <= set(output.split()), output
        await stopped_promptly(made, [name])
