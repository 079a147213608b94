"""The change feed of one product for its page: `GET /console/products/{id}/feed`, the
Server-Sent Events of GET /inventory/movements:watch?product_id=…, authenticated by the
console's cookie.

The REST route reads only the Authorization header, which an EventSource cannot send; cookies
are not made to authenticate REST routes, which would then need CSRF defences of their own.
This route is a GET that changes nothing, under /console where the cookies go, and relays the
same call with the same framing (facade.streaming): the request is built by the REST route's
binding (so `Last-Event-ID` resumes it, checked against the cursor's limits), and the events
are the REST route's. The product page names its ledger's cursor (`?after=`), so its feed
starts right after what the page shows."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlencode

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from facade import errors, streaming
from facade.console.calls import Caller, stubs
from facade.console.session import Session
from facade.console.web import Console
from facade.transcoding import BadRequest, Binding
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb


class _Relayed(Response):
    """The events of a WatchMovements call, with the headers set on this response (the
    cookies of a refreshed session) added to the stream's own."""

    def __init__(
        self,
        request: Request,
        binding: Binding,
        message: inventory_pb.WatchMovementsRequest,
        metadata: list[tuple[str, str]],
    ) -> None:
        super().__init__()
        self._request = request
        self._binding = binding
        self._message = message
        self._metadata = metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra = [(name, value) for name, value in self.raw_headers if name == b"set-cookie"]

        async def send_with_cookies(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        # relay reads any message type; its parameter is invariant in it.
        call = cast(
            grpc.aio.UnaryStreamCall[Any, Message],
            stubs(self._request).inventory.WatchMovements(self._message, metadata=self._metadata),
        )
        await streaming.relay(
            call,
            self._binding,
            streaming.SERVER_SENT_EVENTS,
            lambda exc: errors.from_rpc_error(exc, "inventory"),
            scope,
            receive,
            send_with_cookies,
        )


def routes(console: Console, watch: Binding) -> list[Route]:
    async def feed(request: Request, session: Session, call: Caller) -> Response:
        # `after`, the cursor of the page's ledger, starts the feed right after what the page shows.
        after = request.query_params.get("after", "")
        query = urlencode({"product_id": request.path_params["product_id"], "after": after}).encode()
        try:
            message = watch.request({}, query, b"", request.headers.get("last-event-id"))
        except BadRequest as exc:
            return errors.bad_request(str(exc), reason=exc.reason, field=exc.field)
        assert isinstance(message, inventory_pb.WatchMovementsRequest)
        metadata = [*session.metadata(), ("x-request-id", request.scope["invmesh.request_id"])]
        return _Relayed(request, watch, message, metadata)

    return [Route("/products/{product_id}/feed", console.page(feed), methods=["GET"])]
