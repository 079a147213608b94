"""The facade's converters of response messages (facade/message_json.py) give exactly what
json_format's MessageToDict gives, on random messages of every type an RPC of ours answers
with, and of every type inside those."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from facade.message_json import _general, message_to_json, to_json
from invmesh.auth.v1 import auth_service_pb2
from invmesh.inventory.v1 import inventory_service_pb2
from invmesh.products.v1 import products_service_pb2

SERVICE_FILES = (auth_service_pb2, inventory_service_pb2, products_service_pb2)
MESSAGES_PER_TYPE = 60
TEXTS = ["", "a", "Ünïcödé ✓", "line\nbreak", '"quoted"\\', "\u2028", "x" * 300]
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 7, 1_000_000]
NANOS = [0, 1, 999_999_999, 500_000_000, 123_456_000, 1_000]


def answered() -> Iterator[Descriptor]:
    """Every message type an RPC answers with, and every type of ours inside those, once (the
    well-known types inside are made by `random_value`)."""
    seen: set[str] = set()
    pending = [
        method.output_type
        for module in SERVICE_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    while pending:
        kind = pending.pop()
        if kind.full_name in seen:
            continue
        seen.add(kind.full_name)
        yield kind
        pending += [
            f.message_type
            for f in kind.fields
            if f.message_type is not None and not f.message_type.full_name.startswith("google.protobuf.")
        ]


def random_message(kind: Descriptor, rng: random.Random, depth: int = 0) -> Message:
    message = GetMessageClass(kind)()
    for field in kind.fields:
        if rng.random() < 0.3 or (field.message_type is not None and depth > 3):
            continue  # left unset
        count = rng.randint(0, 3) if field.is_repeated else 1
        for _ in range(count):
            value = random_value(field, rng, depth)
            if field.is_repeated:
                if field.message_type is not None:
                    getattr(message, field.name).add().CopyFrom(value)
                else:
                    getattr(message, field.name).append(value)
            elif field.message_type is not None:
                getattr(message, field.name).CopyFrom(value)
            else:
                setattr(message, field.name, value)
    return message


def random_value(field: FieldDescriptor, rng: random.Random, depth: int) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "google.protobuf.Timestamp":
            seconds = rng.choice([0, 1, 1_765_000_000, 253_402_300_799])
            return timestamp_pb2.Timestamp(seconds=seconds, nanos=rng.choice(NANOS))
        return random_message(field.message_type, rng, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return rng.choice(TEXTS)
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([*field.enum_type.values_by_number, 99])  # 99: a number no name has
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, 1.5, -2.25, 1e300 if kind == FieldDescriptor.TYPE_DOUBLE else 3.0])
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 8))
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return rng.choice([*INTS, 2**63 - 1, -(2**63)])
    return rng.choice(INTS)


@pytest.mark.parametrize("kind", list(answered()), ids=lambda kind: kind.full_name)
def test_each_answer_type_converts_as_json_format_does(kind: Descriptor) -> None:
    rng = random.Random(kind.full_name)
    for _ in range(MESSAGES_PER_TYPE):
        message = random_message(kind, rng)
        expected = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        assert message_to_json(message) == expected, message


def test_the_hot_answers_have_converters_of_their_own() -> None:
    """Not left to json_format, which the comparison above would pass trivially."""
    for kind in (
        products_service_pb2.GetProductResponse,
        products_service_pb2.ListProductsResponse,
        inventory_service_pb2.GetInventoryItemResponse,
        inventory_service_pb2.ListInventoryItemsResponse,
        inventory_service_pb2.RecordMovementResponse,
    ):
        assert to_json(kind.DESCRIPTOR) is not _general, kind.DESCRIPTOR.full_name


def test_a_type_that_holds_itself_is_left_to_json_format() -> None:
    """A converter written for a recursive type would need itself before it exists."""
    pool = descriptor_pool.DescriptorPool()
    node = descriptor_pb2.DescriptorProto(name="Node")
    node.field.add(
        name="name", number=1, type=FieldDescriptor.TYPE_STRING, label=FieldDescriptor.LABEL_OPTIONAL
    )
    node.field.add(
        name="child", number=2, type=FieldDescriptor.TYPE_MESSAGE, type_name=".test.Node",
        label=FieldDescriptor.LABEL_OPTIONAL,
    )  # fmt: skip
    pool.Add(descriptor_pb2.FileDescriptorProto(name="node.proto", package="test", message_type=[node]))
    kind = pool.FindMessageTypeByName("test.Node")
    assert to_json(kind) is _general
    message: Any = GetMessageClass(kind)()
    message.name, message.child.name = "a", "b"
    assert message_to_json(message) == {"name": "a", "child": {"name": "b"}}
