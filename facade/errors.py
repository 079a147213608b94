"""Every error the facade sends has one JSON shape, a `google.rpc.Status`:

    {"code": 5, "message": "product 42 does not exist", "details": [...]}

with the HTTP status of google/rpc/code.proto's mapping. A backend's own message and
details pass through only when the backend attached a `google.rpc.Status` (our services
always do); anything else (a transport failure, an INTERNAL) gets a fixed message, so no
internal detail ever reaches a client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

from mesh.messages import descriptor

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
_HIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {"code": code.value[0], "message": message, "details": details or []}
    all_headers = dict(headers or {})
    if code is grpc.StatusCode.UNAUTHENTICATED:
        all_headers.setdefault("www-authenticate", _www_authenticate(message))
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status_code=HTTP_STATUS.get(code, 500),
        headers=all_headers,
        media_type="application/json",
    )


def bad_request(message: str, *, field: str | None = None) -> Response:
    details = []
    if field:
        details.append({"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]})
    return error_response(grpc.StatusCode.INVALID_ARGUMENT, message, details=details)


def http_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A routing or protocol error (404, 405, 413, 415) in the same JSON shape."""
    code = {
        404: grpc.StatusCode.NOT_FOUND,
        405: grpc.StatusCode.UNIMPLEMENTED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        415: grpc.StatusCode.INVALID_ARGUMENT,
    }.get(status, grpc.StatusCode.INVALID_ARGUMENT)
    response = error_response(code, message, headers=headers)
    response.status_code = status
    return response


def from_rpc_error(error: grpc.aio.AioRpcError, backend: str) -> Response:
    """The HTTP answer to a failed call to `backend` (a name such as "inventory")."""
    code = error.code()
    status = _attached_status(error)
    if code in _HIDDEN or status is None:
        return error_response(code, _generic_message(code, backend))
    details = []
    retry_after = None
    for packed in status.details:
        if packed.Is(descriptor(error_details_pb2.RetryInfo)):
            info = error_details_pb2.RetryInfo()
            packed.Unpack(info)
            retry_after = math.ceil(info.retry_delay.ToTimedelta().total_seconds())
        try:
            details.append(json_format.MessageToDict(packed))
        except (TypeError, KeyError, json_format.Error):
            continue  # a detail type the facade does not know cannot be rendered: leave it out
    headers = {"retry-after": str(max(retry_after, 0))} if retry_after is not None else None
    return error_response(code, status.message, details=details, headers=headers)


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


def _www_authenticate(message: str) -> str:
    description = message.replace("\\", "").replace('"', "'")
    return f'Bearer realm="invmesh", error="invalid_token", error_description="{description}"'
