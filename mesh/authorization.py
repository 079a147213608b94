"""The `authorization` of a call, read the same way by the services' AuthInterceptor and by
the facade (which must not load the token libraries of mesh.tokens)."""

from __future__ import annotations

from mesh.errors import Unauthenticated


def bearer_token(authorization: str) -> str:
    """The token of an `authorization` value `Bearer <token>` (the scheme in any case); else
    Unauthenticated: MISSING_TOKEN for no token, UNSUPPORTED_AUTH_SCHEME for another scheme."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme and scheme.lower() != "bearer":
        # Not echoed: a "scheme" may be a bare token sent without one.
        raise Unauthenticated(
            "unsupported authorization scheme; use Authorization: Bearer <token>",
            reason="UNSUPPORTED_AUTH_SCHEME",
        )
    if not token.strip():
        raise Unauthenticated(
            "this call needs an access token: send `authorization: Bearer <token>` metadata",
            reason="MISSING_TOKEN",
        )
    return token.strip()
