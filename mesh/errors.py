"""Domain errors and their gRPC status, defined once.

Domain code raises these; the server interceptor turns them into a `google.rpc.Status`
whose details carry an `ErrorInfo` (a machine-readable `reason`, AIP-193) and, for bad
fields, a `BadRequest` with one field violation each. Validation collects every violation
of a request (`Violations`) and refuses them together, so a client fixes them in one go.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "invmesh"
# The ErrorInfo reason of a refusal naming fields wrong in different ways; each violation
# carries its own.
INVALID_FIELDS = "INVALID_FIELDS"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path, what is wrong (naming the field), and a reason."""

    field: str
    description: str
    reason: str


class DomainError(Exception):
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: dt.timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code.name
        self.violations = [FieldViolation(field, message, self.reason)] if field else []
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after  # sent as a RetryInfo: the facade's Retry-After

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details = [_pack(info)]
        if self.violations:
            violations = [
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in self.violations
            ]
            details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
        if self.retry_after is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromTimedelta(max(self.retry_after, dt.timedelta(0)))
            details.append(_pack(retry))
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        return rpc_status.to_status(status)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def of(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """One refusal naming every violation: one alone keeps its own message and reason;
        several are joined into the message, under their reason if they share one and
        INVALID_FIELDS if not."""
        if len(violations) == 1:
            (only,) = violations
            return cls(only.description, field=only.field, reason=only.reason)
        reasons = {v.reason for v in violations}
        reason = reasons.pop() if len(reasons) == 1 else INVALID_FIELDS
        error = cls("; ".join(v.description for v in violations), reason=reason)
        error.violations = list(violations)
        return error


class Violations:
    """A request's field violations, collected so that one INVALID_ARGUMENT names them all."""

    def __init__(self) -> None:
        self._found: list[FieldViolation] = []

    def add(self, field: str, description: str, reason: str) -> None:
        self._found.append(FieldViolation(field, description, reason))

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Keeps the field violations of an InvalidArgument the block raises (a shared check
        such as a page size's), instead of letting it end the validation."""
        try:
            yield
        except InvalidArgument as error:
            if not error.violations:
                raise
            self._found.extend(error.violations)

    def check(self) -> None:
        """Raises one INVALID_ARGUMENT for everything collected, if anything was."""
        if self._found:
            raise InvalidArgument.of(self._found)


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class DatabaseUnavailable(Unavailable):
    """The service's database cannot be reached, or dropped the connection; retrying later may work."""

    def __init__(self) -> None:
        super().__init__("the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE")


class TransactionConflict(Aborted):
    """The database chose this transaction as the loser of a deadlock, lock wait or serialization
    conflict; the change was rolled back whole, so running it again is safe."""

    def __init__(self) -> None:
        super().__init__(
            "the change collided with a concurrent one and was not applied; retry it",
            reason="TRANSACTION_CONFLICT",
        )


def internal_status() -> grpc.Status:
    """What a caller sees of an unexpected failure: no detail that could leak internals."""
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error"))


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status in the error's trailers, if any. grpc_status reads only what an
    AioRpcError has too (code, details, trailing metadata); its stubs take a grpc.Call."""
    status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    return status


def from_peer(error: grpc.aio.AioRpcError, outage: DomainError) -> DomainError:
    """What to tell our caller when another service refused a call made on its behalf.

    A refusal of the caller's own token or rights is passed on as it was (with its reason);
    anything else means the other service could not do its part: `outage`.
    """
    passed_on = {
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    }
    kind = passed_on.get(error.code())
    if kind is None:
        return outage
    reason = None
    status = status_of(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    return kind(error.details() or "the access token was refused", reason=reason)


def describe(exc: BaseException) -> str:
    """One line for a log or an outbox row: a gRPC failure's code and details, else the error."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
