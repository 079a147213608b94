"""The services as the console calls them: typed stubs on the facade's own channels, and a
failed call read back as the API's error (the JSON the REST routes would send for it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from starlette.requests import Request

from facade import errors
from invmesh.auth.v1 import auth_service_pb2_grpc
from invmesh.inventory.v1 import inventory_service_pb2_grpc
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.services import SERVICES

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True, slots=True)
class Stubs:
    """The three services, on the channels the facade's lifespan opened (keyed by full name)."""

    auth: auth_service_pb2_grpc.AuthServiceStub
    products: products_service_pb2_grpc.ProductsServiceStub
    inventory: inventory_service_pb2_grpc.InventoryServiceStub

    @classmethod
    def on(cls, channels: dict[str, grpc.aio.Channel]) -> Stubs:
        def channel(name: str) -> grpc.aio.Channel:
            return channels[SERVICES[name].descriptor.full_name]

        return cls(
            auth_service_pb2_grpc.AuthServiceStub(channel("auth")),
            products_service_pb2_grpc.ProductsServiceStub(channel("products")),
            inventory_service_pb2_grpc.InventoryServiceStub(channel("inventory")),
        )


def stubs(request: Request) -> Stubs:
    found: Stubs = request.state.console
    return found


@dataclass(frozen=True, slots=True)
class ApiError:
    """What a page shows of a refusal: the message, and each field's violation beside its input."""

    status: int
    message: str
    reason: str
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError, backend: str) -> ApiError:
        """The refusal `backend` ("inventory", say) answered, as the facade renders it for REST."""
        answer = errors.from_rpc_error(error, backend)
        return cls.from_body(answer.status_code, json.loads(bytes(answer.body)))

    @classmethod
    def from_body(cls, status: int, body: dict[str, Any]) -> ApiError:
        reason = ""
        fields: dict[str, str] = {}
        for detail in body.get("details", []):
            reason = detail.get("reason", reason) if detail["@type"].endswith("ErrorInfo") else reason
            for violation in detail.get("field_violations", []):
                fields.setdefault(violation["field"], violation["description"])
        return cls(status, body["message"], reason, fields)


class Refused(Exception):
    """A call the service refused, as the page shows it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


class Caller:
    """Calls the services as the signed-in user: their token, the request's id, the facade's
    deadline. A refusal raises Refused with the API's error."""

    def __init__(self, metadata: list[tuple[str, str]], timeout: float) -> None:
        self._metadata = metadata
        self._timeout = timeout

    async def __call__(
        self, method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT], message: RequestT
    ) -> ResponseT:
        try:
            return await method(message, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            # The request's package names its service: invmesh.<service>.v1.
            raise Refused(ApiError.of(error, message.DESCRIPTOR.full_name.split(".")[1])) from error
