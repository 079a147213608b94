"""Python values to well-known protobuf types, for every servicer."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(moment: dt.datetime | None) -> Timestamp | None:
    """A Timestamp for an aware datetime; None (the field stays unset) for None."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
