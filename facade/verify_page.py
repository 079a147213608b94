"""The page a browser gets for the verification link of the mail (`GET /users/verify?token=…`).

A mail client opens the link in a browser, which asks for HTML; it gets a small page saying
the address is confirmed, or why not. The page is only a rendering of the JSON answer of the
same call (AuthService.VerifyEmail, through the usual route), so it holds none of its rules.
Everything is inline, allowed by a Content-Security-Policy that permits nothing else; the
page sends no referrer (its URL holds the token) and is never cached.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from typing import Any

from starlette.responses import Response

from facade.accept import prefers
from invmesh.auth.v1 import auth_service_pb2

METHOD = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].methods_by_name["VerifyEmail"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;"
    "line-height:1.5;color:#1f2328}h1{font-size:1.5rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_HEADERS = {
    "content-security-policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "vary": "Accept",
}
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p>{text}</p>
{sign_in}</main>
</body>
</html>
"""

# Where to go once the address is confirmed: the console's sign-in, on the same origin.
_SIGN_IN = '<p><a href="/console/sign-in">Sign in to the console</a></p>\n'


def wants_html(accept: str | None) -> bool:
    """Whether the client prefers HTML to JSON, as a browser does; `*/*` alone means JSON."""
    return prefers(accept, "text/html", "application/json")


def render(answer: Response, accept: str | None) -> Response:
    """The page for the facade's JSON `answer` to the call, with the same status, if the client
    prefers HTML; else `answer`."""
    if not wants_html(accept):
        answer.headers["vary"] = "Accept"
        return answer
    body = json.loads(bytes(answer.body))  # a JSON object: the response message, or a Status
    if answer.status_code < 300:
        title, text, signs_in = _confirmed(body)
    else:
        title, text, signs_in = _refused(answer.status_code, body)
    page = _PAGE.format(
        title=html.escape(title), text=html.escape(text), style=_STYLE, sign_in=_SIGN_IN if signs_in else ""
    )
    headers = dict(_HEADERS)
    for name in ("retry-after", "www-authenticate"):
        if name in answer.headers:
            headers[name] = answer.headers[name]
    return Response(
        page, status_code=answer.status_code, headers=headers, media_type="text/html; charset=utf-8"
    )


def _confirmed(body: dict[str, Any]) -> tuple[str, str, bool]:
    """The page's title and text, and whether it offers to sign in."""
    user = body.get("user")
    if user is None:  # `?email=`: a new mail was asked for
        return (
            "Check your mail",
            "If this address has an account, a new verification mail is on its way.",
            False,
        )
    return "Address confirmed", f"Thank you: {user['email']} is confirmed. You can sign in now.", True


def _refused(status: int, body: dict[str, Any]) -> tuple[str, str, bool]:
    if "INVALID_VERIFICATION_TOKEN" in {detail.get("reason") for detail in body["details"]}:
        return (
            "This link no longer works",
            "The verification link is unknown, expired or already used. If you confirmed your address "
            "already, you can sign in; otherwise ask for a new verification mail.",
            True,
        )
    if status == 429:
        return "Too many attempts", "Please open the link again in a few minutes.", False
    if status in (503, 504):
        return (
            "The service is unavailable",
            "Your address could not be confirmed just now. Please open the link again in a few minutes.",
            False,
        )
    if status < 500:
        return (
            "This link is incomplete",
            "The link is incomplete or altered. Open it exactly as the mail gives it.",
            False,
        )
    return "Something went wrong", "Your address could not be confirmed. Please try again later.", False
