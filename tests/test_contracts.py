"""The contracts: generated code in step with protos/, buf lint clean, every documented
REST route annotated."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from google.api import http_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor

from auth import accounts, passwords
from facade.openapi import contract_comments
from inventory import locations, reservations, stock, watch
from invmesh.auth.v1 import auth_service_pb2
from invmesh.inventory.v1 import inventory_service_pb2
from invmesh.products.v1 import products_service_pb2
from launcher import codegen
from mesh import access, paging
from mesh.options import HTTP, LIMITS
from products import catalog

FILES: list[FileDescriptor] = [
    auth_service_pb2.DESCRIPTOR,
    products_service_pb2.DESCRIPTOR,
    inventory_service_pb2.DESCRIPTOR,
]

DOCUMENTED_ROUTES = {
    ("POST", "/users/register"): "invmesh.auth.v1.AuthService.Register",
    ("POST", "/users/login"): "invmesh.auth.v1.AuthService.Login",
    ("POST", "/users/verify"): "invmesh.auth.v1.AuthService.VerifyEmail",
    ("GET", "/users/verify"): "invmesh.auth.v1.AuthService.VerifyEmail",
    ("GET", "/users/me"): "invmesh.auth.v1.AuthService.GetMe",
    ("POST", "/users/me:changePassword"): "invmesh.auth.v1.AuthService.ChangePassword",
    ("POST", "/users:setRole"): "invmesh.auth.v1.AuthService.SetUserRole",
    ("GET", "/users"): "invmesh.auth.v1.AuthService.ListUsers",
    ("POST", "/users/refresh"): "invmesh.auth.v1.AuthService.RefreshToken",
    ("POST", "/users/logout"): "invmesh.auth.v1.AuthService.Logout",
    ("GET", "/.well-known/jwks.json"): "invmesh.auth.v1.AuthService.GetJwks",
    ("GET", "/products"): "invmesh.products.v1.ProductsService.ListProducts",
    ("GET", "/products/{id}"): "invmesh.products.v1.ProductsService.GetProduct",
    ("POST", "/products"): "invmesh.products.v1.ProductsService.CreateProduct",
    ("PUT", "/products/{product.id}"): "invmesh.products.v1.ProductsService.UpdateProduct",
    ("PATCH", "/products/{product.id}"): "invmesh.products.v1.ProductsService.UpdateProduct",
    ("DELETE", "/products/{id}"): "invmesh.products.v1.ProductsService.DeleteProduct",
    ("GET", "/inventory"): "invmesh.inventory.v1.InventoryService.ListInventoryItems",
    ("GET", "/inventory/{product_id}"): "invmesh.inventory.v1.InventoryService.GetInventoryItem",
    ("POST", "/inventory"): "invmesh.inventory.v1.InventoryService.RecordMovement",
    ("PUT", "/inventory/{product_id}"): "invmesh.inventory.v1.InventoryService.SetStock",
    ("GET", "/inventory/{product_id}/movements"): "invmesh.inventory.v1.InventoryService.ListMovements",
    ("GET", "/inventory/movements:watch"): "invmesh.inventory.v1.InventoryService.WatchMovements",
    ("POST", "/inventory/transfers"): "invmesh.inventory.v1.InventoryService.CreateTransfer",
    ("GET", "/locations"): "invmesh.inventory.v1.InventoryService.ListLocations",
    ("GET", "/locations/{id}"): "invmesh.inventory.v1.InventoryService.GetLocation",
    ("POST", "/locations"): "invmesh.inventory.v1.InventoryService.CreateLocation",
    ("PATCH", "/locations/{location.id}"): "invmesh.inventory.v1.InventoryService.UpdateLocation",
    ("DELETE", "/locations/{id}"): "invmesh.inventory.v1.InventoryService.DeleteLocation",
    ("POST", "/reservations"): "invmesh.inventory.v1.InventoryService.CreateReservation",
    ("GET", "/reservations/{id}"): "invmesh.inventory.v1.InventoryService.GetReservation",
    ("GET", "/reservations"): "invmesh.inventory.v1.InventoryService.ListReservations",
    ("POST", "/reservations/{id}:confirm"): "invmesh.inventory.v1.InventoryService.ConfirmReservation",
    ("POST", "/reservations/{id}:release"): "invmesh.inventory.v1.InventoryService.ReleaseReservation",
}


def http_routes() -> dict[tuple[str, str], str]:
    routes: dict[tuple[str, str], str] = {}
    for file in FILES:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(HTTP):
                    continue
                rule: http_pb2.HttpRule = options.Extensions[HTTP]
                for binding in [rule, *rule.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    assert verb is not None
                    key = (verb.upper(), getattr(binding, verb))
                    assert key not in routes, f"duplicate route {key}"
                    routes[key] = method.full_name
    return routes


def test_generated_code_matches_the_protos() -> None:
    assert codegen.drift() == [], "run `make protos` and commit the result"


def test_protos_pass_buf_lint() -> None:
    result = codegen.lint()
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_documented_route_is_annotated() -> None:
    assert http_routes() == DOCUMENTED_ROUTES


@pytest.mark.parametrize("file", FILES, ids=lambda f: f.package)
def test_packages_are_versioned_and_match_their_directory(file: FileDescriptor) -> None:
    assert file.package.startswith("invmesh.") and file.package.endswith(".v1")
    assert file.name.rsplit("/", 1)[0] == file.package.replace(".", "/")


def test_json_contract_types() -> None:
    # Quantities and counts are JSON numbers (int32, not int64, which proto3 JSON writes as a
    # string); prices are decimal strings; ids are strings.
    product = products_service_pb2.Product.DESCRIPTOR.fields_by_name
    movement = inventory_service_pb2.Movement.DESCRIPTOR.fields_by_name
    int32, string = 5, 9  # FieldDescriptor.TYPE_INT32, TYPE_STRING
    assert product["price"].type == string and product["id"].type == string
    assert product["stock"].type == int32 and product["stock"].has_presence
    assert movement["quantity"].type == int32 and movement["balance_after"].type == int32
    assert [v.name for v in inventory_service_pb2.MovementType.DESCRIPTOR.values][1:] == [
        "IN",
        "OUT",
        "ADJUSTMENT",
    ]


def test_the_protos_comments_are_written_beside_the_generated_code() -> None:
    # buf lint's COMMENTS rules make every service, RPC, message, enum and value carry one;
    # the generated modules lose them, invmesh/comments.json keeps them by full name.
    comments = contract_comments()
    named: list[str] = []

    def walk(message: Descriptor) -> None:
        named.append(message.full_name)
        for nested in message.nested_types:
            if not nested.GetOptions().map_entry:
                walk(nested)
        for enum in message.enum_types:
            named.extend([enum.full_name, *(f"{message.full_name}.{v.name}" for v in enum.values)])

    for file in FILES:
        for service in file.services_by_name.values():
            named.extend([service.full_name, *(m.full_name for m in service.methods)])
        for message in file.message_types_by_name.values():
            walk(message)
        for enum in file.enum_types_by_name.values():
            named.extend([enum.full_name, *(f"{file.package}.{v.name}" for v in enum.values)])
    assert [name for name in named if not comments.get(name)] == []
    price = products_service_pb2.Product.DESCRIPTOR.fields_by_name["price"]
    assert comments[price.full_name].startswith('Unit price as a decimal string such as "12.50";')
    assert "\n" in comments[price.full_name]  # its two lines, as written, without the `// `
    assert not any(line.startswith((" ", "//")) for text in comments.values() for line in text.split("\n"))


_PASSWORD = {"min_length": passwords.MIN_CHARS, "max_length": passwords.MAX_BYTES}
_EMAIL = {"max_length": accounts.MAX_EMAIL_CHARS, "format": "email"}
_PAGE_SIZE = {"minimum": 0}  # above paging.MAX_PAGE_SIZE is capped, not refused (AIP-158)
_REQUEST_ID = {"max_length": 64, "pattern": "^[A-Za-z0-9._:-]*$"}
_MASK_PATH = "(sku|name|description|price|currency|id|stock|createdAt|updatedAt)"
_LOCATION_MASK_PATH = "(code|name|id|createdAt)"
# Every field with `invmesh.api.v1.limits`, and the limits its service enforces.
ENFORCED: dict[str, Mapping[str, object]] = {
    "invmesh.auth.v1.RegisterRequest.email": _EMAIL,
    "invmesh.auth.v1.RegisterRequest.password": _PASSWORD,
    "invmesh.auth.v1.RegisterRequest.name": {"max_length": accounts.MAX_NAME_CHARS},
    "invmesh.auth.v1.VerifyEmailRequest.email": {"min_length": 1, **_EMAIL},
    "invmesh.auth.v1.VerifyEmailRequest.token": {"min_length": 1},
    "invmesh.auth.v1.LogoutRequest.refresh_token": {"min_length": 1},
    "invmesh.auth.v1.SetUserRoleRequest.email": _EMAIL,
    "invmesh.auth.v1.SetUserRoleRequest.role": {"pattern": f"^({'|'.join(access.RANKS)})$"},
    "invmesh.auth.v1.ListUsersRequest.page_size": _PAGE_SIZE,
    "invmesh.auth.v1.ListUsersRequest.q": {"max_length": accounts.MAX_EMAIL_CHARS},
    "invmesh.auth.v1.ChangePasswordRequest.new_password": _PASSWORD,
    "invmesh.products.v1.Product.sku": {"max_length": catalog.MAX_SKU_CHARS, "pattern": r"\S"},
    "invmesh.products.v1.Product.name": {"max_length": catalog.MAX_NAME_CHARS, "pattern": r"\S"},
    "invmesh.products.v1.Product.description": {"max_length": catalog.MAX_DESCRIPTION_CHARS},
    "invmesh.products.v1.Product.price": {"pattern": r"^0*([0-9]{1,14}(\.[0-9]{0,2})?|\.[0-9]{1,2})$"},
    "invmesh.products.v1.Product.currency": {"format": "iso-4217"},
    "invmesh.products.v1.UpdateProductRequest.update_mask": {
        "pattern": f"^([*]|{_MASK_PATH}(,{_MASK_PATH})*)?$"
    },
    "invmesh.products.v1.ListProductsRequest.page_size": _PAGE_SIZE,
    "invmesh.inventory.v1.ListInventoryItemsRequest.page_size": _PAGE_SIZE,
    "invmesh.inventory.v1.ListMovementsRequest.page_size": _PAGE_SIZE,
    "invmesh.inventory.v1.RecordMovementRequest.quantity": {"minimum": 1, "maximum": stock.MAX_STOCK},
    "invmesh.inventory.v1.RecordMovementRequest.reason": {"max_length": stock.MAX_REASON_CHARS},
    "invmesh.inventory.v1.RecordMovementRequest.reference": {"max_length": stock.MAX_REFERENCE_CHARS},
    "invmesh.inventory.v1.RecordMovementRequest.request_id": _REQUEST_ID,
    "invmesh.inventory.v1.SetStockRequest.quantity": {"minimum": 0, "maximum": stock.MAX_STOCK},
    "invmesh.inventory.v1.SetStockRequest.reason": {"max_length": stock.MAX_REASON_CHARS},
    "invmesh.inventory.v1.SetStockRequest.request_id": _REQUEST_ID,
    "invmesh.inventory.v1.SetStockRequest.reorder_point": {"minimum": 0, "maximum": stock.MAX_STOCK},
    "invmesh.inventory.v1.Location.code": {
        "max_length": locations.MAX_CODE_CHARS,
        "pattern": "^[A-Za-z0-9._-]+$",
    },
    "invmesh.inventory.v1.Location.name": {"max_length": locations.MAX_NAME_CHARS, "pattern": r"\S"},
    "invmesh.inventory.v1.UpdateLocationRequest.update_mask": {
        "pattern": f"^([*]|{_LOCATION_MASK_PATH}(,{_LOCATION_MASK_PATH})*)?$"
    },
    "invmesh.inventory.v1.CreateTransferRequest.product_id": {"min_length": 1},
    "invmesh.inventory.v1.CreateTransferRequest.from_location_id": {"min_length": 1},
    "invmesh.inventory.v1.CreateTransferRequest.to_location_id": {"min_length": 1},
    "invmesh.inventory.v1.CreateTransferRequest.quantity": {"minimum": 1, "maximum": stock.MAX_STOCK},
    "invmesh.inventory.v1.CreateTransferRequest.reason": {"max_length": stock.MAX_REASON_CHARS},
    "invmesh.inventory.v1.CreateTransferRequest.request_id": _REQUEST_ID,
    "invmesh.inventory.v1.ListLocationsRequest.page_size": _PAGE_SIZE,
    "invmesh.inventory.v1.CreateReservationRequest.product_id": {"min_length": 1},
    "invmesh.inventory.v1.CreateReservationRequest.quantity": {"minimum": 1, "maximum": stock.MAX_STOCK},
    "invmesh.inventory.v1.CreateReservationRequest.ttl_seconds": {
        "minimum": 0,
        "maximum": reservations.MAX_TTL_SECONDS,
    },
    "invmesh.inventory.v1.CreateReservationRequest.reference": {"max_length": stock.MAX_REFERENCE_CHARS},
    "invmesh.inventory.v1.CreateReservationRequest.request_id": _REQUEST_ID,
    "invmesh.inventory.v1.ListReservationsRequest.page_size": _PAGE_SIZE,
    "invmesh.inventory.v1.WatchMovementsRequest.after": {
        "max_length": watch.MAX_CURSOR_CHARS,
        "pattern": "^[0-9]*$",
    },
}


def _declared_limits(message: Descriptor) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for field in message.fields:
        declared = {f.name: value for f, value in field.GetOptions().Extensions[LIMITS].ListFields()}
        if declared:
            found[field.full_name] = declared
    for nested in message.nested_types:
        found.update(_declared_limits(nested))
    return found


def test_the_protos_limits_are_the_ones_the_services_enforce() -> None:
    """The document's limits come from the protos; the services check their own constants."""
    declared: dict[str, dict[str, object]] = {}
    for file in FILES:
        for message in file.message_types_by_name.values():
            declared.update(_declared_limits(message))
    assert declared == ENFORCED
    assert paging.MAX_PAGE_SIZE == 500  # the proto comments' "capped at 500"
    assert stock._REQUEST_ID.pattern == "[A-Za-z0-9._:-]{1,64}"
    assert catalog.MAX_PRICE == 10**14  # the price pattern's 14 integer digits
    assert locations._CODE.pattern == "[A-Za-z0-9._-]{1,32}"
    location_paths = {
        re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), p) for p in _LOCATION_MASK_PATH[1:-1].split("|")
    }
    assert location_paths == {*locations.EDITABLE_FIELDS, *locations._IGNORED_IN_MASK}
    mask_paths = {re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), p) for p in _MASK_PATH[1:-1].split("|")}
    assert mask_paths == {*catalog.EDITABLE_FIELDS, *catalog._IGNORED_IN_MASK}
