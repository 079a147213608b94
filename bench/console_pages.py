"""How long the console's pages take with 50 rows: `invmesh up` on SQLite with 50 products in
stock, all low (a reorder point above their stock), one of them with 50 movements and 5
reservations, and 50 users, each page asked for `--repeat` times
in turn, one at a time, over loopback. The time is the client's, from request to the page's
last byte, so it bounds the server's time from above.

    .venv/bin/python -m bench.console_pages [--repeat 50]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.systems import USER, invmesh

PRODUCTS = 50
USERS = 50  # with the bench's admin
SERVICES = ("auth", "products", "inventory")


def sign_in(http: httpx.Client) -> None:
    page = http.get("/console/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    answer = http.post("/console/sign-in", data={"csrf_token": token[1], **USER})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text}")


def fill(http: httpx.Client, token: str, product_ids: list[str]) -> None:
    """Every product low on stock, 50 movements and 5 reservations of the first, and users up to
    50, over REST."""
    headers = {"authorization": f"Bearer {token}"}
    for number in range(1, USERS):
        user = {"email": f"user-{number}@example.com", "password": USER["password"], "name": f"User {number}"}
        http.post("/users/register", json=user).raise_for_status()
    for low in product_ids:
        http.put(f"/inventory/{low}", json={"reorder_point": 2_000_000}, headers=headers).raise_for_status()
    product_id = product_ids[0]
    for number in range(50):
        movement = {"product_id": product_id, "type": "OUT" if number % 2 else "IN", "quantity": 3}
        http.post("/inventory", json=movement, headers=headers).raise_for_status()
    for _ in range(5):
        reservation = {"product_id": product_id, "quantity": 1, "ttl_seconds": 3600}
        http.post("/reservations", json=reservation, headers=headers).raise_for_status()


def measure(http: httpx.Client, path: str, repeat: int) -> list[float]:
    http.get(path).raise_for_status()  # warm: caches, the template compiled
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = http.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    blank = {f"{service.upper()}_DATABASE_URL": "" for service in SERVICES}
    with (
        tempfile.TemporaryDirectory() as work,
        # Registrations are limited per client address like verification mails: all come from here.
        invmesh(
            Path(work),
            blank,
            products=PRODUCTS,
            rounds=4,
            extra_env={"VERIFICATION_RESENDS_PER_ADDRESS": str(2 * USERS)},
        ) as mesh,  # fmt: skip
    ):
        with httpx.Client(base_url=mesh.url, timeout=30) as http:
            product_id = mesh.product_ids[0]
            fill(http, mesh.token, mesh.product_ids)
            sign_in(http)
            pages = {
                "products (50 rows)": "/console/products",
                "product (50 ledger rows, 5 reservations)": f"/console/products/{product_id}",
                "low stock (50 rows)": "/console/low-stock",
                "administration (50 users)": "/console/admin",
            }
            print(f"| page | median ms | p95 ms | max ms |  ({args.repeat} requests each, SQLite)")
            print("|---|---:|---:|---:|")
            for name, path in pages.items():
                times = sorted(measure(http, path, args.repeat))
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                print(f"| {name} | {statistics.median(times):.1f} | {p95:.1f} | {times[-1]:.1f} |")


if __name__ == "__main__":
    main()
