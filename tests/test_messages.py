"""mesh.messages: Python values to well-known protobuf types."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from mesh.messages import timestamp

# Offsets of whole minutes, as zones have (protobuf drops a fraction of a second from one).
_OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))


@given(st.datetimes(timezones=st.none() | _OFFSETS))
def test_a_timestamp_is_the_one_protobuf_makes_of_the_same_moment(moment: dt.datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment)  # a naive datetime is UTC to protobuf, and to timestamp()
    assert timestamp(moment) == expected


def test_no_moment_is_no_timestamp() -> None:
    assert timestamp(None) is None
