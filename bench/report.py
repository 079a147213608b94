"""The Markdown report of a bench.run: settings, the side-by-side table, checks, processes, problems."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata

from bench import feed, instrumentation
from bench.harness import WRK_TIMEOUT, Load, Row, markdown_table
from bench.scenarios import Scenario

# Issue 19's targets for an invmesh system: ready within this many seconds of starting `invmesh up`, and
# each process it starts (the services, the facade; not itself) at most this many MB (10^6 bytes) at peak.
STARTUP_GOAL_SECONDS = 5.0
PROCESS_GOAL_MB = 120.0


@dataclass(frozen=True)
class Goal:
    """One of issue 19's targets on one database: a ratio of two rows' req/s, and the least that meets it."""

    what: str  # the route, or the ceiling's ratio
    database: str
    ratio: float
    least: float

    @property
    def met(self) -> bool:
        return self.ratio >= self.least


@dataclass(frozen=True)
class Processes:
    """One system as it ran: how long it took to be ready, and its processes' peak memory."""

    system: str
    database: str
    ready_after: float  # seconds from starting it to ready
    memory: list[tuple[str, float]]  # (process, peak RSS in MiB)
    note: str = ""
    goals: bool = False  # invmesh: held to the startup and memory targets (the root process is `up`)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)  # issue 19's ratios
    processes: list[Processes] = field(default_factory=list)
    instrumentation: list[instrumentation.Cost] = field(default_factory=list)  # metrics, traces
    feed_memory: list[feed.IdleMemory] = field(default_factory=list)  # idle WatchMovements streams
    feed_load: list[feed.Watched] = field(default_factory=list)  # POST /inventory with streams reading
    checks: list[str] = field(default_factory=list)  # what was verified, and how it came out
    failures: list[str] = field(default_factory=list)  # invmesh did something wrong: the run fails
    peer_problems: list[str] = field(default_factory=list)  # listed, but the run does not fail for them
    ceiling_problems: list[str] = field(default_factory=list)  # the same, for the ceilings' servers
    # What invmesh logged at WARNING or above, counted by message: during each row, and outside them.
    logged: list[tuple[str, Counter[str]]] = field(default_factory=list)


@dataclass(frozen=True)
class Setting:
    """What the header states about the run."""

    load: Load
    repeat: int
    products: int
    quick: bool
    rounds: int
    databases: list[str]  # as described by databases.Databases.description
    scenarios: list[Scenario]
    peer_versions: str
    load_before: tuple[float, float, float]


def render(setting: Setting, results: Results, baselines: tuple[str, ...], chart: str) -> str:
    """The report; `chart` is the file name of its chart, beside it."""
    parts = [_header(setting), "", markdown_table(results.rows, baselines), "", _scenarios(setting)]
    if results.goals:
        parts += ["", "## Issue 19 targets", "", _goals(results.goals), "", f"![Issue 19 ratios]({chart})"]
    if results.instrumentation:
        parts += ["", "## What metrics and traces cost", "", instrumentation.table(results.instrumentation)]
    if results.feed_load or results.feed_memory:
        parts += ["", "## What the movement feed costs"]
        parts += ["", feed.load_table(results.feed_load)] if results.feed_load else []
        parts += ["", feed.memory_table(results.feed_memory)] if results.feed_memory else []
    parts += ["", "## Checks", "", *(f"- {line}" for line in results.checks or ["none ran"])]
    parts += ["", "## Startup and peak memory", "", _processes(results.processes)]
    problems = [*(f"- invmesh: {line}" for line in results.failures),
                *(f"- peer: {line}" for line in results.peer_problems),
                *(f"- ceiling: {line}" for line in results.ceiling_problems)]  # fmt: skip
    parts += ["", "## Problems", "", *(problems or ["none"])]
    parts += ["", "## What invmesh logged (warnings and errors, by row)", "", _logged(results.logged)]
    return "\n".join(parts) + "\n"


def _logged(logged: list[tuple[str, Counter[str]]]) -> str:
    lines = [f"| {where} | {n} | {what} |" for where, counts in logged for what, n in counts.most_common()]
    if not lines:
        return "nothing"
    return "\n".join(["| while | lines | level, service: message |", "|---|---:|---|", *lines])


def _header(setting: Setting) -> str:
    load = setting.load
    repeat = f"median of {setting.repeat} runs (range in parentheses)" if setting.repeat > 1 else "one run"
    ours = ", ".join(f"{p} {metadata.version(p)}" for p in ("grpcio", "protobuf", "starlette", "uvicorn",
                                                           "sqlalchemy", "aiosqlite", "asyncpg"))  # fmt: skip
    return "\n".join([
        f"# invmesh vs the FastAPI peer{' (quick)' if setting.quick else ''}",
        "",
        f"- When: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on `{socket.gethostname()}`, "
        f"{os.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in setting.load_before)} "
        "before the run.",
        "- Everything shares those CPUs: invmesh's processes or the peer's workers, the database server, "
        "and the load generator (wrk, or the gRPC client processes).",
        f"- Databases: {'; '.join(setting.databases)}. Each side gets its own, holding the same "
        f"{setting.products} products with a stock of 1,000,000 each; ids are picked at random.",
        f"- Load: {load.connections} calls in flight for {load.duration:g} s after one {load.warmup:g} s "
        f"warm-up (logins: see below), {repeat}. HTTP: `wrk -t{load.clients} --latency "
        f"--timeout {WRK_TIMEOUT}s` with the same script for both sides; gRPC: {load.clients} grpc.aio "
        "client processes.",
        f"- Logins: bcrypt cost {setting.rounds} on both sides.",
        f"- invmesh: Python {platform.python_version()}; {ours}.",
        f"- Peer: {setting.peer_versions}; its own run.sh (uvloop, httptools).",
        "- vs columns: this row's req/s over the peer's, same database and scenario.",
    ])  # fmt: skip


def _scenarios(setting: Setting) -> str:
    lines = [
        "| scenario | bench/wrk script (both sides) | mirrors the peer's | in flight "
        "| s (warm-up + runs x run) | gRPC direct |",
        "|---|---|---|---:|---:|---|",
    ]
    for s in setting.scenarios:
        direct = f"{s.direct.rpc} to {s.direct.service}" if s.direct else "-"
        in_flight = s.connections or setting.load.connections
        runs = min(setting.repeat, s.max_repeat or setting.repeat)
        warmup, duration = max(setting.load.warmup, s.min_warmup), max(setting.load.duration, s.min_duration)
        seconds = f"{warmup:g} + {runs} x {duration:g}"
        lines.append(f"| {s.name} | {s.script} | {s.mirrors} | {in_flight} | {seconds} | {direct} |")
    return "\n".join(lines)


def _goals(goals: list[Goal]) -> str:
    lines = [
        "| route (facade / peer, 2 workers), or ceiling | database | ratio | at least | verdict |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {g.what} | {g.database} | {g.ratio:.2f}x | {g.least:.1f}x | {_verdict(g.met)} |" for g in goals
    ]
    met = sum(g.met for g in goals)
    return "\n".join([*lines, "", f"{met} of {len(goals)} met (one run's median: see the ranges above)."])


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _processes(processes: list[Processes]) -> str:
    lines = [
        "| system | database | ready after | peak RSS per process, MiB | total MiB "
        f"| ready < {STARTUP_GOAL_SECONDS:g} s | each process < {PROCESS_GOAL_MB:g} MB |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for p in processes:
        each = ", ".join(f"{name} {mib:.0f}" for name, mib in p.memory)
        ready = f"{p.ready_after:.2f} s{f' ({p.note})' if p.note else ''}"
        verdicts = "- | -"
        if p.goals:
            largest = max((mib * 2**20 / 1e6 for name, mib in p.memory if name != "up"), default=0.0)
            verdicts = (f"{_verdict(p.ready_after < STARTUP_GOAL_SECONDS)} "
                        f"| {_verdict(largest < PROCESS_GOAL_MB)} (largest {largest:.0f} MB)")  # fmt: skip
        total = sum(m for _, m in p.memory)
        lines.append(f"| {p.system} | {p.database} | {ready} | {each} | {total:.0f} | {verdicts} |")
    return "\n".join(lines)
