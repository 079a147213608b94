"""invmesh side by side with the FastAPI peer: the same load on the same database, in one run.

    python -m bench.run [--quick] [--databases sqlite,postgresql] [--scenarios KEY,...]
                        [--duration S] [--warmup S] [--repeat N] [--connections N] [--products N]
                        [--watchers N] [--idle-watchers N] [--bcrypt-rounds N] [--postgres URL]
                        [--peer-dir DIR]

For each database, one after the other: invmesh through the REST facade (on PostgreSQL also with
two inventory replicas for the writes), the same calls made directly over gRPC where the scenario
has one, what the movement feed costs (with `movement`: idle streams' memory, POST /inventory with
streams reading it), and the peer (../shared/bench/peer_fastapi) with 2 and with 1 uvicorn workers. Prints a
Markdown table and writes it to bench/results/; exits 1 if invmesh failed a call or a check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from bench import ceilings, chart, feed, instrumentation
from bench.ceilings import ECHO, HOP, Micro
from bench.databases import DATABASES, Databases, databases
from bench.harness import Figures, Load, Row, free_port, require_wrk, run_grpc, run_wrk, wait_idle
from bench.login import bcrypt_check_seconds
from bench.report import Goal, Processes, Results, Setting, render
from bench.scenarios import BY_KEY, SCENARIOS, Scenario
from bench.systems import REPO, Invmesh, invmesh, peer_running, prepare_peer, stock_levels, tally

RESULTS = Path(__file__).resolve().parent / "results"
FACADE, REPLICAS = "invmesh, facade (REST)", "invmesh, facade, 2 inventory replicas"
GRPC = "invmesh, gRPC direct"
PEER_1, PEER_2 = "peer, 1 worker", "peer, 2 workers"
BASELINES = (PEER_2, PEER_1)
ORDER = [FACADE, REPLICAS, GRPC, ECHO, HOP, PEER_2, PEER_1]
# Issue 19's ceilings, on GET /products/{id}: (what, the row over the ceiling's row, the least that meets it).
CEILINGS = [
    ("GetProduct over gRPC / echo", GRPC, ECHO, 0.8),
    ("GET /products/{id}, facade / Starlette + 1 gRPC call", FACADE, HOP, 0.7),
]
PEER_GOAL = 1.0  # every route through the facade at least as fast as the peer with 2 workers
STOCK_SETTLE_SECONDS = 15  # the most to wait for writes still in flight after wrk stopped


@dataclass(frozen=True)
class Deployment:
    """One way of starting invmesh, and which scenarios it runs."""

    target: str
    replicas: dict[str, int]
    databases: tuple[str, ...]
    only: tuple[str, ...] = ()  # only these scenarios' keys, and no direct gRPC calls; (): all

    def scenarios(self, selected: list[Scenario]) -> list[Scenario]:
        return [s for s in selected if s.key in self.only or not self.only]


DEPLOYMENTS = [
    Deployment(FACADE, {}, DATABASES),
    # The writes to inventory's stock alone: does a second inventory process buy throughput?
    Deployment(REPLICAS, {"inventory": 2}, ("postgresql",), only=("movement", "set-stock")),
]


@dataclass(frozen=True)
class Plan:
    load: Load
    repeat: int
    products: int
    quick: bool
    databases: list[str]
    scenarios: list[Scenario]
    rounds: int  # bcrypt cost of the benchmark user, on both sides
    postgres: str  # the server's URL, without a database
    peer_dir: Path
    watchers: int  # WatchMovements streams reading every movement beside POST /inventory; 0: none
    idle_watchers: int  # idle streams whose memory is measured; 0: none

    def repeat_for(self, scenario: Scenario) -> int:
        return min(self.repeat, scenario.max_repeat or self.repeat)

    def load_for(self, scenario: Scenario) -> Load:
        return replace(
            self.load,
            connections=scenario.connections or self.load.connections,
            warmup=max(self.load.warmup, scenario.min_warmup),
            duration=max(self.load.duration, scenario.min_duration),
        )


@dataclass(frozen=True)
class Target:
    """A REST endpoint under load: invmesh's facade or the peer."""

    name: str
    url: str
    ids_file: Path
    token: str
    peer: bool  # the peer gets the token only where it needs one, and pages stock by 100 at most
    pid: int  # the server's root process: its process tree is watched for going idle
    mesh: Invmesh | None = None  # invmesh, whose log is read for what it says during each row


# ---- measuring -----------------------------------------------------------------


def measure_http(
    target: Target, scenarios: list[Scenario], plan: Plan, database: str, results: Results
) -> None:
    for scenario in scenarios:
        token = target.token if scenario.peer_token or not target.peer else ""
        location = target.mesh.location_id if target.mesh else ""
        env = {**scenario.env, "IDS_FILE": str(target.ids_file), "TOKEN": token, "LOCATION": location}
        load = plan.load_for(scenario)
        before = _stock(target) if scenario.stock else {}
        log_from = target.mesh.log.stat().st_size if target.mesh else 0
        warmup, runs = run_wrk(target.url, scenario.script, env, load, plan.repeat_for(scenario), target.pid)
        row = Row(database, scenario.name, target.name, runs)
        _progress(row)
        results.rows.append(row)
        problems = results.peer_problems if target.peer else results.failures
        where = f"{database}, {scenario.name}, {target.name}"
        problems += [f"{where}: {row.errors}"] if row.errors else []
        problems += [f"{where}, warm-up: {warmup.errors}"] if warmup.errors else []
        if scenario.stock:
            line, ok = check_stock(target, scenario.stock, before, [warmup, *runs], load.connections)
            results.checks.append(f"{where}: {line}")
            problems += [] if ok else [f"{where}: {line}"]
        if target.mesh:  # after the check: what the requests still in flight logged belongs here too
            results.logged.append((where, tally(target.mesh.logged(log_from))))


def check_stock(
    target: Target, kind: str, before: dict[str, int], runs: list[Figures], connections: int
) -> tuple[str, bool]:
    """With "adds", every acknowledged IN added exactly 1: the stock grew by at least the INs
    acknowledged (2xx answers, or the 201s a mix's script counted), and by no more than every request
    that could have been applied (answered or not when each wrk run stopped). With "sets", a count
    replaces a product's stock, so only the number of products changed is known: some if a count was
    acknowledged, at most as many as could have landed."""
    after = _settled_stock(target)
    acknowledged = sum(f.answered - f.non_2xx if f.created is None else f.created for f in runs)
    unknown = sum(f.non_2xx + f.socket_errors for f in runs) + connections * len(runs)
    could = (
        f"(up to {unknown:,} more could have landed: non-2xx, errors, in flight at the ends of "
        f"{len(runs)} wrk runs)"
    )
    if kind == "sets":
        changed = sum(after.get(product) != level for product, level in before.items())
        ok = (changed > 0 or not acknowledged) and changed <= acknowledged + unknown
        line = f"{changed:,} products' stock changed for {acknowledged:,} acknowledged counts {could}"
    else:
        added = sum(after.values()) - sum(before.values())
        ok = acknowledged <= added <= acknowledged + unknown
        line = f"stock +{added:,} for {acknowledged:,} acknowledged INs {could}"
    return f"{line}: {'consistent' if ok else 'INCONSISTENT'}", ok


def _settled_stock(target: Target) -> dict[str, int]:
    """The stock once requests still in flight when wrk stopped are done: two equal readings."""
    deadline = time.monotonic() + STOCK_SETTLE_SECONDS
    last = _stock(target)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _stock(target)
        if now == last:
            break
        last = now
    return last


def _stock(target: Target) -> dict[str, int]:
    return stock_levels(target.url, target.token, _page_size(target))


def _page_size(target: Target) -> int:
    return 100 if target.peer else 500  # the most each allows


def measure_grpc(
    mesh: Invmesh, scenarios: list[Scenario], plan: Plan, database: str, results: Results
) -> None:
    for scenario in scenarios:
        if scenario.direct is None:
            continue
        call = partial(scenario.direct.call, mesh.product_ids, mesh.token)
        address = mesh.addresses[scenario.direct.service]
        log_from = mesh.log.stat().st_size
        runs = []
        for _ in range(plan.repeat):
            runs.append(run_grpc(address, call, plan.load_for(scenario)))
            wait_idle(mesh.pid)
        row = Row(database, scenario.name, GRPC, runs)
        _progress(row)
        results.rows.append(row)
        where = f"{database}, {scenario.name}, {GRPC}"
        results.logged.append((where, tally(mesh.logged(log_from))))
        if row.errors:
            results.failures.append(f"{where}: {row.errors}")


def measure_watched(
    mesh: Invmesh, ids_file: Path, scenario: Scenario, plan: Plan, database: str, results: Results
) -> None:
    """POST /inventory with and without `plan.watchers` streams reading every movement, alternating."""
    rounds = plan.repeat if plan.quick else max(plan.repeat, 4)
    log_from = mesh.log.stat().st_size
    watched = feed.with_watchers(
        mesh, database, ids_file, scenario, plan.load_for(scenario), rounds, plan.watchers
    )
    results.feed_load.append(watched)
    where = f"{database}, {scenario.name}, {plan.watchers} watchers"
    line, ok = watched.check()
    results.checks.append(f"{where}: {line}")
    results.failures += [] if ok else [f"{where}: {line}"]
    results.failures += [f"{where}: {r.figures.errors}" for r in watched.with_streams + watched.without
                         if r.figures.errors]  # fmt: skip
    results.logged.append((where, tally(mesh.logged(log_from))))
    # The report's statistic (feed.load_table): the median, of the middle two with an even count.
    ratio = statistics.median(watched.ratios())
    print(f"bench: {where}: req/s {ratio:.3f}x without", file=sys.stderr, flush=True)


def measure_ceilings(micro: Micro, ids_file: Path, plan: Plan, database: str, work: Path,
                     results: Results) -> None:  # fmt: skip
    """The echo server under GetProduct's gRPC load, then the Starlette hop under GET /products/{id}'s wrk
    load (ids from `ids_file`), with no other system running."""
    scenario = BY_KEY["get-product"]
    load = plan.load_for(scenario)
    say = partial(print, file=sys.stderr, flush=True)
    say(f"bench: {database}: starting the ceilings' echo server and Starlette hop")
    with ceilings.echo_server(micro, work, free_port()) as echo:
        rows = [Row(database, scenario.name, ECHO, ceilings.measure_echo(echo, micro, load, plan.repeat))]
        with ceilings.hop_app(micro, work, free_port(), echo.address) as hop:
            warmup, runs = ceilings.measure_hop(hop, ids_file, load, plan.repeat)
            rows.append(Row(database, scenario.name, HOP, runs))
    for row in rows:
        _progress(row)
        results.rows.append(row)
        results.ceiling_problems += [f"{database}, {row.target}: {row.errors}"] if row.errors else []
    results.ceiling_problems += [f"{database}, {HOP}, warm-up: {warmup.errors}"] if warmup.errors else []


def issue_goals(rows: list[Row]) -> list[Goal]:
    """Issue 19's ratios: every route the peer serves, through the facade, over the peer with 2 workers
    (but logins, bound by bcrypt: see the checks), then the two ceilings."""
    rate = {(r.database, r.scenario, r.target): r.median.rate for r in rows}
    goals = [
        Goal(r.scenario, r.database, r.median.rate / peer, PEER_GOAL)
        for r in rows
        if r.target == FACADE and r.scenario != BY_KEY["login"].name
        and (peer := rate.get((r.database, r.scenario, PEER_2)))
    ]  # fmt: skip
    scenario = BY_KEY["get-product"].name
    for what, over, under, least in CEILINGS:
        for database in dict.fromkeys(r.database for r in rows):
            mine, bound = rate.get((database, scenario, over)), rate.get((database, scenario, under))
            if mine and bound:
                goals.append(Goal(what, database, mine / bound, least))
    return goals


def _progress(row: Row) -> None:
    median = row.median
    print(f"bench: {row.database}, {row.scenario}, {row.target}: {median.rate:,.1f} req/s"
          f"{', errors: ' + row.errors if row.errors else ''}", file=sys.stderr, flush=True)  # fmt: skip


# ---- one database ------------------------------------------------------------


def run_database(dbs: Databases, plan: Plan, work: Path, micro: Micro | None, results: Results) -> str:
    """Every target on one database, and the ceilings when `micro`; returns the peer's versions."""
    say = partial(print, file=sys.stderr, flush=True)
    peer = prepare_peer(plan.peer_dir, work, dbs.peer_url, plan.products, plan.rounds)
    ids: list[str] | None = None
    for deployment in DEPLOYMENTS:
        scenarios = deployment.scenarios(plan.scenarios)
        if dbs.name not in deployment.databases or not scenarios:
            continue
        seeding = "" if ids else f", seeding {plan.products} products"
        say(f"bench: {dbs.name}: starting {deployment.target}{seeding}")
        with invmesh(work, dbs.invmesh_env, products=ids or plan.products, rounds=plan.rounds,
                     replicas=deployment.replicas) as mesh:  # fmt: skip
            ids, first_row = mesh.product_ids, len(results.logged)
            ids_file = _write_ids(work / "invmesh-ids.txt", ids)
            target = Target(deployment.target, mesh.url, ids_file, mesh.token, False, mesh.pid, mesh)
            watched = next((s for s in scenarios if s.key == "movement"), None)
            if watched and deployment.target == FACADE and plan.idle_watchers:  # before the load
                say(f"bench: {dbs.name}: {plan.idle_watchers} and {2 * plan.idle_watchers} idle watchers")
                results.feed_memory += feed.idle_memory(mesh, dbs.name, plan.idle_watchers)
            measure_http(target, scenarios, plan, dbs.name, results)
            if not deployment.only:
                measure_grpc(mesh, scenarios, plan, dbs.name, results)
            if watched and deployment.target == FACADE and plan.watchers:
                measure_watched(mesh, ids_file, watched, plan, dbs.name, results)
            note = f"invmesh up: all healthy in {mesh.healthy_after:.2f} s"
            ready = Processes(deployment.target, dbs.name, mesh.ready_after, mesh.memory(), note, goals=True)
            results.processes.append(ready)
            in_rows = sum((counts for _, counts in results.logged[first_row:]), Counter())
            outside = tally(mesh.logged()) - in_rows
            results.logged.append((f"{dbs.name}, {deployment.target}, outside the measured rows", outside))
    if ids and (
        costed := [(s, plan.load_for(s)) for s in plan.scenarios if s.key in instrumentation.SCENARIOS]
    ):
        rounds = plan.repeat if plan.quick else max(plan.repeat, 4)
        results.instrumentation += instrumentation.measure(dbs, work, ids, costed, rounds, plan.rounds)
    peer_ids = _write_ids(work / "peer-ids.txt", peer.product_ids)
    if micro:
        measure_ceilings(micro, peer_ids, plan, dbs.name, work, results)
    for workers, name in ((2, PEER_2), (1, PEER_1)):
        say(f"bench: {dbs.name}: starting the {name}")
        with peer_running(peer, workers) as running:
            target = Target(name, running.url, peer_ids, running.token, True, running.pid)
            served = [s for s in plan.scenarios if s.peer]
            measure_http(target, served, plan, dbs.name, results)
            results.processes.append(Processes(name, dbs.name, running.ready_after, running.memory()))
    return peer.versions


def _write_ids(path: Path, ids: Sequence[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def run(plan: Plan, chart_name: str) -> tuple[str, list[str], list[Goal]]:
    """Every database in turn; returns the report (whose chart is `chart_name`, beside it), what invmesh
    failed, and issue 19's ratios."""
    load_before = os.getloadavg()
    results = Results()
    described, peer_versions = [], ""
    logins = any(s.key == "login" for s in plan.scenarios)
    # The bcrypt bound, measured before anything else competes for the CPU.
    bound = (os.cpu_count() or 1) / bcrypt_check_seconds(plan.rounds) if logins else 0.0
    with tempfile.TemporaryDirectory(prefix="invmesh-bench-") as tmp:
        ceiled = any(s.key == "get-product" for s in plan.scenarios)
        micro = ceilings.prepare(plan.peer_dir / "micro", Path(tmp)) if ceiled else None
        for name in plan.databases:
            work = Path(tmp) / name
            work.mkdir()
            with databases(name, work, plan.postgres) as dbs:
                described.append(dbs.description)
                try:
                    peer_versions = run_database(dbs, plan, work, micro, results)
                except RuntimeError as exc:  # a system that would not start or seed: say so, go on
                    print(f"bench: {name}: {exc}", file=sys.stderr, flush=True)
                    results.failures.append(f"{name}: stopped: {exc}")
    order = {s.name: i for i, s in enumerate(plan.scenarios)}
    results.rows.sort(
        key=lambda r: (plan.databases.index(r.database), order[r.scenario], ORDER.index(r.target))
    )
    if logins:
        results.checks.append(
            f"bcrypt bound: {bound:.2f} logins/s ({os.cpu_count()} CPUs over one check at "
            f"cost {plan.rounds}, timed before anything started, as bench.login does)"
        )
        results.checks += [
            f"{r.database}, {r.scenario}, {r.target}: {r.median.rate:.2f} logins/s, "
            f"{100 * r.median.rate / bound:.0f}% of the bcrypt bound"
            for r in results.rows if r.scenario == BY_KEY["login"].name
        ]  # fmt: skip
    results.goals = issue_goals(results.rows)
    setting = Setting(plan.load, plan.repeat, plan.products, plan.quick, plan.rounds, described,
                      plan.scenarios, peer_versions, load_before)  # fmt: skip
    return render(setting, results, BASELINES, chart_name), results.failures, results.goals


# ---- the command line ----------------------------------------------------------


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma list)")
        return chosen

    return parse


def parse_plan(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="2 s runs after a 1 s warm-up, one run each")
    add(
        "--databases",
        type=_choices(DATABASES),
        default=list(DATABASES),
        help=f"comma list (default {','.join(DATABASES)})",
    )
    add(
        "--scenarios",
        type=_choices(list(BY_KEY)),
        default=list(BY_KEY),
        help=f"comma list (default all: {','.join(BY_KEY)})",
    )
    add("--duration", type=float, help="seconds measured per run (default 5; quick 2)")
    add("--warmup", type=float, help="seconds of warm-up before a target's runs (default 2; quick 1)")
    add("--repeat", type=int, help="runs per target, the median shown (default 3; quick 1)")
    add("--connections", type=int, default=64, help="calls in flight (default 64; logins 8)")
    add("--products", type=int, help="products on each side (default 1000; quick 200)")
    add("--watchers", type=int, default=10,
        help="with movement: WatchMovements streams reading every movement beside POST /inventory, "
        "alternating with none (default 10; 0 skips)")  # fmt: skip
    add("--idle-watchers", type=int, default=100,
        help="with movement: idle WatchMovements streams whose memory is measured, then as many "
        "more (default 100; 0 skips)")  # fmt: skip
    add(
        "--bcrypt-rounds",
        type=int,
        default=int(os.environ.get("BCRYPT_ROUNDS", 12)),
        help="bcrypt cost of the benchmark user on both sides (default $BCRYPT_ROUNDS or 12)",
    )
    add(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server, as a URL without a database; the user may create databases "
        "(default postgresql://postgres@127.0.0.1:5432)",
    )
    add("--peer-dir", type=Path, default=REPO.parent / "shared" / "bench",
        help="the read-only folder holding peer_fastapi/ (default ../shared/bench)")  # fmt: skip
    args = parser.parse_args(argv)
    duration = args.duration or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    repeat = args.repeat or (1 if args.quick else 3)
    products = args.products or (200 if args.quick else 1000)
    return Plan(
        Load(args.connections, duration, warmup), repeat, products, args.quick, args.databases,
        [s for s in SCENARIOS if s.key in args.scenarios], args.bcrypt_rounds, args.postgres,
        args.peer_dir.resolve(), args.watchers, args.idle_watchers,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    plan = parse_plan(argv)
    require_wrk()
    started = dt.datetime.now()
    path = RESULTS / f"{started:%Y%m%d-%H%M%S}{'-quick' if plan.quick else ''}.md"
    text, failures, goals = run(plan, path.with_suffix(".svg").name)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"bench: written to {path.relative_to(REPO)}", file=sys.stderr)
    if goals:
        title = f"invmesh, issue 19 targets: make bench of {started:%Y-%m-%d %H:%M}{' (quick)' * plan.quick}"
        try:
            chart.draw(goals, path.with_suffix(".svg"), title)
            print(f"bench: chart written to {path.with_suffix('.svg').relative_to(REPO)}", file=sys.stderr)
        except ModuleNotFoundError as exc:  # run without `make bench`, which installs the bench extra
            print(f"bench: no chart ({exc}): pip install -e '.[bench]'", file=sys.stderr)
    print(f"bench: took {(dt.datetime.now() - started).total_seconds() / 60:.1f} minutes", file=sys.stderr)
    if failures:
        sys.exit("bench: invmesh failed:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
