"""A product's ledger as its page shows it: the ListMovements request of its filter (the
service filters and pages), and the balance after each movement listed, at each location and
in all, as the chart draws it and its table lists it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb

TYPES = {"IN": "Entry", "OUT": "Exit", "ADJUSTMENT": "Set"}
_NUMBERS = {"IN": inventory_pb.IN, "OUT": inventory_pb.OUT, "ADJUSTMENT": inventory_pb.ADJUSTMENT}


@dataclass(frozen=True, slots=True)
class LedgerFilter:
    since: dt.date | None = None
    until: dt.date | None = None
    type: str = ""  # a key of TYPES, or "" for every type

    @classmethod
    def parse(cls, since: str, until: str, type_: str) -> LedgerFilter:
        """The filter of a query; a value that does not parse filters nothing."""
        return cls(_date(since), _date(until), type_ if type_ in TYPES else "")

    @property
    def filters(self) -> bool:
        return self.since is not None or self.until is not None or bool(self.type)

    def query(self) -> dict[str, str]:
        """The filter as the page's query, for the links that page through it."""
        values = {"since": self.since or "", "until": self.until or "", "type": self.type}
        return {name: str(value) for name, value in values.items() if value}

    def request(self, product_id: str, page_size: int, page_token: str) -> inventory_pb.ListMovementsRequest:
        """The page of movements of the type, from the start of `since` to the end of `until`
        (whole days, UTC)."""
        listed = inventory_pb.ListMovementsRequest(
            product_id=product_id, page_size=page_size, page_token=page_token
        )
        if self.type:
            listed.type = _NUMBERS[self.type]
        if self.since is not None:
            listed.start_time.FromDatetime(_midnight(self.since))
        if self.until is not None and self.until < dt.date.max:  # the last day has no day after
            listed.end_time.FromDatetime(_midnight(self.until + dt.timedelta(days=1)))
        return listed


def type_name(movement: inventory_pb.Movement) -> str:
    return TYPES.get(inventory_pb.MovementType.Name(movement.type), "?")


@dataclass(frozen=True, slots=True)
class Balances:
    """The chart's data: x in Unix seconds, ascending; a series per location and their total."""

    times: list[float]
    locations: list[str]  # location ids, in the order of `series`
    series: list[list[int]]
    total: list[int]

    def as_chart(self, names: dict[str, str]) -> dict[str, object]:
        return {
            "times": self.times,
            "labels": [names.get(location, location) for location in self.locations],
            "series": self.series,
            "total": self.total,
        }

    def rows(self) -> Iterable[tuple[float, list[int], int]]:
        """Newest first, as the ledger reads."""
        for index in reversed(range(len(self.times))):
            yield self.times[index], [series[index] for series in self.series], self.total[index]


def balances(movements: Sequence[inventory_pb.Movement]) -> Balances:
    """The balances after each of `movements` (given newest first, as ListMovements sends them).
    Each location starts at its balance before its first movement among them, so that the total
    holds even when older movements were not read (a filter by type or location leaves out
    movements between them, whose balances show only in the next one listed)."""
    oldest_first = list(reversed(movements))
    current: dict[str, int] = {}
    for movement in oldest_first:
        current.setdefault(movement.location_id, movement.balance_after - movement.quantity)
    locations = list(current)
    times: list[float] = []
    series: list[list[int]] = [[] for _ in locations]
    total: list[int] = []
    for movement in oldest_first:
        current[movement.location_id] = movement.balance_after
        times.append(movement.created_at.ToDatetime(dt.UTC).timestamp())
        for location, values in zip(locations, series, strict=True):
            values.append(current[location])
        total.append(sum(current.values()))
    return Balances(times, locations, series, total)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None
