"""Python values to well-known protobuf types, for every servicer."""

from __future__ import annotations

import datetime as dt
from typing import cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(moment: dt.datetime | None) -> Timestamp | None:
    """A Timestamp for an aware datetime; None (the field stays unset) for None."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def descriptor(message: type[Message] | Message) -> Descriptor:
    """The message's `DESCRIPTOR`: its stubs type it as either of protobuf's two implementations
    (Python and upb), which are one class at run time."""
    return cast(Descriptor, message.DESCRIPTOR)
