"""Server interceptors: the cross-cutting work every RPC gets, written once.

`RequestInterceptor` (outermost) binds the request id, turns domain errors into statuses,
logs and counts (`grpc_server_*`) one line per call with the status the client gets, and
lets a stopping server drain the calls in flight;
`AuthInterceptor` verifies the bearer token of every method that is not public. Both wrap
the unary-unary and server-streaming handlers once per method and cache them, so a call pays
only for the wrapper itself. A stream is logged and counted once, when it ends; a stopping
server ends its streams at once with UNAVAILABLE (they never finish by themselves), and a
stream ends with UNAUTHENTICATED once its access token has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from sqlalchemy.exc import SQLAlchemyError

from invmesh.api.v1 import access_pb2
from mesh import access, context
from mesh.authorization import bearer_token
from mesh.db import translate
from mesh.errors import DomainError, Unauthenticated, internal_status
from mesh.metrics import REFUSALS, SERVER, MethodMetrics
from mesh.tokens import Identity, TokenVerifier

log = logging.getLogger("mesh.rpc")
# A client whose deadline passes cancels the call, and the server, whose own clock for that
# deadline started when the call arrived, can see the cancel a little before it: a cancel that
# comes this close to the deadline is the deadline.
DEADLINE_SLACK_SECONDS = 0.1

_SETTLE_SECONDS = 0.01

# A unary handler neither reads nor writes the stream, so its context's message types stay open.
ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only
Behavior = Callable[[Any, ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, ServicerContext], AsyncIterator[Any]]


def metadata_value(ctx: ServicerContext, key: str) -> str | None:
    for name, value in ctx.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


class _Wrapper(grpc.aio.ServerInterceptor):
    """Wraps each unary-unary and unary-stream handler once; the others pass through `_other`."""

    def __init__(self) -> None:
        self._cache: dict[str, Handler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = details.method
        if method not in self._cache:
            handler = await continuation(details)
            if handler is not None and handler.unary_unary is not None:
                handler = grpc.unary_unary_rpc_method_handler(
                    # types-grpcio types the behavior as a synchronous one, even on grpc.aio
                    self._wrap(method, cast(Behavior, handler.unary_unary)),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            elif handler is not None and handler.unary_stream is not None:
                behavior = handler.unary_stream
                # grpc.aio calls a stream handler by its kind: one that yields its messages, or a
                # coroutine that writes them (grpc's health Watch).
                wrapped = (
                    self._wrap_stream(method, cast(StreamBehavior, behavior))
                    if inspect.isasyncgenfunction(behavior)
                    else self._wrap_writer(method, cast(Behavior, behavior))
                )
                handler = grpc.unary_stream_rpc_method_handler(
                    wrapped,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            else:
                handler = self._other(method, handler)
            self._cache[method] = handler
        return self._cache[method]

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        raise NotImplementedError

    def _wrap_writer(self, method: str, behavior: Behavior) -> Behavior:
        """A stream handler that writes its messages; as `_wrap` unless a subclass says more."""
        return self._wrap(method, behavior)

    def _other(self, method: str, handler: Handler | None) -> Handler | None:
        return handler


class RequestInterceptor(_Wrapper):
    """Binds the request id (taken from `x-request-id` or made), maps errors, logs the call and,
    with `metrics`, counts and times it."""

    def __init__(self, *, metrics: bool = False) -> None:
        super().__init__()
        self._metrics = metrics
        self._running: set[asyncio.Task[Any]] = set()  # the handlers, to cancel the late ones
        # The calls whose handlers started and for which gRPC has not sent the status yet: a
        # handler that has returned has not necessarily answered, and a server stopped in between
        # cuts it with CANCELLED. `_all_answered` is set when that count falls to 0 in a drain.
        self._unanswered = 0
        self._all_answered: asyncio.Event | None = None
        self._streams: set[asyncio.Task[Any]] = set()  # the server-streaming handlers among them
        self._cut: set[asyncio.Task[Any]] = set()  # the handlers the server cancelled as it stopped

    async def drain(self, grace: float) -> None:
        """Gives the calls open now, and any that the server accepted just before it stopped
        taking new ones, `grace` seconds to finish and answer; then fails the rest with
        UNAVAILABLE, which a client may send again (reads by the retry policy, writes with their
        request_id), and waits (a second at most) for those answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._all_answered = asyncio.Event()
        # A stream never ends by itself: its client resumes elsewhere, from its last cursor.
        for task in self._streams:
            self._cut.add(task)
            task.cancel()
        while (left := deadline - loop.time()) > 0:
            if self._unanswered:
                await self._answers(left)
                continue
            # A call accepted a moment before the stop may not have reached its handler yet.
            await asyncio.sleep(min(_SETTLE_SECONDS, left))
            if not self._unanswered:
                break
        for task in self._running:
            self._cut.add(task)
            task.cancel()
        if self._unanswered:
            await self._answers(1)

    async def _answers(self, seconds: float) -> None:
        """Waits until every call open has answered, `seconds` at most."""
        assert self._all_answered is not None
        self._all_answered.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._all_answered.wait()

    def _answered(self, _: ServicerContext) -> None:
        self._unanswered -= 1
        if not self._unanswered and self._all_answered is not None:
            self._all_answered.set()

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        counted = MethodMetrics(SERVER, method) if self._metrics else None

        async def call(request: Any, ctx: ServicerContext) -> Any:
            async with _Handling(self, method, ctx, counted, streaming=False):
                return await behavior(request, ctx)

        return call

    def _wrap_writer(self, method: str, behavior: Behavior) -> Behavior:
        counted = MethodMetrics(SERVER, method) if self._metrics else None

        async def call(request: Any, ctx: ServicerContext) -> None:
            async with _Handling(self, method, ctx, counted, streaming=True):
                await behavior(request, ctx)

        return call

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        counted = MethodMetrics(SERVER, method) if self._metrics else None

        async def call(request: Any, ctx: ServicerContext) -> AsyncIterator[Any]:
            async with _Handling(self, method, ctx, counted, streaming=True):
                async for response in behavior(request, ctx):
                    yield response

        return call


class _Handling:
    """One call of a `RequestInterceptor`, from its handler's start to its answer: see the class.
    A class rather than a generator-based context manager: every call pays for it."""

    __slots__ = ("_counted", "_ctx", "_method", "_owner", "_started", "_streaming", "_task")

    def __init__(
        self,
        owner: RequestInterceptor,
        method: str,
        ctx: ServicerContext,
        counted: MethodMetrics | None,
        *,
        streaming: bool,
    ) -> None:
        self._owner = owner
        self._method = method
        self._ctx = ctx
        self._counted = counted
        self._streaming = streaming

    async def __aenter__(self) -> None:
        owner, ctx = self._owner, self._ctx
        if self._counted is not None:
            self._counted.started()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        owner._running.add(task)
        if self._streaming:
            owner._streams.add(task)
        owner._unanswered += 1
        # types-grpcio declares the callback type as a class rather than a Protocol
        ctx.add_done_callback(owner._answered)  # type: ignore[arg-type]
        context.request_id.set(context.request_id_or_new(metadata_value(ctx, "x-request-id")))
        remaining = ctx.time_remaining()
        context.deadline.set(time.monotonic() + remaining if remaining is not None else None)
        self._started = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: object
    ) -> None:
        owner, ctx, task = self._owner, self._ctx, self._task
        code = grpc.StatusCode.OK
        try:
            if error is None:
                return
            if isinstance(error, asyncio.CancelledError):
                if task not in owner._cut:  # the client cancelled, or its deadline passed
                    remaining = ctx.time_remaining()
                    expired = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
                    code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                    return
                code = grpc.StatusCode.UNAVAILABLE
                await ctx.abort(code, "the server is shutting down; try again")
            if isinstance(error, (grpc.aio.AbortError, grpc.aio.UsageError)):  # ctx.abort() in a handler
                code = ctx.code() or grpc.StatusCode.UNKNOWN
                return
            if not isinstance(error, Exception):  # KeyboardInterrupt, GeneratorExit: not a call's
                return
            # Database calls translate their own errors; this catches any that ran outside them.
            translated = translate(error) if isinstance(error, SQLAlchemyError) else error
            if isinstance(translated, DomainError):
                code = translated.code
                REFUSALS.labels(translated.reason).inc()
                status = translated.to_status()
            else:
                code = grpc.StatusCode.INTERNAL
                log.error("unhandled error in %s", self._method, exc_info=error)
                status = internal_status()
            await ctx.abort(status.code, status.details, status.trailing_metadata)
        finally:
            owner._running.discard(task)
            owner._streams.discard(task)
            owner._cut.discard(task)
            seconds = time.perf_counter() - self._started
            if self._counted is not None:
                self._counted.handled(code, seconds)
            log.info("rpc %s %s", self._method, code.name, extra={"ms": round(seconds * 1000, 2)})


class AuthInterceptor(_Wrapper):
    """Every method the contract does not declare public needs `authorization: Bearer <access
    token>`, from a caller holding the role the method declares (`mesh.access`).

    The verified identity and the raw token go into contextvars, for the handler and for
    the calls it makes to other services.
    """

    def __init__(self, verifier: TokenVerifier, is_public: Callable[[str], bool] = access.is_public) -> None:
        super().__init__()
        self._verifier = verifier
        self._is_public = is_public

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        if self._is_public(method):
            return behavior
        rule = access.required_access(method)

        async def call(request: Any, ctx: ServicerContext) -> Any:
            await self._admit(ctx, rule)
            return await behavior(request, ctx)

        return call

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        if self._is_public(method):
            return behavior
        rule = access.required_access(method)

        async def call(request: Any, ctx: ServicerContext) -> AsyncIterator[Any]:
            caller = await self._admit(ctx, rule)
            async for response in behavior(request, ctx):
                yield response
                # A stream outlives its token: it ends at the first message after the token expires,
                # and the client resumes with a fresh one.
                if self._verifier.expired(caller):
                    raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED")

        return call

    async def _admit(self, ctx: ServicerContext, rule: access_pb2.Access) -> Identity:
        token = bearer_token(metadata_value(ctx, "authorization") or "")
        caller = await self._verifier.verify(token)
        access.require_access(caller, rule)
        context.identity.set(caller)
        context.access_token.set(token)
        return caller

    def _other(self, method: str, handler: Handler | None) -> Handler | None:
        if handler is None or self._is_public(method):
            return handler
        # No client-streaming RPC of ours is authenticated yet: refuse rather than let one through.
        return grpc.unary_unary_rpc_method_handler(_refuse_streaming)


async def _refuse_streaming(request: Any, ctx: ServicerContext) -> None:
    await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "client-streaming calls are not authenticated here")
