"""Every error the facade sends has one JSON shape, a `google.rpc.Status`:

    {"code": 5, "message": "product 42 does not exist", "details": [{"@type": ".../google.rpc.ErrorInfo",
     "reason": "PRODUCT_NOT_FOUND", "domain": "invmesh", "metadata": {}}]}

with the HTTP status of google/rpc/code.proto's mapping. Details are printed as resources
are: snake_case names, fields without presence included. Every error carries an `ErrorInfo`
(domain "invmesh"): the backends' own, or one of the reasons below for what the facade
refuses itself; a refusal about one field also carries a `BadRequest` field violation.
A backend's own message and details pass through only when the backend attached a
`google.rpc.Status` (our services always do); anything else (a transport failure, an
INTERNAL) gets a fixed message, so no internal detail ever reaches a client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grpc
import orjson
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from starlette.requests import Request
from starlette.responses import Response

from mesh.errors import ERROR_DOMAIN
from mesh.messages import descriptor

# The reasons of what the facade refuses itself (the backends' reasons pass through).
INVALID_JSON = "INVALID_JSON"  # the body is not JSON, or nests too deeply
INVALID_BODY = "INVALID_BODY"  # JSON, but not the shape the route takes; a body where none goes, or none
UNKNOWN_FIELD = "UNKNOWN_FIELD"  # a body field or query parameter the request message does not have
INVALID_VALUE = "INVALID_VALUE"  # a value of the wrong type, or out of range (body, query or path)
INVALID_QUERY = "INVALID_QUERY"  # a malformed query string, or a parameter the query cannot set
INVALID_PATH = "INVALID_PATH"  # a malformed percent-escape in the path, or not UTF-8 once decoded
INVALID_TIMEOUT = "INVALID_TIMEOUT"  # a Grpc-Timeout header gRPC does not accept
INVALID_CONTENT_LENGTH = "INVALID_CONTENT_LENGTH"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"  # a body declared as something JSON cannot be
BODY_TOO_LARGE = "BODY_TOO_LARGE"
HEADER_TOO_LARGE = "HEADER_TOO_LARGE"
HEAD_TIMEOUT = "HEAD_TIMEOUT"  # the request head did not arrive in time
TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
DUPLICATE_KEY = "DUPLICATE_KEY"  # a JSON object names a key twice
CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"
INTERNAL = "INTERNAL"  # a failure whose detail is not disclosed
NO_ROUTE = "NO_ROUTE"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
INVALID_TOKEN = "INVALID_TOKEN"  # as the services name a token they cannot read
# A backend that failed without a status of ours.
BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
BACKEND_TIMEOUT = "BACKEND_TIMEOUT"

HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# The gRPC code of a routing or protocol error, which keeps its own HTTP status.
_HTTP_CODES: Mapping[int, grpc.StatusCode] = {
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Requests that carry no bearer token, for which RFC 6750 §3.1 gives no error code.
_NO_CREDENTIALS = frozenset({"MISSING_TOKEN", "UNSUPPORTED_AUTH_SCHEME"})
_HIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error the facade makes itself: an ErrorInfo with `reason`, and a field violation for `field`."""
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)]
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field, description=message, reason=reason
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    return _response(code, message, reason, [_detail_json(_pack(d)) for d in details], headers)


def bad_request(message: str, *, reason: str, field: str | None = None) -> Response:
    return error_response(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field=field)


def http_error(
    status: int, message: str, *, reason: str, headers: Mapping[str, str] | None = None
) -> Response:
    """A routing or protocol error (400, 404, 405, 408, 413, 415, 431) in the same JSON shape."""
    code = _HTTP_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
    response = error_response(code, message, reason=reason, headers=headers)
    response.status_code = status
    return response


def no_route(request: Request) -> Response:
    return http_error(404, f"no route for {request.method} {request.url.path}", reason=NO_ROUTE)


def method_not_allowed(method: str, allow: str) -> Response:
    """The 405 for `method`; `allow` lists the route's methods ("GET, POST")."""
    return http_error(
        405, f"{method} is not allowed here; use {allow}", reason=METHOD_NOT_ALLOWED, headers={"allow": allow}
    )


def from_rpc_error(error: grpc.aio.AioRpcError, backend: str) -> Response:
    """The HTTP answer to a failed call to `backend` (a name such as "inventory")."""
    code = error.code()
    status = _attached_status(error)
    if code in _HIDDEN or status is None:
        return error_response(code, _generic_message(code, backend), reason=_generic_reason(code))
    details = []
    retry_after = None
    reason = None
    for packed in status.details:
        if packed.Is(descriptor(error_details_pb2.RetryInfo)):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = math.ceil(retry.retry_delay.ToTimedelta().total_seconds())
        elif packed.Is(descriptor(error_details_pb2.ErrorInfo)):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason = info.reason
        try:
            details.append(_detail_json(packed))
        except (TypeError, KeyError, json_format.Error):
            continue  # a detail type the facade does not know cannot be rendered: leave it out
    if reason is None:  # as mesh.errors names a reason it is not given: after the code
        reason = code.name
        details.insert(
            0, _detail_json(_pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)))
        )
    headers = {"retry-after": str(max(retry_after, 0))} if retry_after is not None else None
    return _response(code, status.message, reason, details, headers)


def _response(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    details: list[dict[str, Any]],
    headers: Mapping[str, str] | None,
) -> Response:
    body = {"code": code.value[0], "message": message, "details": details}
    all_headers = dict(headers or {})
    if code is grpc.StatusCode.UNAUTHENTICATED:
        all_headers.setdefault("www-authenticate", _www_authenticate(message, reason))
    return Response(
        orjson.dumps(body),  # as `transcoding.dumps` writes JSON
        status_code=HTTP_STATUS.get(code, 500),
        headers=all_headers,
        media_type="application/json",
    )


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _detail_json(packed: any_pb2.Any) -> dict[str, Any]:
    """A detail printed as resources are (snake_case, zero values present)."""
    return json_format.MessageToDict(
        packed, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _attached_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:
                return None
    return None


def _generic_message(code: grpc.StatusCode, backend: str) -> str:
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"the {backend} service is unavailable; try again shortly"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {backend} service did not answer in time"
    if code is grpc.StatusCode.CANCELLED:
        return "the request was cancelled"
    if code in _HIDDEN:
        return "internal error"
    return code.name.lower().replace("_", " ")


def _generic_reason(code: grpc.StatusCode) -> str:
    if code is grpc.StatusCode.UNAVAILABLE:
        return BACKEND_UNAVAILABLE
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BACKEND_TIMEOUT
    if code in _HIDDEN:
        return INTERNAL
    return code.name


def _www_authenticate(message: str, reason: str) -> str:
    """The bearer challenge (RFC 6750 §3): with no usable credentials at all it names no error."""
    if reason in _NO_CREDENTIALS:
        return 'Bearer realm="invmesh"'
    description = message.replace("\\", "").replace('"', "'")
    return f'Bearer realm="invmesh", error="invalid_token", error_description="{description}"'
