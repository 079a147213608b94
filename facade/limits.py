"""Limits the HTTP server keeps before the app sees a request: the size of a request head,
the time a client may take to send it, and the number of open connections.

uvicorn's httptools protocol has none of them. httptools joins the pieces of a header value
with `bytes +=` until the value ends, so one huge header costs quadratic time on the event
loop, which every connection shares; and a client may hold a connection open forever by
sending its head a byte at a time. `GuardedHttpToolsProtocol` counts the bytes of a head as
they arrive, before they are parsed, and answers in the facade's JSON error shape:

- 431 once a head passes `FACADE_MAX_HEAD_BYTES` (request line and headers);
- 408 when a head is not complete `FACADE_HEAD_TIMEOUT_SECONDS` after its first byte, or
  after the connection opened (a connection that sent nothing is closed without an answer);
- 503 with `Retry-After` to a connection opened while `FACADE_MAX_CONNECTIONS` are.

Each refusal ends the connection with a lingering close: the answer is sent, the sending
side shut, and what the client still sends read and dropped, unparsed, for a short while,
so that the client reads the answer rather than a connection reset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.responses import Response
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from facade import errors

LINGER_SECONDS = 1.0  # how long a refused connection's remaining input is read and dropped
_HEADER_OVERHEAD = 4  # ": " and CRLF, which httptools leaves out of a header's name and value


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_head_bytes: int
    head_timeout_seconds: float
    max_connections: int


class _HeadTooLarge(Exception):
    """Raised in a parser callback, which stops httptools where it is."""


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`) for these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `limits` (see the module)."""

    limits = ConnectionLimits(max_head_bytes=32 * 1024, head_timeout_seconds=5.0, max_connections=500)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_head = True  # from a connection's start or a request's end to a head's end
        self._received = 0  # bytes received while reading the head (body bytes may be among them)
        self._head_size = 0  # the parsed head's size: request line and headers
        self._head_begun = False  # the parser has seen a request's first byte
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # --- connections ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self.connections.discard(self)
            self._refuse(
                errors.error_response(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server has too many open connections; try again shortly",
                    reason=errors.TOO_MANY_CONNECTIONS,
                    headers={"retry-after": "1"},
                )
            )
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().eof_received()

    def shutdown(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().shutdown()

    # --- reading ---

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped unread
        if self._reading_head:
            self._received += len(data)
        super().data_received(data)
        # A head that is still incomplete: `_received` holds head bytes only.
        if self._reading_head and self._received > self.limits.max_head_bytes and not self._refused:
            self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        # httptools stops at the callback that raised _HeadTooLarge and reports it as a parse error.
        if self._head_size > self.limits.max_head_bytes:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_begun = True
        self._head_size = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + _HEADER_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._reading_head = False
        self._head_begun = False
        self._received = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._received = 0

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_head_bytes:
            raise _HeadTooLarge

    # --- refusing ---

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_seconds, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing() or not self._reading_head:
            return
        if self._responding:
            # A pipelined head behind a request still being answered: it waits for its turn.
            self._arm_head_timer()
            return
        if not self._head_begun and self._received == 0:
            self.transport.close()  # no request begun: nothing to answer
            return
        response = errors.http_error(
            408,
            f"the request head did not arrive within {self.limits.head_timeout_seconds:g} seconds",
            reason=errors.HEAD_TIMEOUT,
        )
        self._refuse(response)

    def _refuse_head(self) -> None:
        self._refuse(
            errors.http_error(
                431,
                f"the request line and headers are over the {self.limits.max_head_bytes} byte limit",
                reason=errors.HEADER_TOO_LARGE,
            )
        )

    @property
    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, response: Response) -> None:
        """Sends `response` with `Connection: close`, then lingers and closes."""
        self._refused = True
        self._disarm_head_timer()
        self._unset_keepalive_if_required()
        if self._responding:
            # Behind a request still being answered: no answer could go out in order.
            self.transport.abort()
            return
        head = [STATUS_LINE[response.status_code]]
        head.extend(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + bytes(response.body))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
