"""A server-streaming RPC over HTTP: each event as its message arrives, as Server-Sent Events
or as one JSON object per line. An event is a message, or, with `rest_stream.events`, each
element of that repeated field: a message then carries as many as were ready, sent in order in
one write, and each is an event of its own, as if each had come in a message.

- The Accept header chooses: `text/event-stream` weighed above `application/x-ndjson` gets
  SSE; anything else (no Accept, `*/*`, `application/json`) gets NDJSON, as grpc-gateway sends.
- SSE: per event, `id:` its `rest_stream.event_id` field, `event:` the set member of its
  `rest_stream.event_type` oneof, `data:` its JSON. NDJSON: `{"result": …}` per event and
  line, grpc-gateway's shape for a message (grpc-gateway knows no `events`: it sends a line
  per message, `{"result": {"events": […]}}`, or the bare array with `response_body`).
- The head waits for the first event, so a call refused before it (a bad cursor, too many
  watchers) is an HTTP error like a unary call's. Once streaming, an error is the last event
  (`event: error`, or an `{"error": …}` line), with the body a unary error would have.
- The client leaving cancels the call; nothing is buffered, so a client that reads slowly
  holds back the call's reads, and gRPC's flow control the service.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from facade import errors
from facade.accept import prefers
from facade.transcoding import Binding, dumps

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
_LINE_BREAK = re.compile(r"[\r\n\0]")  # would end an SSE field early, or (NUL) void the id


@dataclass(frozen=True, slots=True)
class Framing:
    media_type: str
    event: Callable[[Binding, Message], bytes]  # one event (a message, or an element of its events)
    error: Callable[[bytes], bytes]  # from a unary error's JSON body

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """A new list each time: middleware adds to a response's headers in place."""
        return [(b"content-type", self.media_type.encode()), *_STREAM_HEADERS]


# no-cache and X-Accel-Buffering keep caches and proxies (nginx) from holding events back.
_STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"), (b"vary", b"Accept"))


def _sse_event(binding: Binding, event: Message) -> bytes:
    assert binding.stream is not None
    head = []
    event_id = binding.stream.id_of(event)
    if event_id is not None and not _LINE_BREAK.search(event_id):
        head.append(f"id: {event_id}\n")
    if event_type := binding.stream.type_of(event):
        head.append(f"event: {event_type}\n")
    return "".join(head).encode() + b"data: " + dumps(binding.response(event)) + b"\n\n"


def _ndjson_line(binding: Binding, event: Message) -> bytes:
    return b'{"result":' + dumps(binding.response(event)) + b"}\n"


SERVER_SENT_EVENTS = Framing(SSE, _sse_event, lambda body: b"event: error\ndata: " + body + b"\n\n")
JSON_LINES = Framing(NDJSON, _ndjson_line, lambda body: b'{"error":' + body + b"}\n")


def framing_for(accept: str | None) -> Framing:
    return SERVER_SENT_EVENTS if prefers(accept, SSE, NDJSON) else JSON_LINES


async def relay(
    call: grpc.aio.UnaryStreamCall[Any, Message],
    binding: Binding,
    framing: Framing,
    refusal: Callable[[grpc.aio.AioRpcError], Response],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> grpc.StatusCode:
    """Sends the messages of `call` as `framing` says until it ends, fails or the client leaves;
    `refusal` is the HTTP answer to a failure. Returns how the call ended."""
    forwarding = _Forwarding(call, binding, framing, refusal, scope, receive, send)
    forwarded = asyncio.create_task(forwarding.run())
    disconnected = asyncio.create_task(_disconnect(receive))
    try:
        await asyncio.wait((forwarded, disconnected), return_when=asyncio.FIRST_COMPLETED)
        if forwarded.done():
            return forwarded.result()
        forwarded.cancel()  # cancels the call: grpc.aio cancels a call whose read is cancelled
        await asyncio.wait((forwarded,))
        if not forwarding.started:  # unheard, but the access log and metrics say 499, not 500
            gone = errors.error_response(
                grpc.StatusCode.CANCELLED, "the client went away", reason=errors.CLIENT_DISCONNECTED
            )
            await gone(scope, receive, send)
        return grpc.StatusCode.CANCELLED
    finally:
        forwarded.cancel()
        disconnected.cancel()
        call.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Forwarding:
    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, Message],
        binding: Binding,
        framing: Framing,
        refusal: Callable[[grpc.aio.AioRpcError], Response],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self._call = call
        self._binding = binding
        self._framing = framing
        self._refusal = refusal
        self._scope = scope
        self._receive = receive
        self._send = send
        self.started = False  # the response head is sent

    async def run(self) -> grpc.StatusCode:
        stream = self._binding.stream
        assert stream is not None
        try:
            while isinstance(message := await self._call.read(), Message):  # until grpc.aio.EOF
                if events := stream.events_of(message):
                    await self._write(b"".join(self._framing.event(self._binding, e) for e in events))
        except grpc.aio.AioRpcError as exc:
            answer = self._refusal(exc)
            if self.started:
                await self._write(self._framing.error(bytes(answer.body)), more=False)
            else:
                await answer(self._scope, self._receive, self._send)
            return exc.code()
        await self._write(b"", more=False)
        return grpc.StatusCode.OK

    async def _write(self, body: bytes, *, more: bool = True) -> None:
        if not self.started:
            self.started = True
            await self._send(
                {
                    "type": "http.response.start",
                    "status": self._binding.status,
                    "headers": self._framing.headers,
                }
            )
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
