"""A product's ledger as its page shows it: the movements a filter keeps, and the balance over
time at each location and in all, as the chart draws it and its table lists it.

ListMovements pages newest first and filters nothing, so the page reads the newest
LEDGER_DEPTH movements and filters them here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb

LEDGER_DEPTH = 500  # ListMovements' largest page
TYPES = {"IN": "Entry", "OUT": "Exit", "ADJUSTMENT": "Set"}


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
    def dated(self) -> bool:
        return self.since is not None or self.until is not None

    def in_range(self, movement: inventory_pb.Movement) -> bool:
        day = movement.created_at.ToDatetime(dt.UTC).date()
        return (self.since is None or day >= self.since) and (self.until is None or day <= self.until)

    def keeps(self, movement: inventory_pb.Movement) -> bool:
        kind = inventory_pb.MovementType.Name(movement.type)
        return self.in_range(movement) and (not self.type or kind == self.type)


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
    holds even when older movements were not read."""
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


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None
