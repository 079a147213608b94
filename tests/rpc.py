"""Helpers for asserting on gRPC errors, and on what other services learn in their own time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2

from mesh.errors import status_of
from mesh.messages import descriptor

T = TypeVar("T")


async def expect_error(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason carried in the status details."""
    status = status_of(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(descriptor(error_details_pb2.ErrorInfo)):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Each field the BadRequest detail names, with its violation's reason."""
    status = status_of(error)
    for detail in status.details if status is not None else ():
        if detail.Is(descriptor(error_details_pb2.BadRequest)):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return {v.field: v.reason for v in bad_request.field_violations}
    return {}


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The seconds of the RetryInfo carried in the status details, if there is one."""
    status = status_of(error)
    for detail in status.details if status is not None else ():
        if detail.Is(descriptor(error_details_pb2.RetryInfo)):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, within: float = 5) -> T:
    """What `probe` returns once `done` holds for it, or after `within` seconds, for the caller
    to assert on: for news that travels asynchronously, such as inventory's stock feed."""
    deadline = time.monotonic() + within
    while not done(value := await probe()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return value
