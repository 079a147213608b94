"""Traces (mesh/tracing.py): a real OTLP/HTTP receiver, the real processes of `invmesh up`
exporting to it, and one trace per request from the facade through the services to the
database; nothing of tracing in a process whose OTLP endpoint is unset."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk.trace import TracerProvider

from mesh.logs import LogFormatter
from tests.test_supervisor import ADMIN, admin_token, invmesh_up, up_env


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[str]  # the trace ids linked to

    @property
    def is_sql(self) -> bool:
        return "db.system" in self.attributes or "db.system.name" in self.attributes


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf) on a free port of 127.0.0.1,
    keeping every span it is sent, as the OpenTelemetry proto package decodes them."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/traces", self.path
                assert self.headers["content-type"] == "application/x-protobuf"
                received.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._lock = threading.Lock()

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=resource["service.name"],
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                attributes={kv.key: _value(kv.value) for kv in span.attributes},
                                links=[link.trace_id.hex() for link in span.links],
                            )
                        )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def __enter__(self) -> OtlpReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


async def _eventually_trace(receiver: OtlpReceiver, trace_id: str, want: set[str]) -> list[ReceivedSpan]:
    """The spans of `trace_id` once every service of `want` has sent some, and two exports
    later (spans of one trace end, and are sent, at different times)."""
    async with asyncio.timeout(20):
        while {s.service for s in receiver.trace(trace_id)} < want:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # OTEL_BSP_SCHEDULE_DELAY is 100 ms here: let the last spans arrive
    return receiver.trace(trace_id)


def _all_values(spans: list[ReceivedSpan]) -> Iterator[str]:
    for span in spans:
        yield span.name
        yield from (json.dumps(value) for value in span.attributes.values())


@pytest.mark.slow
async def test_a_rest_request_is_one_trace_through_facade_services_and_database(tmp_path: Path) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with OtlpReceiver() as receiver:
        env = up_env(tmp_path) | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LOG_LEVEL": "INFO",
            "SERVICE_SECRET": "a-service-secret-" + secrets.token_hex(8),
        }
        async with invmesh_up(env) as up:
            await up.line("all healthy")
            async with httpx.AsyncClient(base_url=up.facade_url) as http:
                token = await admin_token(http, tmp_path / "outbox")
                http.headers["authorization"] = f"Bearer {token}"
                created = await http.post(
                    "/products", json={"sku": "TRACED-SKU-1", "name": "Traced", "price": "2.50"}
                )
                assert created.status_code == 201, created.text
                pid = created.json()["id"]
                moved = await http.post(
                    "/inventory",
                    json={"product_id": pid, "type": "IN", "quantity": 5, "reason": "secret-free"},
                    headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "x-request-id": "traced-1"},
                )
                assert moved.status_code == 201, moved.text
                assert moved.headers["x-request-id"] == "traced-1"  # X-Request-Id stays as it is
                # Error mapping survives the instrumentation: the status details (trailers) of an
                # INVALID_ARGUMENT from inventory reach the REST client whole.
                refused = await http.post("/inventory", json={"product_id": "", "quantity": 0})
                assert refused.status_code == 400, refused.text
                (bad,) = [
                    d for d in refused.json()["details"] if d["@type"].endswith("google.rpc.BadRequest")
                ]
                assert {v["field"]: v["reason"] for v in bad["field_violations"]} == {
                    "type": "INVALID_MOVEMENT_TYPE",
                    "product_id": "MISSING_PRODUCT_ID",
                    "quantity": "INVALID_QUANTITY",
                }
                spans = await _eventually_trace(receiver, trace_id, {"facade", "inventory", "products"})
                # The stock feed's batch, which the movement's commit woke, links to the request.
                async with asyncio.timeout(10):
                    while not [s for s in receiver.spans if trace_id in s.links]:
                        await asyncio.sleep(0.05)
            said = list(up.said)

    by_id = {s.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent_span_id not in by_id]
    assert root.parent_span_id == parent_id  # the client's traceparent is continued
    assert (root.service, root.name) == ("facade", "POST /inventory")  # the route template
    assert root.attributes["http.route"] == "/inventory"
    # Facade → inventory → products (the product check), each hop a client span with the
    # server span of the next service beneath it.
    record = "invmesh.inventory.v1.InventoryService/RecordMovement"
    (facade_call,) = [s for s in spans if s.service == "facade" and s.name == f"/{record}"]
    assert facade_call.parent_span_id == root.span_id
    (inventory_server,) = [s for s in spans if s.service == "inventory" and s.name == f"/{record}"]
    assert inventory_server.parent_span_id == facade_call.span_id
    product_calls = [s for s in spans if s.service == "inventory" and "ProductsService" in s.name]
    assert product_calls, [s.name for s in spans]
    products_server = [s for s in spans if s.service == "products" and "ProductsService" in s.name]
    assert {s.parent_span_id for s in products_server} <= {s.span_id for s in product_calls}
    assert products_server
    # The database statements of inventory, each under the RPC that ran it.
    statements = [s for s in spans if s.is_sql and s.service == "inventory"]
    assert any("INSERT" in str(s.attributes.get("db.statement", "")) for s in statements), statements
    assert all(by_id[s.parent_span_id].service == "inventory" for s in statements)
    # Products' read of the product, which runs on a reader thread on SQLite, is in the trace too.
    reads = [s for s in spans if s.is_sql and s.service == "products"]
    assert any("SELECT" in str(s.attributes.get("db.statement", "")) for s in reads), reads
    assert all(by_id[s.parent_span_id].service == "products" for s in reads)
    assert root.attributes.get("http.status_code", root.attributes.get("http.response.status_code")) == 201

    # No password, token or secret in any span of any trace, the login and the verification
    # link included; and no bound SQL values (the SKU went into an INSERT as a parameter).
    (mail,) = (tmp_path / "outbox").glob("*.eml")
    body = BytesParser(policy=policy.default).parsebytes(mail.read_bytes()).get_body(("plain",))
    assert body is not None
    link = re.search(r"https?://[^/\s]+(/[^?\s]+)\?\S*token=([^&\s]+)", body.get_content())
    assert link is not None
    verify_path, verification_token = link.groups()
    assert [s for s in receiver.spans if s.attributes.get("http.target") == verify_path]
    secret_values = [ADMIN["password"], token, verification_token, env["SERVICE_SECRET"], "TRACED-SKU-1"]
    for text in _all_values(receiver.spans):
        assert not any(value in text for value in secret_values), text
        assert not re.search(r"(?i)bearer\s|eyJ[\w-]+\.", text), text  # no token of any caller
    for key in {key for span in receiver.spans for key in span.attributes}:
        assert not re.search(r"(?i)authorization|password|secret|token|metadata|header|body", key), key
    assert any(s.attributes.get("rpc.method") == "Login" for s in receiver.spans)
    # Each process names itself; the health checks and reflection make no spans.
    assert {s.service for s in receiver.spans} == {"facade", "auth", "products", "inventory"}
    assert not [s for s in receiver.spans if s.name.startswith("/grpc.")]
    # The services' log lines of the request carry its trace id.
    logged = [line for line in said if f"trace_id={trace_id}" in line]
    assert {line.split("service=")[1].split()[0] for line in logged} >= {"facade", "inventory", "products"}


def _formatted(formatter: LogFormatter) -> str:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, "moved %d", (5,), None)
    return formatter.format(record)


def test_log_lines_carry_the_ids_of_the_current_span() -> None:
    tracer = TracerProvider().get_tracer("test")  # a provider of this test's own, not the global one
    text, js = LogFormatter("inventory", "text"), LogFormatter("inventory", "json")
    assert "trace_id" not in _formatted(text) and "trace_id" not in json.loads(_formatted(js))
    with tracer.start_as_current_span("work") as span:
        ids = span.get_span_context()
        trace_id, span_id = format(ids.trace_id, "032x"), format(ids.span_id, "016x")
        assert f"trace_id={trace_id} span_id={span_id} msg" in _formatted(text)
        line = json.loads(_formatted(js))
    assert (line["trace_id"], line["span_id"], line["msg"]) == (trace_id, span_id, "moved 5")


_OFF = """
import asyncio, sys
from opentelemetry import trace
from mesh import tracing
from mesh.clients import channel
from mesh.config import load_settings
from mesh.db import Database
from facade.app import create_app

async def main():
    assert not tracing.configure("inventory")
    app = create_app(load_settings())
    db = Database("sqlite+aiosqlite:///:memory:")
    opened = channel("127.0.0.1:1")
    await opened.close()
    await db.dispose()
    sdk = ("opentelemetry.sdk", "opentelemetry.instrumentation")
    loaded = sorted(m for m in sys.modules if m.startswith(sdk))
    traced = [m for m in app.user_middleware if m.cls.__module__.startswith("opentelemetry")]
    print(type(trace.get_tracer_provider()).__name__, len(traced), loaded)

asyncio.run(main())
"""


def test_without_an_endpoint_no_sdk_is_loaded_and_nothing_is_instrumented(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {
        "INVMESH_DATA_DIR": str(tmp_path)
    }
    out = subprocess.run([sys.executable, "-c", _OFF], env=env, capture_output=True, text=True, check=True)
    # The API's proxy provider (no SDK), none of OpenTelemetry's middleware, no instrumentation.
    assert out.stdout.split() == ["ProxyTracerProvider", "0", "[]"], out
    on = env | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}
    out = subprocess.run([sys.executable, "-c", _OFF], env=on, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ProxyTracerProvider", "0", "[]"], out


_DEAD_ENDPOINT = """
import time
from opentelemetry import trace
from mesh import tracing
assert tracing.configure("auth")
with trace.get_tracer("t").start_as_current_span("s"):
    pass
started = time.monotonic()
tracing.shutdown()
print(round(time.monotonic() - started, 2))
"""


@pytest.mark.slow
def test_a_dead_collector_delays_a_shutdown_by_seconds_at_most(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        dead = receiver.endpoint  # its port, free again once the receiver closes
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _DEAD_ENDPOINT],
        env=env | {"OTEL_EXPORTER_OTLP_ENDPOINT": dead},
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(out.stdout) < 5, out
    assert time.monotonic() - started < 15


_ONE_SPAN = """
from opentelemetry import trace
from mesh import tracing
assert tracing.configure("auth")
with trace.get_tracer("t").start_as_current_span("one"):
    pass
tracing.shutdown()
"""


@pytest.mark.parametrize(
    ("settings", "received"),
    [
        ({}, [("auth", "one")]),  # the component's name
        ({"OTEL_SERVICE_NAME": "stockroom"}, [("stockroom", "one")]),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=depot,deployment.environment=test"}, [("depot", "one")]),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, []),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}, []),
    ],
)
def test_the_standard_variables_name_the_service_and_sample(
    settings: dict[str, str], received: list[tuple[str, str]]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with OtlpReceiver() as receiver:
        env |= {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.endpoint}/v1/traces", **settings}
        subprocess.run([sys.executable, "-c", _ONE_SPAN], env=env, check=True, timeout=30)
    assert [(s.service, s.name) for s in receiver.spans] == received
