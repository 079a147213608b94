"""Do register, login and verify take as long for an address that has an account as for one that
has not? Their answers are identical (tests/facade/test_enumeration.py); this measures the other
channel, time, on a running `invmesh up` through the facade, with production bcrypt cost.

Known and unknown requests alternate, one at a time and apart, so both sides see the same
machine. For each
operation it reports the medians, their difference, and a 95% bootstrap interval of that
difference: an interval that holds 0 means the difference is within the noise.

    .venv/bin/python -m bench.enumeration [--samples N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.systems import USER, invmesh

RESULTS = Path(__file__).resolve().parent / "results"
# Generous limits: the benchmark itself must not be throttled, which would change the timing.
LIMITS = {
    "VERIFICATION_RESENDS_PER_ACCOUNT": "1000000",
    "VERIFICATION_RESENDS_PER_ADDRESS": "1000000",
}
PENDING = "pending@example.com"  # registered, never verified: what a re-send is for
# Asked about as often as the known ones: the abuse counters are per address typed, so the first
# request for any address costs an insert, account or not, and later ones an update.
UNKNOWN = "nobody@example.com"
# Between requests: work an answer leaves behind (a mail to write) must not land on the next one,
# which would compare the load of the previous request rather than this one's own time.
PAUSE = 0.1


@dataclass(frozen=True)
class Operation:
    name: str
    request: Callable[[httpx.Client, str], httpx.Response]  # (client, email) -> response
    known: Callable[[], str]
    unknown: Callable[[], str]


def fresh() -> str:
    return f"nobody-{uuid.uuid4().hex[:12]}@example.com"


OPERATIONS = [
    Operation(
        "POST /users/register",
        lambda http, email: http.post(
            "/users/register", json={"email": email, "password": "a long password"}
        ),
        known=lambda: USER["email"],
        unknown=fresh,  # a new address each time: once registered, it would be a known one
    ),
    Operation(
        "POST /users/login (wrong password)",
        lambda http, email: http.post("/users/login", json={"email": email, "password": "not the password"}),
        known=lambda: USER["email"],
        unknown=lambda: UNKNOWN,
    ),
    Operation(
        "POST /users/verify (re-send)",
        lambda http, email: http.post("/users/verify", json={"email": email}),
        known=lambda: PENDING,
        unknown=lambda: UNKNOWN,
    ),
]


def timed(http: httpx.Client, operation: Operation, email: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = operation.request(http, email)
    return (time.perf_counter() - started) * 1000, response.status_code


def difference_interval(known: list[float], unknown: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(known) - median(unknown)."""
    rng = random.Random(7)
    spread = sorted(
        statistics.median(rng.choices(known, k=len(known)))
        - statistics.median(rng.choices(unknown, k=len(unknown)))
        for _ in range(rounds)
    )
    return spread[int(0.025 * rounds)], spread[int(0.975 * rounds)]


def measure(url: str, samples: int) -> list[str]:
    rows = []
    with httpx.Client(base_url=url, timeout=30) as http:
        http.post("/users/register", json={"email": PENDING, "password": "a long password"})
        for operation in OPERATIONS:
            timings: dict[str, list[float]] = {"known": [], "unknown": []}
            statuses: dict[str, set[int]] = {"known": set(), "unknown": set()}
            timed(http, operation, operation.unknown())  # warm up
            for _ in range(samples):
                for side, email in (("known", operation.known()), ("unknown", operation.unknown())):
                    ms, status = timed(http, operation, email)
                    timings[side].append(ms)
                    statuses[side].add(status)
                    time.sleep(PAUSE)
            known, unknown = timings["known"], timings["unknown"]
            low, high = difference_interval(known, unknown)
            verdict = "within the noise" if low <= 0 <= high else "**differs**"
            rows.append(
                f"| {operation.name} | {sorted(statuses['known'])} / {sorted(statuses['unknown'])} "
                f"| {statistics.median(known):.1f} | {statistics.median(unknown):.1f} "
                f"| {statistics.median(known) - statistics.median(unknown):+.1f} "
                f"| [{low:+.1f}, {high:+.1f}] | {verdict} |"
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.enumeration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=40, help="requests per side and operation")
    parser.add_argument("--rounds", type=int, default=12, help="bcrypt cost, as in production")
    args = parser.parse_args(argv)
    os.environ.update(LIMITS)
    with tempfile.TemporaryDirectory(prefix="invmesh-enumeration-") as workdir:
        with invmesh(Path(workdir), {}, products=0, rounds=args.rounds) as system:
            rows = measure(system.url, args.samples)
    report = "\n".join(
        [
            f"# Known vs unknown addresses: latency ({args.samples} samples a side, "
            f"bcrypt cost {args.rounds}, SQLite)",
            "",
            "| Operation | Statuses known / unknown | Median known (ms) | Median unknown (ms) "
            "| Difference (ms) | 95% interval | Verdict |",
            "|---|---|---:|---:|---:|---|---|",
            *rows,
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-enumeration.md"
    path.write_text(report)
    print(f"\nwritten to {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
