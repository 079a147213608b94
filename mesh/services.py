"""The registry of the mesh's services: one entry each, read by the launcher, the facade and
the channels' retry policy alike. Adding a service means adding it here (and its settings)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor

from invmesh.auth.v1 import auth_service_pb2
from invmesh.inventory.v1 import inventory_service_pb2
from invmesh.products.v1 import products_service_pb2


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    # The process name, the client id of its service token, and the word errors use
    # ("the inventory service is unavailable").
    name: str
    # The Settings field with its address: `host:port`, a comma list of replicas, or a gRPC target.
    address_setting: str
    # The Settings field with its database URL (unset: an SQLite file in the data directory).
    database_setting: str
    descriptor: ServiceDescriptor
    # The module whose `running(settings, address=...)` serves it; only the launcher imports it.
    module: str


def _spec(name: str, descriptor: ServiceDescriptor) -> ServiceSpec:
    return ServiceSpec(name, f"{name}_addr", f"{name}_database_url", descriptor, f"{name}.service")


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        _spec("auth", auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]),
        _spec("products", products_service_pb2.DESCRIPTOR.services_by_name["ProductsService"]),
        _spec("inventory", inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"]),
    )
}
