"""CPU per request of each invmesh process under one scenario's load, for comparing two versions
of the code: the machine's speed drifts between runs, a process's CPU per request much less. Run
it for each version in turn, alternating, and compare the processes' figures.

    .venv/bin/python -m bench.cpu get-product
    .venv/bin/python -m bench.cpu movement --database postgresql --runs 3
    .venv/bin/python -m bench.cpu get-product --repo ../old   # the code of another checkout
    .venv/bin/python -m bench.cpu get-product --metrics-off   # what counting metrics costs
    .venv/bin/python -m bench.cpu movement --watchers 10      # with 10 WatchMovements streams

After a 2 s warm-up, each run is `wrk` at 64 calls in flight for `--duration` seconds; the CPU of
every process `invmesh up` started is read from /proc before and after it. With `--watchers`, the
streams (bench.feed's client process) are open through the warm-up and every run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from bench.databases import DATABASES, databases
from bench.feed import watching
from bench.harness import Load, parse_wrk, process_tree, require_wrk, wrk
from bench.scenarios import BY_KEY
from bench.systems import REPO, invmesh, invmesh_label

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The user and system CPU the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[key for key in BY_KEY if key != "login"])
    parser.add_argument("--database", choices=DATABASES, default="sqlite")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8, help="seconds per run (default 8)")
    parser.add_argument("--products", type=int, default=300, help="products seeded (default 300)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout whose code runs (default: this)"
    )
    parser.add_argument(
        "--metrics-off", action="store_true", help="blank every *_METRICS_ADDR: nothing counted or served"
    )
    parser.add_argument(
        "--watchers", type=int, default=0, help="WatchMovements streams reading every movement (default 0)"
    )
    args = parser.parse_args()
    require_wrk()
    scenario = BY_KEY[args.scenario]
    load = Load(connections=64, duration=args.duration, warmup=2)
    with tempfile.TemporaryDirectory() as tmp, databases(args.database, Path(tmp), args.postgres) as dbs:
        with invmesh(Path(tmp), dbs.invmesh_env, products=args.products, rounds=4, repo=args.repo,
                     metrics=not args.metrics_off) as system, contextlib.ExitStack() as stack:  # fmt: skip
            ids = Path(tmp) / "ids"
            ids.write_text("\n".join(system.product_ids))
            env = {**scenario.env, "IDS_FILE": str(ids), "TOKEN": system.token}
            names = {pid: invmesh_label(pid, pid == system.pid) for pid in process_tree(system.pid)}
            print("processes:", ", ".join(f"{name} {pid}" for pid, name in names.items()), flush=True)
            streams = (
                stack.enter_context(watching(system.addresses["inventory"], system.token, args.watchers))
                if args.watchers
                else None
            )
            wrk(system.url, scenario.script, env, load, load.warmup)
            for run in range(1, args.runs + 1):
                before = {pid: cpu_seconds(pid) for pid in names}
                output = wrk(system.url, scenario.script, env, load, load.duration)
                used = {pid: cpu_seconds(pid) - before[pid] for pid in names}
                figures = parse_wrk(output)
                calls = figures.answered
                per_call = ", ".join(f"{names[pid]} {1000 * s / calls:.2f}" for pid, s in used.items() if s)
                print(f"run {run}: {figures.rate:,.0f} req/s; CPU ms per request: {per_call}", flush=True)
                if streams is not None:
                    got = streams.received()
                    movements, messages = sum(got.movements), sum(got.messages)
                    print(f"  streams so far: {movements:,} movements in {messages:,} messages", flush=True)


if __name__ == "__main__":
    main()
