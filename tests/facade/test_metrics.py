"""Prometheus metrics, scraped over HTTP after known traffic: exact deltas of the gRPC server
and client counters and of the facade's HTTP counters, labels that hold no id, email or token,
and `invmesh up` serving all four endpoints (mesh/metrics.py)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text as sql

from auth.service import running as running_auth
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2 as pb
from mesh import metrics
from mesh.config import Settings
from mesh.db import Database
from mesh.errors import DatabaseUnavailable
from products.change_watch import ChangeWatch
from products.service import running as running_products
from tests.conftest import SmtpServer, free_port
from tests.facade.conftest import Web
from tests.test_supervisor import invmesh_up, up_env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PRODUCTS = "invmesh.products.v1.ProductsService"


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def deltas(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
async def scrape() -> AsyncIterator[httpx.AsyncClient]:
    """This process's registry (every server the test runs in it), served on a free port."""
    async with (
        metrics.endpoint("127.0.0.1:0") as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        yield client


async def scraped(client: httpx.AsyncClient) -> tuple[str, Samples]:
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return reply.text, parse(reply.text)


def grpc_labels(service: str, method: str, **more: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": service, "grpc_method": method, **more}


async def test_one_found_and_one_missing_product_count_once_each_on_every_hop(
    web: Web, scrape: httpx.AsyncClient
) -> None:
    created = await web.http.post(
        "/products", headers=web.staff, json={"sku": "MET-1", "name": "Gauge", "price": "3.00"}
    )
    assert created.status_code == 201
    product_id = created.json()["id"]
    missing = str(uuid.uuid4())
    _, before = await scraped(scrape)

    assert (await web.http.get(f"/products/{product_id}", headers=web.staff)).status_code == 200
    assert (await web.http.get(f"/products/{missing}", headers=web.staff)).status_code == 404
    assert (await web.http.get("/no/such/route", headers=web.staff)).status_code == 404
    assert (await web.http.delete("/openapi.json")).status_code == 405
    text, after = await scraped(scrape)

    # The facade's route, by its template; an unknown route by one value.
    http = "http_requests_total"
    assert deltas(before, after, http, handler="/products/{id}", method="GET", status="200") == 1
    assert deltas(before, after, http, handler="/products/{id}", method="GET", status="404") == 1
    assert deltas(before, after, http, handler="none", method="GET", status="404") == 1
    assert deltas(before, after, http, handler="/openapi.json", method="DELETE", status="405") == 1
    seconds = "http_request_duration_seconds_count"
    assert deltas(before, after, seconds, handler="/products/{id}", method="GET") == 2
    # The facade's calls (grpc_client_*) and the products server's (grpc_server_*), go's code names.
    for side in ("client", "server"):
        handled = f"grpc_{side}_handled_total"
        for code in ("OK", "NotFound"):
            labels = grpc_labels(PRODUCTS, "GetProduct", grpc_code=code)
            assert deltas(before, after, handled, **labels) == 1, (side, code)
        started = grpc_labels(PRODUCTS, "GetProduct")
        assert deltas(before, after, f"grpc_{side}_started_total", **started) == 2, side
        assert deltas(before, after, f"grpc_{side}_handling_seconds_count", **started) == 2, side

    # products verified the token at POST /products: both reads found it in its cache.
    assert deltas(before, after, "invmesh_token_cache_total", result="hit") == 2
    assert deltas(before, after, "invmesh_token_cache_total", result="miss") == 0

    # No id, email or token in any label.
    for secret in (product_id, missing, web.mesh.verified_token, "staff@example.com", "no/such"):
        assert secret not in text
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text


async def test_refusals_count_by_the_code_the_caller_got(web: Web, scrape: httpx.AsyncClient) -> None:
    """The token check's refusal and a validation error both reach grpc_server_handled_total
    with the status the error interceptor made of them."""
    _, before = await scraped(scrape)
    stub = web.mesh.products
    with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
        await stub.GetProduct(pb.GetProductRequest(id=str(uuid.uuid4())))
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.CreateProduct(pb.CreateProductRequest(product=pb.Product()), metadata=web.mesh.as_user())
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, after = await scraped(scrape)
    handled = "grpc_server_handled_total"
    refused = grpc_labels(PRODUCTS, "GetProduct", grpc_code="Unauthenticated")
    assert deltas(before, after, handled, **refused) == 1
    invalid_labels = grpc_labels(PRODUCTS, "CreateProduct", grpc_code="InvalidArgument")
    assert deltas(before, after, handled, **invalid_labels) == 1


async def test_the_endpoint_answers_only_get_metrics(scrape: httpx.AsyncClient) -> None:
    assert (await scrape.get("/")).status_code == 404
    assert (await scrape.post("/metrics")).status_code == 405
    openmetrics = await scrape.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


@pytest.mark.slow
async def test_invmesh_up_serves_metrics_from_every_process(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    async with invmesh_up(env) as up, httpx.AsyncClient(timeout=10) as http:
        await up.line("all healthy")
        # Traffic through the facade: its own request, and auth's login behind it.
        login = await http.post(
            f"{up.facade_url}/users/login", json={"email": "a@example.com", "password": "x" * 8}
        )
        assert login.status_code == 401
        texts = {}
        for name in ("facade", "auth", "products", "inventory"):
            reply = await http.get(f"http://{env[f'{name.upper()}_METRICS_ADDR']}/metrics")
            assert reply.status_code == 200, name
            texts[name] = parse(reply.text)
            assert value(texts[name], "process_open_fds") > 0, name
        facade, auth = texts["facade"], texts["auth"]
        login_labels = grpc_labels("invmesh.auth.v1.AuthService", "Login", grpc_code="Unauthenticated")
        assert value(facade, "grpc_client_handled_total", **login_labels) == 1
        assert value(auth, "grpc_server_handled_total", **login_labels) == 1
        assert value(facade, "http_requests_total", handler="/users/login", method="POST", status="401") == 1


@pytest.mark.slow
async def test_replicas_serve_metrics_on_ports_ten_apart(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    host, port = env["INVENTORY_METRICS_ADDR"].rsplit(":", 1)
    async with invmesh_up(env, "auth", "products", "inventory", "--replicas", "inventory=2") as up:
        await up.line("all healthy")
        async with httpx.AsyncClient(timeout=10) as http:
            for moved in (int(port), int(port) + 10):
                assert (await http.get(f"http://{host}:{moved}/metrics")).status_code == 200


async def test_a_taken_metrics_port_stops_up_with_one_line(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env["PRODUCTS_METRICS_ADDR"] = f"127.0.0.1:{port}"
        up = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "launcher", "up"), env=env, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, stderr = await up.communicate()
    assert up.returncode == 1
    (line,) = stderr.decode().splitlines()
    assert re.fullmatch(
        rf"invmesh: port {port} \(products, PRODUCTS_METRICS_ADDR\) is taken, "
        rf"probably by pid {os.getpid()}: .*",
        line,
    )
    assert not (tmp_path / "products.db").exists()


async def test_serve_names_a_taken_metrics_port(tmp_path: Path) -> None:
    env = up_env(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        serve = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "launcher", "serve", "products"),
            env=env | {"PRODUCTS_METRICS_ADDR": taken},
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, stderr = await serve.communicate()
    assert serve.returncode == 1
    assert stderr.decode().splitlines()[-1] == (
        f"invmesh: products: cannot serve metrics on {taken} (PRODUCTS_METRICS_ADDR): Address already in use"
    )


async def test_movements_refusals_and_logins_are_counted(web: Web, scrape: httpx.AsyncClient) -> None:
    created = await web.http.post(
        "/products", headers=web.staff, json={"sku": "MET-2", "name": "Dial", "price": "1.00"}
    )
    product_id = created.json()["id"]
    _, before = await scraped(scrape)
    entry = {"product_id": product_id, "type": "IN", "quantity": 5, "request_id": "met-in-1"}
    for _ in range(2):  # the second is the first again: nothing written
        assert (await web.http.post("/inventory", headers=web.staff, json=entry)).status_code in (200, 201)
    exit_ = {"product_id": product_id, "type": "OUT", "quantity": 50}
    refused = await web.http.post("/inventory", headers=web.staff, json=exit_)
    assert refused.status_code == 400  # FAILED_PRECONDITION
    wrong = {"email": "staff@example.com", "password": "not the password"}
    assert (await web.http.post("/users/login", json=wrong)).status_code == 401
    text, after = await scraped(scrape)
    assert deltas(before, after, "invmesh_movements_total", type="IN") == 1
    assert deltas(before, after, "invmesh_movements_total", type="OUT") == 0
    assert deltas(before, after, "invmesh_refusals_total", reason="INSUFFICIENT_STOCK") == 1
    assert deltas(before, after, "invmesh_refusals_total", reason="INVALID_CREDENTIALS") == 1
    assert deltas(before, after, "invmesh_logins_total", result="invalid_credentials") == 1
    # inventory asked products once whether the product exists (then it remembers), over a channel
    # of mesh.clients: the same call counted by both sides.
    check = grpc_labels(PRODUCTS, "BatchGetProducts", grpc_code="OK")
    assert deltas(before, after, "grpc_client_handled_total", **check) == 1
    assert deltas(before, after, "grpc_server_handled_total", **check) == 1
    assert product_id not in text and "met-in-1" not in text


async def test_throttled_logins_and_delivered_mail_are_counted(
    settings: Settings, smtp: SmtpServer, scrape: httpx.AsyncClient
) -> None:
    strict = settings.model_copy(update={"login_failures_per_account": 1})
    async with running_auth(strict, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            _, before = await scraped(scrape)
            await stub.Register(auth_pb.RegisterRequest(email="met@example.com", password="met-password"))
            await smtp.inbox.mail_to("met@example.com")
            codes = []
            for _ in range(2):  # the first fails, the second is over the limit of one
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Login(auth_pb.LoginRequest(email="met@example.com", password="wrong-password"))
                codes.append(refused.value.code())
            assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED]
            text, after = await scraped(scrape)
    assert deltas(before, after, "invmesh_logins_total", result="invalid_credentials") == 1
    assert deltas(before, after, "invmesh_logins_total", result="throttled") == 1
    assert deltas(before, after, "invmesh_refusals_total", reason="TOO_MANY_LOGIN_ATTEMPTS") == 1
    delivered = deltas(before, after, "invmesh_outbox_deliveries_total", relay="mail", result="delivered")
    assert delivered == 1
    login = grpc_labels("invmesh.auth.v1.AuthService", "Login", grpc_code="ResourceExhausted")
    assert deltas(before, after, "grpc_server_handled_total", **login) == 1
    assert "met@example.com" not in text


async def test_the_mail_outbox_backlog_and_its_age_while_smtp_is_down(
    settings: Settings, smtp: SmtpServer, scrape: httpx.AsyncClient
) -> None:
    """SMTP down: the welcome mail waits, backlog 1 and an age that grows; SMTP back: both 0."""
    quick = settings.model_copy(update={"mail_retry_initial_seconds": 0.1, "mail_retry_max_seconds": 0.3})
    async with running_auth(quick, address="127.0.0.1:0") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await smtp.stop()
            await stub.Register(auth_pb.RegisterRequest(email="lag@example.com", password="lag-password"))
            async with asyncio.timeout(10):
                while value((await scraped(scrape))[1], "invmesh_outbox_backlog", relay="mail") != 1:
                    await asyncio.sleep(0.1)
            first = value((await scraped(scrape))[1], "invmesh_outbox_oldest_age_seconds", relay="mail")
            await asyncio.sleep(0.5)
            later = value((await scraped(scrape))[1], "invmesh_outbox_oldest_age_seconds", relay="mail")
            assert 0 < first < later
            await smtp.start()
            await smtp.inbox.mail_to("lag@example.com")
            async with asyncio.timeout(10):  # both, from the round after the delivery
                while (
                    value(now := (await scraped(scrape))[1], "invmesh_outbox_backlog", relay="mail"),
                    value(now, "invmesh_outbox_oldest_age_seconds", relay="mail"),
                ) != (0, 0):
                    await asyncio.sleep(0.1)


async def pool_figures(scrape: httpx.AsyncClient) -> tuple[float, float]:
    """(in use, idle) of this process's pools, leaving out the brief checkouts of the other
    servers the test runs in this process (their readiness pings, say): a checkout only adds
    to in use and takes from idle, so the least in use and the most idle of a few scrapes are
    what stays checked out."""
    samples = []
    for _ in range(5):
        samples.append((await scraped(scrape))[1])
        await asyncio.sleep(0.03)
    return (
        min(value(s, "invmesh_db_pool_in_use") for s in samples),
        max(value(s, "invmesh_db_pool_idle") for s in samples),
    )


async def test_the_pool_gauges_show_a_connection_held_by_an_open_transaction(
    settings: Settings, scrape: httpx.AsyncClient
) -> None:
    """A transaction held open is one connection in use; once it ends, the connection is idle."""
    db = Database.for_service(settings, "auth")
    try:
        async with db.session() as warm:  # one connection made, so the pool holds it after
            await warm.execute(sql("SELECT 1"))
        before = await pool_figures(scrape)
        async with db.transaction() as session:
            await session.execute(sql("SELECT 1"))
            during = await pool_figures(scrape)
            _, samples = await scraped(scrape)
        after = await pool_figures(scrape)
    finally:
        await db.dispose()
    assert (during[0] - before[0], during[1] - before[1]) == (1, -1)
    assert after == before
    assert value(samples, "invmesh_db_pool_overflow") == 0


async def test_the_pool_gauges_count_a_sqlite_files_reader_connections(
    settings: Settings, scrape: httpx.AsyncClient
) -> None:
    """A SQLite file's reads run on reader threads with a pool of their own: a read leaves its
    connection idle in that pool, counted with the others."""
    if not settings.database_url("auth").startswith("sqlite"):
        pytest.skip("only a SQLite file has reader threads")
    db = Database.for_service(settings, "auth")
    try:
        before = await pool_figures(scrape)
        await db.fetch(sql("SELECT 1"))
        after = await pool_figures(scrape)
    finally:
        await db.dispose()
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)


async def test_the_change_log_lag_grows_while_the_log_cannot_be_read(
    settings: Settings, scrape: httpx.AsyncClient
) -> None:
    """A watch whose database is unreachable falls behind, by a lag that grows; one that reads
    to the end of the log is caught up, 0."""
    lag = "invmesh_change_log_lag_seconds"
    async with running_products(settings, address="127.0.0.1:0"):  # migrates its database
        pass
    unreachable = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none", connect_timeout=1)
    reachable = Database.for_service(settings, "products")

    def watch(db: Database) -> ChangeWatch:
        return ChangeWatch(db, lambda _: None, own_writer="w", retention=60, retry_initial=1, retry_max=1)

    try:
        with pytest.raises(DatabaseUnavailable):
            await watch(unreachable).poll()
        first = value((await scraped(scrape))[1], lag)
        await asyncio.sleep(0.3)
        assert 0 < first < value((await scraped(scrape))[1], lag)
        await watch(reachable).poll()
        assert value((await scraped(scrape))[1], lag) == 0
    finally:
        await unreachable.dispose()
        await reachable.dispose()


async def test_the_pool_counts_a_call_waiting_for_its_only_connection(
    settings: Settings, scrape: httpx.AsyncClient
) -> None:
    """A pool of one held by a transaction: a second call waits, counted; then none does."""
    if settings.database_url("auth").startswith("sqlite"):
        pytest.skip("SQLite has no queue of connections to wait in")
    db = Database(settings.database_url("auth"), pool_size=1, max_overflow=0, pool_timeout=10)
    try:
        async with db.transaction() as session:
            await session.execute(sql("SELECT 1"))
            second = asyncio.create_task(db.fetch(sql("SELECT 1")))
            await asyncio.sleep(0.3)
            _, during = await scraped(scrape)
        await second
        _, after = await scraped(scrape)
    finally:
        await db.dispose()
    assert value(during, "invmesh_db_pool_waiting") == 1
    assert value(after, "invmesh_db_pool_waiting") == 0
