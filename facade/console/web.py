"""What every console page shares: its templates (loaded once), the caller's session, the
security headers, and how a refused call or form becomes a page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.console.calls import ApiError, Caller, Refused, stubs
from facade.console.forms import Form, FormRejected, read_form
from facade.console.session import CSRF_FIELD, Session, Sessions
from mesh.config import Settings

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
SIGN_IN = "/console/sign-in"
# Scripts, styles and connections from the console's own origin only, and nothing inline.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
)

Page = Callable[[Request, Session, Caller], Awaitable[Response]]
Action = Callable[[Request, Session, Caller, Form], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """Adds the console's headers to each of its responses; pages (not the static files) are
    never stored, since they hold the user's data and a form's CSRF token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/console/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS:
                    headers[name.decode()] = value.decode()
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Console:
    """Turns page and form handlers into endpoints: the session resolved (and refreshed), the
    sign-in asked for, the CSRF token checked, refusals rendered, the cookies stored."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = Sessions(settings)
        self.templates = Jinja2Templates(directory=TEMPLATES)
        self.templates.env.filters["when"] = when
        self.templates.env.filters["signed"] = signed
        self.templates.env.filters["epoch"] = epoch
        self.templates.env.globals["csrf_field"] = CSRF_FIELD

    def render(
        self,
        request: Request,
        session: Session,
        name: str,
        context: Mapping[str, Any],
        status_code: int = 200,
    ) -> Response:
        return self.templates.TemplateResponse(
            request, name, {"session": session, **context}, status_code=status_code
        )

    def page(self, handler: Page, *, signed_in: bool = True) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            return await self._serve(request, handler, signed_in=signed_in)

        return endpoint

    def action(self, handler: Action, *, signed_in: bool = True) -> Endpoint:
        """A form's endpoint: refused with 403 unless the form carries the session's CSRF token."""

        async def checked(request: Request, session: Session, call: Caller) -> Response:
            try:
                form = await read_form(request, self.settings.facade_max_body_bytes)
            except FormRejected as rejected:
                return self.problem(
                    request, session, ApiError(rejected.status, rejected.message, "INVALID_FORM")
                )
            if not self.sessions.csrf_valid(session, form.text(CSRF_FIELD)):
                message = (
                    "This form has expired or did not come from this console. Reload the page and try again."
                )
                return self.problem(request, session, ApiError(403, message, "CSRF_TOKEN_INVALID"))
            return await handler(request, session, call, form)

        return self.page(checked, signed_in=signed_in)

    def problem(self, request: Request, session: Session, error: ApiError) -> Response:
        return self.render(request, session, "problem.html", {"error": error}, status_code=error.status)

    async def _serve(self, request: Request, handler: Page, *, signed_in: bool) -> Response:
        try:
            session = await self.sessions.resolve(request, stubs(request).auth)
        except grpc.aio.AioRpcError as error:
            session = self.sessions.fresh()
            return self.problem(request, session, ApiError.of(error, "auth"))
        if signed_in and not session.signed_in:
            return self.sessions.store(request, session, RedirectResponse(SIGN_IN, status_code=303))
        call = Caller(
            [*session.metadata(), ("x-request-id", request.scope["invmesh.request_id"])],
            self.settings.facade_timeout_seconds,
        )
        try:
            response = await handler(request, session, call)
        except Refused as refused:
            if refused.error.status == 401:  # the token was revoked (a password changed): sign in again
                session.cleared = True
                response = RedirectResponse(SIGN_IN, status_code=303)
            else:
                response = self.problem(request, session, refused.error)
        return self.sessions.store(request, session, response)


def when(stamp: Timestamp) -> str:
    """A timestamp as people read it, in UTC; empty when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def epoch(seconds: float) -> str:
    """Unix seconds as `when` shows a timestamp."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def signed(number: int) -> str:
    """A change with its sign: `+5`, `±0`, or 3 after a true minus sign (U+2212), not a hyphen."""
    return f"+{number}" if number > 0 else f"\u2212{-number}" if number < 0 else "\u00b10"
