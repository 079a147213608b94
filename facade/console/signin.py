"""Signing in (AuthService.Login, with the browser's address for auth's abuse limits, as the
REST route passes it) and out."""

from __future__ import annotations

import logging

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from facade.console.calls import ApiError, Caller, Refused, stubs
from facade.console.forms import Form
from facade.console.session import REFRESH_COOKIE, Session, Tokens
from facade.console.web import Console
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from mesh import forwarding

log = logging.getLogger(__name__)

HOME = "/console/products"


def routes(console: Console, forwarder_secret: bytes | None) -> list[Route]:
    async def home(request: Request, session: Session, call: Caller) -> Response:
        return RedirectResponse(HOME if session.signed_in else "/console/sign-in", status_code=303)

    async def sign_in_page(request: Request, session: Session, call: Caller) -> Response:
        if session.signed_in:
            return RedirectResponse(HOME, status_code=303)
        return console.render(request, session, "sign_in.html", {"email": "", "error": None})

    async def sign_in(request: Request, session: Session, call: Caller, form: Form) -> Response:
        email = form.text("email")
        metadata = [("x-request-id", request.scope["invmesh.request_id"])]
        if request.client is not None:
            metadata.extend(forwarding.metadata(request.client.host, forwarder_secret))
        try:
            reply = await stubs(request).auth.Login(
                auth_pb.LoginRequest(email=email, password=form.values.get("password", "")),
                metadata=metadata,
                timeout=console.settings.facade_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            refusal = ApiError.of(error, "auth")
            context = {"email": email, "error": refusal}
            return console.render(request, session, "sign_in.html", context, status_code=refusal.status)
        console.sessions.sign_in(session, Tokens(reply.access_token, reply.refresh_token, reply.expires_in))
        return RedirectResponse(HOME, status_code=303)

    async def sign_out(request: Request, session: Session, call: Caller, form: Form) -> Response:
        # The cookie may hold a token this request's own refresh just spent: Logout revokes the
        # whole sign-in from any of its tokens.
        if refresh_token := request.cookies.get(REFRESH_COOKIE, ""):
            try:
                await call(stubs(request).auth.Logout, auth_pb.LogoutRequest(refresh_token=refresh_token))
            except Refused as refusal:  # signed out of this browser all the same
                log.warning("could not revoke the sign-in at auth: %s", refusal.error.message)
        console.sessions.sign_out(session)
        return RedirectResponse("/console/sign-in", status_code=303)

    return [
        Route("/", console.page(home, signed_in=False), methods=["GET"]),
        Route("/sign-in", console.page(sign_in_page, signed_in=False), methods=["GET"]),
        Route("/sign-in", console.action(sign_in, signed_in=False), methods=["POST"]),
        Route("/sign-out", console.action(sign_out, signed_in=False), methods=["POST"]),
    ]
