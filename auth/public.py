"""The auth methods any caller may call, with no token: the rest need one. Apart from the
service, so the facade can document them without loading it."""

from __future__ import annotations

from invmesh.auth.v1 import auth_service_pb2

_SERVICE = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
PUBLIC_METHODS = frozenset(
    f"/{_SERVICE}/{method}"
    for method in ("Register", "Login", "VerifyEmail", "RefreshToken", "IssueServiceToken", "GetJwks")
)
