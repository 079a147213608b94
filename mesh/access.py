"""Roles, and the least role each method declares in the contract (`invmesh.api.v1.access`).

User roles rank viewer < staff < admin; a caller holds the rank of its highest role. The
numbers of `invmesh.api.v1.Role` are those ranks, so a method's rule compares directly.
The service role stands apart: only tokens from AuthService.IssueServiceToken carry it, and
it meets only methods that ask for it: as their role (which then admits nothing else), or
with `service: true` beside a user role (a checkout service reserving stock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from invmesh.api.v1 import access_pb2
from mesh.errors import InvalidArgument, PermissionDenied
from mesh.options import ACCESS

if TYPE_CHECKING:
    from mesh.tokens import Identity

# Health and reflection answer anyone: load balancers and grpcurl carry no token.
ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
RANKS = {"viewer": access_pb2.ROLE_VIEWER, "staff": access_pb2.ROLE_STAFF, "admin": access_pb2.ROLE_ADMIN}
SERVICE = "service"
_ANY_TOKEN = access_pb2.Access()


def role_named(name: str) -> str:
    """`name` if it is a role; INVALID_ARGUMENT saying which roles exist otherwise."""
    if name not in RANKS:
        raise InvalidArgument(f"role must be one of {', '.join(RANKS)}", field="role", reason="INVALID_ROLE")
    return name


def role_name(role: access_pb2.Role) -> str:
    """`staff` for ROLE_STAFF: the name tokens and clients use."""
    return access_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def declared_access(method: MethodDescriptor) -> access_pb2.Access:
    """The method's access option; an empty one (any valid token) if it declares none."""
    options = method.GetOptions()
    return options.Extensions[ACCESS] if options.HasExtension(ACCESS) else _ANY_TOKEN


def declared_role(method: MethodDescriptor) -> access_pb2.Role:
    return declared_access(method).role


def _method(method_path: str) -> MethodDescriptor | None:
    try:
        return descriptor_pool.Default().FindMethodByName(method_path.lstrip("/").replace("/", "."))
    except KeyError:
        return None


def required_access(method_path: str) -> access_pb2.Access:
    """The access rule the method at `/package.Service/Method` declares; any caller if none or unknown."""
    method = _method(method_path)
    return declared_access(method) if method is not None else _ANY_TOKEN


def required_role(method_path: str) -> access_pb2.Role:
    """The role the method at `/package.Service/Method` declares; 0 (any caller) if none or unknown."""
    method = _method(method_path)
    return declared_role(method) if method is not None else access_pb2.ROLE_UNSPECIFIED


def is_public(method_path: str) -> bool:
    """Whether `/package.Service/Method` answers callers with no token: health and reflection,
    and the methods the contract declares `public`. An unknown method is not."""
    if method_path.startswith(ALWAYS_PUBLIC_PREFIXES):
        return True
    method = _method(method_path)
    return method is not None and declared_access(method).public


def holds_role(caller: Identity, needed: access_pb2.Role) -> bool:
    """Whether one of the caller's roles ranks at least `needed` (or is the service role, if asked)."""
    if needed == access_pb2.ROLE_SERVICE:
        return SERVICE in caller.roles
    return not needed or max((RANKS.get(role, 0) for role in caller.roles), default=0) >= needed


def require_access(caller: Identity, rule: access_pb2.Access) -> None:
    """PERMISSION_DENIED unless the caller holds the rule's role, or is a service the rule admits."""
    if rule.service and SERVICE in caller.roles:
        return
    require_role(caller, rule.role)


def require_role(caller: Identity, needed: access_pb2.Role) -> None:
    """PERMISSION_DENIED unless one of the caller's roles ranks at least `needed`."""
    if not holds_role(caller, needed):
        name = role_name(needed)
        raise PermissionDenied(
            f"this needs the {name} role" + ("" if name == SERVICE else "; ask an admin to grant it"),
            reason="ROLE_REQUIRED",
            metadata={"role": name},
        )
