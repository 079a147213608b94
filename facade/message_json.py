"""A response message as the JSON value json_format's `MessageToDict` gives it (proto field
names, fields without presence always printed), through a converter built once per message
type. `MessageToDict` walks the descriptors again on every call: about 11 µs a product, 220 µs
a page of twenty. A type holding anything but the plain kinds (strings, booleans, 32-bit
integers, enums, Timestamps, and messages and repeated fields of those) keeps `MessageToDict`,
so the value never differs; tests/facade/test_message_json.py compares the two on every
response type the facade serves."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

ToJson = Callable[[Message], dict[str, Any]]
_Value = Callable[[Any], Any]

_AS_IS = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
    }
)
_TIMESTAMP = "google.protobuf.Timestamp"
TIMESTAMPS_KEPT = 8192


def message_to_json(message: Message) -> dict[str, Any]:
    return to_json(message.DESCRIPTOR)(message)


@functools.cache
def to_json(descriptor: Descriptor) -> ToJson:
    """The converter of `descriptor`'s messages."""
    return _built(descriptor, frozenset()) or _general


def _general(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _built(descriptor: Descriptor, within: frozenset[str]) -> ToJson | None:
    """A converter of the plain kinds; None if the type holds another (or itself: recursion)."""
    if descriptor.full_name in within:
        return None
    fields = []
    for field in descriptor.fields:
        value = _value(field, within | {descriptor.full_name})
        if value is None:
            return None
        fields.append((field.name, field.is_repeated, field.has_presence, value))

    def convert(message: Message) -> dict[str, Any]:
        json: dict[str, Any] = {}
        for name, repeated, presence, value in fields:
            if repeated:
                json[name] = [value(item) for item in getattr(message, name)]
            elif not presence or message.HasField(name):
                json[name] = value(getattr(message, name))
        return json

    return convert


def _value(field: FieldDescriptor, within: frozenset[str]) -> _Value | None:
    if field.type in _AS_IS:
        return _as_is
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        names = {number: value.name for number, value in field.enum_type.values_by_number.items()}
        return lambda number: names.get(number, number)
    kind = field.message_type
    if field.type != FieldDescriptor.TYPE_MESSAGE or kind is None:
        return None  # 64-bit integers (strings in JSON), floating point, bytes: json_format's
    if kind.full_name == _TIMESTAMP:
        return _timestamp
    if kind.full_name.startswith("google.protobuf.") or kind.GetOptions().map_entry:
        return None
    return _built(kind, within)


def _as_is(value: Any) -> Any:
    return value


def _timestamp(value: Any) -> str:
    return _timestamp_text(value.seconds, value.nanos)


@functools.lru_cache(maxsize=TIMESTAMPS_KEPT)
def _timestamp_text(seconds: int, nanos: int) -> str:
    """A product's times are the same on every read of it: each is formatted once (1.5 µs)."""
    return str(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos).ToJsonString())
