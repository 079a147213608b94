"""Per-call context, carried by contextvars from the server interceptors to handlers,
log lines and outgoing calls."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING

from mesh.errors import PermissionDenied

if TYPE_CHECKING:
    from mesh.tokens import Identity

request_id: ContextVar[str] = ContextVar("request_id", default="-")
# The verified caller, and the raw token that proved it (forwarded on outgoing calls).
identity: ContextVar[Identity | None] = ContextVar("identity", default=None)
access_token: ContextVar[str | None] = ContextVar("access_token", default=None)
# When the current call's own deadline passes (time.monotonic()), if its caller set one.
deadline: ContextVar[float | None] = ContextVar("deadline", default=None)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_or_new(incoming: str | None) -> str:
    """The caller's request id if it is a sane one (it reaches our logs), else a new one."""
    return incoming if incoming and _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def require_verified_email() -> Identity:
    """The caller, if its email is verified: writes need that; PERMISSION_DENIED otherwise."""
    caller = current_identity()
    if not caller.email_verified:
        raise PermissionDenied(
            "confirm your email address first: changes need a verified account", reason="EMAIL_NOT_VERIFIED"
        )
    return caller


def current_identity() -> Identity:
    """The verified caller of an authenticated RPC."""
    caller = identity.get()
    if caller is None:
        raise LookupError("no verified caller: this RPC is not behind the token check")
    return caller
