"""Schemathesis against the live facade over the real services: every documented operation,
authenticated as a verified user, with schema-valid and schema-violating data, under all of
schemathesis's checks. No 5xx; every response (status, content type, headers, body) matches
/openapi.json; what the document allows is accepted, and what it refuses is refused.

Two things no document can say are told to schemathesis in tests/facade/schemathesis.toml
(page and verification tokens are the server's own), and the document's own formats get
values from tests/facade/schemathesis_hooks.py. proto3 JSON's other leniencies stay out of
the way: the document allows null where the facade reads it as the default, and the rest
(numbers as strings, enum numbers, lowerCamelCase names) the fuzzer does not stumble on.

The facade serves in the test's event loop, so schemathesis runs as a subprocess (its CLI).
Streamed operations are left out: schemathesis reads a response whole, and a watch ends only
when its client leaves; tests/facade/test_streaming.py covers them, their strict input included.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from facade.app import create_app
from tests.conftest import SmtpServer, user_token
from tests.facade import schemathesis_hooks
from tests.facade.conftest import Web, serving

MAX_EXAMPLES = 12
SEED = "20240601"
HERE = Path(__file__).parent
ROOT = HERE.parents[1]


async def schemathesis(*args: str, cwd: Path, caller: str = "", timeout: float = 240) -> tuple[int, str]:
    """Runs the schemathesis CLI in a subprocess, in `cwd` (where it keeps its failure cache),
    signed in as the account with the email `caller`; returns its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "NO_COLOR": "1",
            "COLUMNS": "160",
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.facade.schemathesis_hooks",
            schemathesis_hooks.CALLER: caller,
        },
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def run_args(url: str, authorization: str, *extra: str) -> list[str]:
    return [
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: {authorization}",
        "--seed",
        SEED,
        "--request-timeout",
        "10",
        "--suppress-health-check",
        "too_slow,filter_too_much",
        "--warnings",
        "off",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("role", ["admin", "viewer"])
async def test_every_operation_conforms_under_schemathesis(
    web: Web, smtp: SmtpServer, tmp_path: Path, role: str
) -> None:
    """As an admin, every operation is exercised; as a viewer, every write is a documented 403."""
    if role == "admin":
        authorization = web.staff["authorization"]
    else:
        token = await user_token(web.mesh.auth, "viewer@example.com", smtp.inbox, web.mesh.settings, role)
        authorization = f"Bearer {token}"
    me = (await web.http.get("/users/me", headers={"authorization": authorization})).json()
    document = (await web.http.get("/openapi.json")).json()
    operations = {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    streamed = {name for name, operation in operations.items() if "text/event-stream" in success(operation)}
    assert streamed == {"GET /inventory/movements:watch"}
    excluded = [f"--exclude-operation-id={operations[name]['operationId']}" for name in sorted(streamed)]
    junit = tmp_path / "junit.xml"
    code, output = await schemathesis(
        *run_args(
            str(web.http.base_url).rstrip("/"),
            authorization,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--phases",
            "examples,coverage,fuzzing",
            "--mode",
            "all",
            # One worker: on Python 3.11, hypothesis's ast.parse from two threads at once can
            # fail with "AST constructor recursion depth mismatch" (CPython gh-106905).
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
            *excluded,
        ),
        cwd=tmp_path,
        caller=me["email"],
    )
    assert code == 0, output[-30000:]
    tested = {case.get("name") for case in ET.parse(junit).getroot().iter("testcase")}
    assert tested == operations.keys() - streamed, output[-5000:]


def success(operation: dict[str, Any]) -> dict[str, Any]:
    """The content types of the operation's success response."""
    (content,) = [r.get("content", {}) for code, r in operation["responses"].items() if code.startswith("2")]
    return cast(dict[str, Any], content)


class WrongDocument:
    """The facade, serving a document that differs from what it does."""

    def __init__(self, app: ASGIApp, document: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(document).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/openapi.json":
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        await self.app(scope, receive, send)


async def test_schemathesis_catches_a_document_that_drifted(web: Web, tmp_path: Path) -> None:
    """The run above can fail: a response schema naming a field the facade never prints is caught."""
    document = copy.deepcopy((await web.http.get("/openapi.json")).json())
    user = document["components"]["schemas"]["User"]
    user["properties"]["nickname"] = {"type": "string"}
    user["required"].append("nickname")
    async with serving(WrongDocument(create_app(web.mesh.settings), document)) as url:
        code, output = await schemathesis(
            *run_args(
                url,
                web.staff["authorization"],
                "--checks",
                "response_schema_conformance",
                "--include-operation-id",
                "AuthService_GetMe",
                "--phases",
                "fuzzing",
                "--mode",
                "positive",
                "--max-examples",
                "3",
            ),
            cwd=tmp_path,
        )
    assert code == 1, output[-5000:]
    assert "Response violates schema" in output and '"nickname" is a required property' in output, output[
        -5000:
    ]


async def test_schemathesis_catches_a_limit_the_document_left_out(web: Web, tmp_path: Path) -> None:
    """The data checks can fail: without `minimum: 0`, a negative page_size is schema-valid, and
    the service's 400 for it is caught."""
    document = copy.deepcopy((await web.http.get("/openapi.json")).json())
    listing = document["paths"]["/products"]["get"]["parameters"]
    page_size = next(p for p in listing if p["name"] == "page_size")
    del page_size["schema"]["minimum"]
    async with serving(WrongDocument(create_app(web.mesh.settings), document)) as url:
        code, output = await schemathesis(
            *run_args(
                url,
                web.staff["authorization"],
                "--checks",
                "positive_data_acceptance",
                "--include-operation-id",
                "ProductsService_ListProducts",
                "--phases",
                "coverage",
                "--mode",
                "positive",
            ),
            cwd=tmp_path,
        )
    assert code == 1, output[-5000:]
    assert "Schema-valid request rejected" in output and "INVALID_PAGE_SIZE" in output, output[-5000:]
