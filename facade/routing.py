"""The transcoded routes: one Starlette route that holds every binding, matched by HttpRule.

Starlette's own path syntax cannot express `**`, verbs or the spec's percent-decoding, and
a 405 must list the methods of every template that matches, so one route owns the table:
templates sorted once (verbs first, then literal segments before variables, left to right),
exact duplicates refused at startup. A server-streaming RPC's answer is facade.streaming's.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf.message import Message
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from facade import errors, httprule, streaming
from facade.transcoding import BadRequest, Binding, RuleError, dumps
from mesh import forwarding, metrics
from mesh.authorization import bearer_token
from mesh.errors import Unauthenticated

_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# gRPC refuses metadata over 8 KiB with RESOURCE_EXHAUSTED, which would read as a 429 (retry later).
_MAX_AUTHORIZATION = 4096
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")  # what gRPC accepts in an ASCII metadata value
_JSON_AS = frozenset({"application/json", "application/x-www-form-urlencoded", "text/plain"})
_CHARSET = re.compile(r"""charset\s*=\s*"?([^";\s]+)""", re.IGNORECASE)
_BINDING = "invmesh.binding"
_VALUES = "invmesh.path_values"
_ALLOW = "invmesh.allow"
_PATH_ERROR = "invmesh.path_error"
# The route template a request matched, for the `handler` label of the HTTP metrics.
TEMPLATE = "invmesh.template"


# The answer to send for a JSON answer, given the request's Accept header.
Page = Callable[[Response, str | None], Response]


@dataclass(frozen=True, slots=True)
class _Template:
    template: httprule.PathTemplate
    by_method: dict[str, Binding]


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A call to make, from a request the facade accepted."""

    message: Message
    metadata: list[tuple[str, str]]
    timeout: float | None


class TranscodedRoutes(BaseRoute):
    """Serves every binding. The lifespan state must hold `calls`: grpc path → multicallable
    (unary-stream for a binding with a `stream`, else unary-unary)."""

    def __init__(
        self,
        bindings: Sequence[Binding],
        *,
        backend_names: dict[str, str],
        default_timeout: float,
        max_timeout: float,
        max_body_bytes: int,
        pages: Mapping[tuple[str, str], Page] | None = None,
        forwarder_secret: bytes | None = None,
        count_calls: bool = False,
    ) -> None:
        """`pages`: for (HTTP method, RPC full name), what turns the JSON answer into a page for a
        client that asks for one. `count_calls`: count the calls to the services in
        `grpc_client_*` (mesh.metrics)."""
        grouped: dict[tuple[object, ...], dict[str, Binding]] = defaultdict(dict)
        templates: dict[tuple[object, ...], httprule.PathTemplate] = {}
        for binding in bindings:
            shape = binding.template.shape
            same = grouped[shape].get(binding.http_method)
            if same is not None:
                raise RuleError(
                    f"{binding.http_method} {binding.template.text} is bound twice: by "
                    f"{same.method.full_name} and {binding.method.full_name}"
                )
            grouped[shape][binding.http_method] = binding
            templates.setdefault(shape, binding.template)
        self._table = sorted(
            (_Template(templates[shape], methods) for shape, methods in grouped.items()),
            key=lambda t: t.template.precedence,
        )
        # A path is tried only against the templates that could match its shape (how many
        # segments, the first one), in precedence order, and those that may match any shape.
        self._open = [t for t in self._table if t.template.fixed_key is None]
        keys = {t.template.fixed_key for t in self._table} - {None}
        self._by_key = {key: [t for t in self._table if t.template.fixed_key in (key, None)] for key in keys}
        self._backend_names = backend_names
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout
        self._max_body_bytes = max_body_bytes
        self._pages = dict(pages or {})
        self._forwarder_secret = forwarder_secret
        self._counted = (
            {b.grpc_path: metrics.client_method(b.grpc_path) for b in bindings} if count_calls else {}
        )

    @property
    def bindings(self) -> list[Binding]:
        return [b for t in self._table for b in t.by_method.values()]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        try:
            httprule.check_escapes(path)
            allowed: list[str] = []
            first = ""  # the first template that matched, by another method
            for entry in self._candidates(path):
                values = entry.template.match(path)
                if values is None:
                    continue
                binding = entry.by_method.get(scope["method"])
                if binding is not None:
                    if binding.template is not entry.template:  # same shape, its own variable names
                        values = binding.template.match(path) or {}
                    return Match.FULL, {_BINDING: binding, _VALUES: values, TEMPLATE: binding.template.text}
                if not allowed:
                    first = entry.template.text
                allowed.extend(m for m in entry.by_method if m not in allowed)
        except httprule.PathError as exc:
            return Match.FULL, {_PATH_ERROR: str(exc)}
        if allowed:
            return Match.PARTIAL, {_ALLOW: allowed, TEMPLATE: first}
        return Match.NONE, {}

    def _candidates(self, path: str) -> list[_Template]:
        parts = path.split("/", 2)
        if len(parts) < 2:
            return self._open
        first = parts[1] if "%" not in parts[1] else unquote(parts[1], errors="replace")
        return self._by_key.get((path.count("/"), first), self._open)

    @staticmethod
    def template_of(child_scope: Scope) -> str | None:
        """The path template of the binding a FULL `matches` found, e.g. `/products/{id}`."""
        binding: Binding | None = child_scope.get(_BINDING)
        return binding.template.text if binding is not None else None

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NotImplementedError("transcoded routes have no names")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _PATH_ERROR in scope:
            response = errors.bad_request(scope[_PATH_ERROR], reason=errors.INVALID_PATH)
        elif _ALLOW in scope:
            response = errors.method_not_allowed(scope["method"], ", ".join(scope[_ALLOW]))
        elif scope[_BINDING].stream is not None:
            await self._stream(scope, receive, send, scope[_BINDING], scope[_VALUES])
            return
        else:
            binding = scope[_BINDING]
            response = await self._call(scope, receive, binding, scope[_VALUES])
            page = self._pages.get((binding.http_method, binding.method.full_name))
            if page is not None:
                response = page(response, _headers(scope).get("accept"))
        await response(scope, receive, send)

    async def _call(
        self, scope: Scope, receive: Receive, binding: Binding, values: dict[str, str]
    ) -> Response:
        outgoing = await self._outgoing(scope, receive, binding, values)
        if isinstance(outgoing, Response):
            return outgoing
        call = scope["state"]["calls"][binding.grpc_path]
        counted = self._counted.get(binding.grpc_path)
        if counted is not None:
            counted.started()
        started = time.perf_counter()
        try:
            reply = await call(outgoing.message, metadata=outgoing.metadata, timeout=outgoing.timeout)
        except grpc.aio.AioRpcError as exc:
            if counted is not None:
                counted.handled(exc.code(), time.perf_counter() - started)
            return errors.from_rpc_error(exc, self._backend_names[binding.service.full_name])
        except asyncio.CancelledError:  # the HTTP client went away: the call is cancelled with it
            if counted is not None:
                counted.handled(grpc.StatusCode.CANCELLED, time.perf_counter() - started)
            raise
        if counted is not None:
            counted.handled(grpc.StatusCode.OK, time.perf_counter() - started)
        return _success(binding, reply)

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, binding: Binding, values: dict[str, str]
    ) -> None:
        outgoing = await self._outgoing(scope, receive, binding, values)
        if isinstance(outgoing, Response):
            await outgoing(scope, receive, send)
            return
        backend = self._backend_names[binding.service.full_name]
        counted = self._counted.get(binding.grpc_path)
        if counted is not None:
            counted.started()
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED  # unless the relay returns (it raises when this task is cancelled)
        try:
            call = scope["state"]["calls"][binding.grpc_path](
                outgoing.message, metadata=outgoing.metadata, timeout=outgoing.timeout
            )
            code = await streaming.relay(
                call,
                binding,
                streaming.framing_for(_headers(scope).get("accept")),
                lambda exc: errors.from_rpc_error(exc, backend),
                scope,
                receive,
                send,
            )
        finally:
            if counted is not None:
                counted.handled(code, time.perf_counter() - started)

    async def _outgoing(
        self, scope: Scope, receive: Receive, binding: Binding, values: dict[str, str]
    ) -> _Outgoing | Response:
        """The call a request asks for, or the answer refusing it."""
        headers = _headers(scope)
        # A stream ends when either side does: it has a deadline only when the client asks for one.
        default = None if binding.stream is not None else self._default_timeout
        try:
            timeout = self._timeout(headers.get("grpc-timeout"), default)
        except BadRequest as exc:
            return errors.bad_request(str(exc), reason=exc.reason)
        body = b""
        if binding.body or headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            body_or_error = await _read_body(receive, headers.get("content-length"), self._max_body_bytes)
            if not isinstance(body_or_error, bytes):
                return body_or_error
            body = body_or_error
            if body.strip() and not _readable_as_json(headers.get("content-type")):
                return errors.http_error(
                    415,
                    "the request body must be JSON (UTF-8): send Content-Type: application/json",
                    reason=errors.UNSUPPORTED_MEDIA_TYPE,
                )
        try:
            message = binding.request(
                values, scope.get("query_string", b""), body, headers.get("last-event-id")
            )
        except BadRequest as exc:
            return errors.bad_request(str(exc), reason=exc.reason, field=exc.field)
        metadata: list[tuple[str, str]] = [("x-request-id", scope["invmesh.request_id"])]
        # The client's address, for auth's abuse limits, with the facade's proof (mesh.forwarding).
        if (client := scope.get("client")) and _METADATA_VALUE.fullmatch(client[0]):
            metadata.extend(forwarding.metadata(client[0], self._forwarder_secret))
        if authorization := headers.get("authorization"):
            if len(authorization) > _MAX_AUTHORIZATION:
                return errors.http_error(
                    431, "the Authorization header is too long", reason=errors.HEADER_TOO_LARGE
                )
            if not _METADATA_VALUE.fullmatch(authorization):  # gRPC would refuse it: a 500, not a 401
                return _unusable_authorization(authorization)
            metadata.append(("authorization", authorization))
        return _Outgoing(message, metadata, timeout)

    def _timeout(self, header: str | None, default: float | None) -> float | None:
        """Seconds to the call's deadline, None for none; raises BadRequest for a bad header."""
        if header is None:
            return default
        parsed = _GRPC_TIMEOUT.fullmatch(header.strip())
        if parsed is None or int(parsed.group(1)) == 0:  # gRPC's TimeoutValue is positive
            raise BadRequest(
                "the Grpc-Timeout header must be a positive number of 1 to 8 digits and a unit (H M S m u n)",
                reason=errors.INVALID_TIMEOUT,
            )
        return min(int(parsed.group(1)) * _TIMEOUT_UNITS[parsed.group(2)], self._max_timeout)


def _success(binding: Binding, reply: Any) -> Response:
    if binding.status == 204:
        return Response(status_code=204)
    payload = binding.response(reply)
    response = Response(dumps(payload), status_code=binding.status, media_type="application/json")
    if (location := binding.location_of(payload)) is not None:
        response.headers["location"] = location
    return response


def _readable_as_json(content_type: str | None) -> bool:
    """Whether a body of this declared type may be read as JSON: JSON itself, no type, or the
    types clients send JSON as by default (`curl -d` says form-urlencoded, `fetch` text/plain)."""
    if content_type is None:
        return True
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if not (
        media_type in _JSON_AS or (media_type.startswith("application/") and media_type.endswith("+json"))
    ):
        return False
    charset = _CHARSET.search(parameters)
    return charset is None or charset.group(1).lower() in ("utf-8", "utf8")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive, length: str | None, limit: int) -> bytes | Response:
    if length is not None and (not length.isdigit() or int(length) > limit):
        if not length.isdigit():
            return errors.bad_request(
                "the Content-Length header is not a number", reason=errors.INVALID_CONTENT_LENGTH
            )
        return _too_large(limit)
    chunks = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return errors.http_error(400, "the client went away", reason=errors.CLIENT_DISCONNECTED)
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _too_large(limit)
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def _unusable_authorization(authorization: str) -> Response:
    """The 401 for a header gRPC cannot carry, with the reason the services would give."""
    try:
        bearer_token(authorization)
    except Unauthenticated as exc:
        return errors.error_response(grpc.StatusCode.UNAUTHENTICATED, exc.message, reason=exc.reason)
    return errors.error_response(
        grpc.StatusCode.UNAUTHENTICATED,
        "the Authorization header holds characters no token has",
        reason=errors.INVALID_TOKEN,
    )


def _too_large(limit: int) -> Response:
    return errors.http_error(
        413, f"the request body is over the {limit} byte limit", reason=errors.BODY_TOO_LARGE
    )
