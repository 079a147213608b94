"""A response message as the JSON value json_format's `MessageToDict` gives it (proto field
names, fields without presence always printed), through a converter built once per message
type, its code written for that type. `MessageToDict` walks the descriptors again on every
call: about 11 µs a product, 220 µs a page of twenty. A type holding anything but the plain
kinds (strings, booleans, 32-bit integers, enums, Timestamps, and messages and repeated fields
of those) keeps `MessageToDict`, so the value never differs; tests/facade/test_message_json.py
compares the two on every response type the facade serves."""

from __future__ import annotations

import functools
import keyword
from collections.abc import Callable
from typing import Any, cast

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
    """A converter of the plain kinds; None if the type holds another (or itself: recursion).
    Its code is written for the type, as dataclasses writes a class's `__init__`: one statement
    per field, reading it by name, where a loop over the fields took twice as long (a page of
    20 items: 90 µs against 45). The code holds only the names of our own compiled protos'
    fields, as string literals (repr) or checked identifiers."""
    if descriptor.full_name in within:
        return None
    converters: dict[str, _Value] = {}  # the converters the code calls, by their names in it
    lines = ["def convert(message):", "    json = {}"]
    for field in descriptor.fields:
        value = _value(field, within | {descriptor.full_name})
        if value is None:
            return None
        read = _read(field.name)
        if value is not _as_is:
            name = f"convert_{len(converters)}"
            converters[name] = value
            read = f"[{name}(item) for item in {read}]" if field.is_repeated else f"{name}({read})"
        elif field.is_repeated:
            read = f"list({read})"
        if field.has_presence and not field.is_repeated:  # left out when not set
            lines += [f"    if message.HasField({field.name!r}):", f"        json[{field.name!r}] = {read}"]
        else:
            lines.append(f"    json[{field.name!r}] = {read}")
    lines.append("    return json")
    code = compile("\n".join(lines), f"<{descriptor.full_name} to JSON>", "exec")
    exec(code, converters)  # defines `convert` among them
    return cast("ToJson", converters["convert"])


def _read(name: str) -> str:
    """The code that reads field `name` of `message`."""
    return (
        f"message.{name}"
        if name.isidentifier() and not keyword.iskeyword(name)
        else f"getattr(message, {name!r})"
    )


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
