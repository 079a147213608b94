"""Real parts on ephemeral ports: the services in-process, an aiosmtpd SMTP server, and the
databases of the kind INVMESH_TEST_DATABASE names (tests/databases.py): SQLite files in a
temporary folder by default, or fresh PostgreSQL or MariaDB databases.

Every test runs on the run's event loop, so that servers can outlive a test: the tests that
use the mesh with the usual settings share one (`SharedMesh`), the others get a folder,
databases and an SMTP server of their own. A test that needs the mesh to start under its eyes
(to watch its logs, say) is marked `own_mesh`."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from sqlalchemy import func, select

from auth.accounts import grant_role
from auth.models import OutgoingMail
from auth.service import running
from inventory.service import running as running_inventory
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.config import Settings, load_settings
from mesh.db import Database
from products.service import running as running_products
from tests import databases

_UNREACHABLE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """A database server that is down skips the whole run, loudly; under CI it fails the run."""
    if databases.SERVER is None:
        return
    problem = databases.run_sync(databases.SERVER.problem())
    if problem is None:
        return
    message = f"INVMESH_TEST_DATABASE={databases.KIND}: cannot reach {databases.SERVER.describe()}: {problem}"
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"{message} (CI=true, so this fails the run)")
    config.stash[_UNREACHABLE] = message


def pytest_report_header(config: pytest.Config) -> str:
    where = databases.SERVER.describe() if databases.SERVER else "SQLite files in temporary folders"
    return f"invmesh databases: {databases.KIND} ({where})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if message := config.stash.get(_UNREACHABLE, None):
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"SKIPPED, database server down: {message}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if message := config.stash.get(_UNREACHABLE, None):
        terminalreporter.write_sep("!", "THE WHOLE RUN WAS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(message, red=True, bold=True)


@pytest.fixture(scope="session")
def service_databases() -> Iterator[databases.ServiceDatabases | None]:
    """On a database server, the run's database per service, migrated; None on SQLite."""
    if databases.SERVER is None:
        yield None
        return
    created = databases.ServiceDatabases(databases.SERVER)
    try:
        databases.run_sync(created.create())
        yield created
    finally:
        databases.run_sync(created.drop())


@pytest.fixture(scope="session")
async def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """On SQLite, the services' files migrated once, copied into each test's folder; None on a server."""
    if databases.SERVER is not None:
        return None
    folder = tmp_path_factory.mktemp("migrated")
    await databases.migrated_sqlite(folder)
    return folder


@pytest.fixture
async def database_urls(
    service_databases: databases.ServiceDatabases | None, shared_mesh_of_test: SharedMesh | None
) -> dict[str, str]:
    """`<service>_database_url` settings for a test: empty on SQLite (files in its data folder)."""
    if shared_mesh_of_test is not None:
        return shared_mesh_of_test.database_urls  # `mesh_users` resets them
    if service_databases is None:
        return {}
    await service_databases.empty()
    return {f"{service}_database_url": url for service, url in service_databases.urls.items()}


# Ports are handed out in turn from below Linux's ephemeral range (32768 and up): a port the
# kernel picked (bind to 0) can be given to an outgoing connection, to a database server say,
# before the test listens on it. Under pytest-xdist each worker takes its own slice of the
# range, so two workers never hand out the same port between its check and its listen.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_SLICE = range(20_000 + _WORKER * 12_768 // _WORKERS, 20_000 + (_WORKER + 1) * 12_768 // _WORKERS)
_START = random.randrange(len(_SLICE))
_ports = (_SLICE[(_START + step) % len(_SLICE)] for step in range(len(_SLICE)))


def free_port() -> int:
    for port in _ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port left in {_SLICE.start}-{_SLICE.stop - 1}")


def link_token(message: EmailMessage, public_url: str) -> str:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None, "the mail has a text and an HTML part"
    link = re.search(r"https?://\S+", text.get_content())
    assert link is not None
    assert link.group(0).startswith(f"{public_url}/users/verify?token=")
    assert link.group(0) in html.get_content()
    (token,) = parse_qs(urlsplit(link.group(0)).query)["token"]
    return token


@dataclass
class Inbox:
    """What a real SMTP server received, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.SMTP)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.arrived.set()
        return "250 OK"

    def clear(self) -> None:
        self.messages.clear()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages

    async def mail_to(self, address: str, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
        """The mails to `address`, once there are `count`: others may arrive meanwhile, such as a
        fixture's own account's mail, delivered in the background."""
        async with asyncio.timeout(timeout):
            while len(mine := [m for m in self.messages if m["To"] == address]) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return mine


class SmtpServer:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.inbox = Inbox()
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def session() -> SMTP:
            self._sessions.append(SMTP(self.inbox, loop=loop))
            return self._sessions[-1]

        self._server = await loop.create_server(session, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            # Server.close() leaves accepted connections open on Python 3.11: close them too.
            for smtp in self._sessions:
                if smtp.transport is not None:
                    smtp.transport.close()
            await asyncio.sleep(0)


@pytest.fixture
async def smtp(shared_mesh_of_test: SharedMesh | None) -> AsyncIterator[SmtpServer]:
    """The SMTP server the settings name: the shared mesh's for a test that uses it (`mesh_users`
    empties its inbox), else one of the test's own."""
    if shared_mesh_of_test is not None:
        yield await shared_mesh_of_test.started_smtp()
        return
    server = SmtpServer(free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def public_url() -> Iterator[str]:
    """Where mail links point: the facade `web` serves (tests/facade/conftest.py). One port for
    the run, as the shared mesh's auth service writes the links of all its tests; a socket
    keeps it bound, not listening, so that no other process takes it between two tests (the
    facade binds it beside that socket, with SO_REUSEADDR)."""
    port = free_port()
    with socket.socket() as placeholder:
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.bind(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"


SERVICE_SECRET = "test-service-secret-0123456789"
# For the environment of a process a test starts: it serves no metrics, so that processes started
# side by side do not all want the default ports (tests that scrape set ports of their own).
METRICS_OFF = {f"{name}_METRICS_ADDR": "" for name in ("FACADE", "AUTH", "PRODUCTS", "INVENTORY")}


def settings_for(
    data_dir: Path,
    smtp_url: str,
    signing_key: ec.EllipticCurvePrivateKey,
    database_urls: dict[str, str],
    public_url: str,
) -> Settings:
    pem = signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return load_settings(
        invmesh_data_dir=data_dir,
        bcrypt_rounds=4,
        smtp_url=smtp_url,
        jwt_private_key=pem,
        public_url=public_url,
        shutdown_grace_seconds=1,
        shutdown_lame_duck_seconds=0,  # every test stops its servers; the shutdown tests set one
        mail_retry_initial_seconds=0.05,
        mail_retry_max_seconds=0.5,
        smtp_timeout_seconds=5,
        outbox_retry_initial_seconds=0.05,
        outbox_retry_max_seconds=0.5,
        # Every service runs in this process with these settings, so all share one secret.
        service_secrets=f"products:{SERVICE_SECRET},inventory:{SERVICE_SECRET},facade:{SERVICE_SECRET}",
        service_secret=SERVICE_SECRET,
        # Two workers' meshes, with their replicas, share one PostgreSQL of 100 connections: the
        # default 20 a service let two concurrent-writer tests at once run out of them.
        db_pool_size=8,
        **database_urls,
    )


@pytest.fixture
def settings(
    tmp_path: Path,
    smtp: SmtpServer,
    signing_key: ec.EllipticCurvePrivateKey,
    database_urls: dict[str, str],
    public_url: str,
    migrated_sqlite: Path | None,
    shared_mesh_of_test: SharedMesh | None,
) -> Settings:
    if shared_mesh_of_test is not None:
        return shared_mesh_of_test.settings
    if migrated_sqlite is not None:
        databases.copy_sqlite(migrated_sqlite, tmp_path)
    return settings_for(tmp_path, smtp.url, signing_key, database_urls, public_url)


@dataclass
class AuthEndpoint:
    port: int
    stub: auth_service_pb2_grpc.AuthServiceStub
    settings: Settings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def auth(settings: Settings) -> AsyncIterator[AuthEndpoint]:
    async with running(settings, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield AuthEndpoint(server.port, auth_service_pb2_grpc.AuthServiceStub(channel), settings)


@pytest.fixture
async def auth_db(settings: Settings) -> AsyncIterator[Database]:
    """The auth service's database, opened beside it, to check what was (not) written."""
    db = Database(settings.database_url("auth"))
    yield db
    await db.dispose()


def with_smtp(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"smtp_url": SecretStr(url)})


@dataclass
class Mesh:
    """auth, products and inventory, running together, and tokens of two users."""

    settings: Settings
    auth: auth_service_pb2_grpc.AuthServiceStub
    products: products_service_pb2_grpc.ProductsServiceStub
    inventory: inventory_service_pb2_grpc.InventoryServiceStub
    verified_token: str
    unverified_token: str

    def as_user(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata for a user (the verified one by default)."""
        return (("authorization", f"Bearer {token or self.verified_token}"),)


def mesh_settings(settings: Settings) -> Settings:
    """Settings with a free port for each service, known before any starts (they call each other)."""
    return settings.model_copy(
        update={f"{name}_addr": f"127.0.0.1:{free_port()}" for name in ("auth", "products", "inventory")}
    )


async def user_token(
    stub: auth_service_pb2_grpc.AuthServiceStub,
    email: str,
    inbox: Inbox | None,
    settings: Settings,
    role: str = "staff",
) -> str:
    """Registers `email`, confirms it through the mail when an inbox is given, gives it `role`
    as `invmesh users grant` does, and logs in."""
    await stub.Register(auth_pb.RegisterRequest(email=email, password="mesh-password"))
    if inbox is not None:
        (mail,) = await inbox.mail_to(email)
        token = link_token(mail, settings.public_url)
        await stub.VerifyEmail(auth_pb.VerifyEmailRequest(token=token))
    db = Database(settings.database_url("auth"))
    try:
        await grant_role(db, email=email, role=role)
    finally:
        await db.dispose()
    reply = await stub.Login(auth_pb.LoginRequest(email=email, password="mesh-password"))
    return reply.access_token


class SharedMesh:
    """The mesh of every test that uses it with the usual settings (`shared_mesh_of_test`): its
    SMTP server and auth service, holding the two users, run from the first such test to the
    end of the run, on databases of their own; before each test, `reset` puts back the rows
    the users left and nothing else, and empties the inbox. Products and inventory start for
    each test, on those databases: their caches (GetProduct's rows and pages, the products
    confirmed) and the change log's cursor would otherwise carry a test's reads into the next.
    auth keeps no such state: its throttles and keys are rows, and its token cache is keyed by
    the token."""

    def __init__(
        self,
        data_dir: Path,
        signing_key: ec.EllipticCurvePrivateKey,
        public_url: str,
        migrated_sqlite: Path | None,
    ) -> None:
        self.smtp = SmtpServer(free_port())
        self._on_server = databases.ServiceDatabases(databases.SERVER, "_mesh") if databases.SERVER else None
        self.database_urls = (
            {f"{service}_database_url": url for service, url in self._on_server.urls.items()}
            if self._on_server
            else {}
        )
        self.settings = settings_for(data_dir, self.smtp.url, signing_key, self.database_urls, public_url)
        self._auth_addr = ""  # a new port at each start: another process may take a port left free
        self._data_dir = data_dir
        self._migrated_sqlite = migrated_sqlite
        self._opened = False
        self._databases: dict[str, Database] = {}  # kept open: a test's reset reuses the connections
        self._auth: contextlib.AsyncExitStack | None = None
        self._users: dict[str, databases.Rows] | None = None  # the rows `sign_in` left, by service
        self._tokens = ("", "")
        self._signed_in_at = 0.0

    async def started_smtp(self) -> SmtpServer:
        await self._open()
        return self.smtp

    def settings_for_test(self) -> Settings:
        """The settings with the shared auth's address and new ones for products and inventory."""
        return mesh_settings(self.settings).model_copy(update={"auth_addr": self._auth_addr})

    async def reset(self) -> tuple[str, str]:
        """Auth up, the databases holding the users' rows alone, an empty inbox; the users' tokens."""
        await self._open()
        if self._auth is not None and not await self._mail_delivered():
            await self._stop_auth()  # so no late mail of the last test reaches the next one's inbox
        await self._restore(self._users or {})
        if not self.smtp.is_serving:  # a test stopped it
            await self.smtp.start()
        self.smtp.inbox.clear()
        if self._auth is None:
            self._auth_addr = f"127.0.0.1:{free_port()}"
            self._auth = contextlib.AsyncExitStack()
            await self._auth.enter_async_context(running(self.settings_for_test()))
        # Access tokens expire (ACCESS_TOKEN_TTL_SECONDS): sign in again well before.
        if (
            self._users is None
            or time.monotonic() - self._signed_in_at > self.settings.access_token_ttl_seconds / 3
        ):
            await self._sign_in()
            self.smtp.inbox.clear()
        return self._tokens

    async def make_way(self) -> None:
        """Stops auth and empties the databases and the inbox, for a test that runs servers of
        its own on them, with other settings."""
        await self._stop_auth()
        await self._restore({})
        self.smtp.inbox.clear()

    async def close(self) -> None:
        await self._stop_auth()
        for db in self._databases.values():
            await db.dispose()
        if self._opened:
            await self.smtp.stop()
            if self._on_server is not None:
                await self._on_server.drop()

    async def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        await self.smtp.start()
        if self._on_server is not None:
            await self._on_server.create()
        elif self._migrated_sqlite is not None:
            databases.copy_sqlite(self._migrated_sqlite, self._data_dir)
        self._databases = {
            service: Database(self.settings.database_url(service)) for service in databases.METADATA
        }

    async def _sign_in(self) -> None:
        settings = self.settings_for_test()
        async with grpc.aio.insecure_channel(settings.auth_addr) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            if self._users is None:
                self._tokens = (
                    await user_token(stub, "staff@example.com", self.smtp.inbox, settings, role="admin"),
                    await user_token(stub, "visitor@example.com", None, settings),
                )
            else:
                staff, visitor = [
                    await stub.Login(auth_pb.LoginRequest(email=email, password="mesh-password"))
                    for email in ("staff@example.com", "visitor@example.com")
                ]
                self._tokens = (staff.access_token, visitor.access_token)
        self._signed_in_at = time.monotonic()
        if not await self._mail_delivered():
            raise RuntimeError("the shared mesh's auth service did not send the users' mail")
        users = {}
        for service, db in self._databases.items():
            async with db.engine.connect() as conn:
                users[service] = await databases.read_rows(conn, service)
        self._users = users

    async def _mail_delivered(self, within: float = 10) -> bool:
        """Whether auth's relay sent all the mail queued, within `within` seconds."""
        queued = select(func.count()).select_from(OutgoingMail)
        deadline = time.monotonic() + within
        while (await self._databases["auth"].fetch(queued))[0][0]:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _restore(self, rows: dict[str, databases.Rows]) -> None:
        for service, db in self._databases.items():
            async with db.write_connection() as conn:
                await databases.replace_rows(conn, service, rows.get(service))

    async def _stop_auth(self) -> None:
        if self._auth is not None:
            auth, self._auth = self._auth, None
            await auth.aclose()


@pytest.fixture(scope="session")
async def shared_mesh(
    tmp_path_factory: pytest.TempPathFactory,
    signing_key: ec.EllipticCurvePrivateKey,
    public_url: str,
    migrated_sqlite: Path | None,
) -> AsyncIterator[SharedMesh]:
    shared = SharedMesh(tmp_path_factory.mktemp("shared-mesh"), signing_key, public_url, migrated_sqlite)
    yield shared
    await shared.close()


@pytest.fixture
def shared_mesh_of_test(request: pytest.FixtureRequest) -> SharedMesh | None:
    """The shared mesh, whose SMTP server, databases and settings a test gets when it uses the
    mesh's users (`mesh_users`, or a fixture that does, such as `mesh` and `web`) unless marked
    `own_mesh`; None otherwise: the test gets a folder, databases and an SMTP server of its own."""
    if "mesh_users" not in request.fixturenames or request.node.get_closest_marker("own_mesh"):
        return None
    shared = request.getfixturevalue("shared_mesh")
    assert isinstance(shared, SharedMesh)
    return shared


@dataclass
class MeshUsers:
    """Auth running, with the mesh's two users signed in."""

    settings: Settings  # auth's address, and free ones for products and inventory to start on
    verified_token: str
    unverified_token: str


@pytest.fixture
async def mesh_users(
    settings: Settings, smtp: SmtpServer, shared_mesh_of_test: SharedMesh | None
) -> AsyncIterator[MeshUsers]:
    """The shared mesh's auth and users when the test's settings are the shared ones; else an
    auth service of its own, started with its settings (on the shared mesh's databases, which
    it gives way to), and the users signed up there."""
    shared = shared_mesh_of_test
    if shared is not None and settings == shared.settings:
        verified_token, unverified_token = await shared.reset()
        yield MeshUsers(shared.settings_for_test(), verified_token, unverified_token)
        return
    if shared is not None:
        await shared.make_way()
    settings = mesh_settings(settings)
    async with running(settings), grpc.aio.insecure_channel(settings.auth_addr) as channel:
        auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        yield MeshUsers(
            settings,
            verified_token=await user_token(auth, "staff@example.com", smtp.inbox, settings, role="admin"),
            unverified_token=await user_token(auth, "visitor@example.com", None, settings),
        )


@contextlib.asynccontextmanager
async def running_mesh(mesh_users: MeshUsers, **changes: object) -> AsyncIterator[Mesh]:
    """Products and inventory started beside the users' auth, on their settings with `changes`,
    and stubs to all three."""
    settings = mesh_users.settings.model_copy(update=changes)
    async with (
        running_products(settings),
        running_inventory(settings),
        grpc.aio.insecure_channel(settings.auth_addr) as auth_channel,
        grpc.aio.insecure_channel(settings.products_addr) as products_channel,
        grpc.aio.insecure_channel(settings.inventory_addr) as inventory_channel,
    ):
        yield Mesh(
            settings=settings,
            auth=auth_service_pb2_grpc.AuthServiceStub(auth_channel),
            products=products_service_pb2_grpc.ProductsServiceStub(products_channel),
            inventory=inventory_service_pb2_grpc.InventoryServiceStub(inventory_channel),
            verified_token=mesh_users.verified_token,
            unverified_token=mesh_users.unverified_token,
        )


@pytest.fixture
async def mesh(mesh_users: MeshUsers) -> AsyncIterator[Mesh]:
    async with running_mesh(mesh_users) as running:
        yield running
