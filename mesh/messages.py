"""Python values to well-known protobuf types, and update masks read, for every servicer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.errors import InvalidArgument, Violations

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp(moment: dt.datetime | None) -> Timestamp | None:
    """A Timestamp for an aware datetime (a naive one is taken as UTC, as protobuf's
    `FromDatetime` takes it); None (the field stays unset) for None. Its own arithmetic, a
    third of `FromDatetime`'s cost: a page of items makes one per item."""
    if moment is None:
        return None
    since = (moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def time_of(message: Message, field: str) -> dt.datetime | None:
    """The aware UTC datetime of a Timestamp field of `message`; None when it is unset, and
    INVALID_ARGUMENT outside the years 1 to 9999, which JSON refuses too but gRPC carries."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(dt.UTC)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a time in the years 1 to 9999", field=field, reason="INVALID_TIMESTAMP"
        ) from None


def descriptor(message: type[Message] | Message) -> Descriptor:
    """The message's `DESCRIPTOR`: its stubs type it as either of protobuf's two implementations
    (Python and upb), which are one class at run time."""
    return cast(Descriptor, message.DESCRIPTOR)


def fields_in_mask(
    mask: Sequence[str] | None, *, editable: tuple[str, ...], ignored: Collection[str], resource: str
) -> tuple[str, ...]:
    """The `editable` fields an update mask names: all of them for no mask or "*" (AIP-134). The
    `ignored` paths (the id, output-only fields) are skipped, so a resource read back can be sent
    as it is (AIP-203); any other path is INVALID_ARGUMENT, naming each."""
    if mask is None or "*" in mask:
        return editable
    problems = Violations()
    for path in mask:
        if path not in editable and path not in ignored:
            problems.add(
                "update_mask",
                f"update_mask names {path!r}, which is not an editable field of a {resource} "
                f"({', '.join(editable)})",
                "INVALID_UPDATE_MASK",
            )
    problems.check()
    return tuple(name for name in editable if name in mask)
