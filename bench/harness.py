"""What every side-by-side benchmark shares: processes, the two load generators, figures, the table.

Load is closed-loop and the same for every target: `Load.connections` calls in flight for
`Load.duration` seconds after `Load.warmup` seconds of the same load. HTTP goes through `wrk`
(C, with a Lua script); gRPC through `Load.clients` spawned grpc.aio client processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from threading import Barrier

import grpc

WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
WRK_MISSING = (
    "bench: `wrk` is not installed. Install it from Debian/Ubuntu with\n"
    "    sudo apt-get install -y wrk\n"
    "(or build it from https://github.com/wg/wrk and put it on PATH), then run the benchmark again."
)
STOP_SECONDS = 20
# wrk counts an answer slower than this as a timeout error (and leaves it out of the latencies):
# the facade's own default deadline (FACADE_TIMEOUT_SECONDS), past which it answers 504 itself.
WRK_TIMEOUT = 10

# One unary call on a channel: a picklable factory (a module-level function, or a
# functools.partial of one) that gets the client's channel and returns the call to repeat.
GrpcCall = Callable[[grpc.aio.Channel], Callable[[], Awaitable[object]]]


@dataclass(frozen=True)
class Load:
    connections: int  # calls in flight in total
    duration: float  # seconds measured
    warmup: float  # seconds of the same load before, not measured
    clients: int = 2  # wrk threads, or gRPC client processes


@dataclass(frozen=True)
class Figures:
    """One measured run."""

    rate: float  # completed calls per second
    p50_ms: float | None
    p99_ms: float | None
    errors: str = ""  # empty when every call succeeded, else what failed and how often
    answered: int = 0  # responses received (wrk: all of the run's), or calls completed in the window (gRPC)
    non_2xx: int = 0
    socket_errors: int = 0  # wrk: connect, read and write errors and timeouts
    server_cpu: float = 0.0  # CPU seconds the server's processes used for the run, where measured
    created: int | None = None  # 201 answers, where the wrk script counts them (a mix's INs)


@dataclass(frozen=True)
class Row:
    database: str
    scenario: str
    target: str
    runs: list[Figures]

    @property
    def median(self) -> Figures:
        """The run with the median rate, the lower middle one for an even count; its latencies go with it."""
        ordered = sorted(self.runs, key=lambda f: f.rate)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def errors(self) -> str:
        return "; ".join(f.errors for f in self.runs if f.errors)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- processes ---------------------------------------------------------------


@contextlib.contextmanager
def process_group(
    args: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`args` in a new session, output to `log`; on exit, SIGTERM to that process group, then SIGKILL."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"bench: {args[0]} did not stop in {STOP_SECONDS}s; killing it", file=sys.stderr)
        _signal_group(process.pid, signal.SIGKILL)  # anything of ours still left in the group
        process.wait()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def wait_for(
    ready: Callable[[], bool],
    *,
    what: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60,
    poll: float = 0.1,
) -> float:
    """Polls `ready` every `poll` seconds until true; returns the seconds it took (right after starting
    the process: its startup time). Fails, showing the log, if the process dies."""
    started = time.monotonic()
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}:\n{tail(log)}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what} was not ready within {timeout:g}s:\n{tail(log)}")
        time.sleep(poll)
    return time.monotonic() - started


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (parents before children), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rpartition(")")[2].split()[1])  # after "pid (comm) state"
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo += sorted(children.get(pid, []))
    return tree


def wait_idle(root: int, *, below: float = 0.05, window: float = 0.25, timeout: float = 15) -> float:
    """Waits until the process tree of `root` uses less than `below` of a CPU over `window` seconds
    (or `timeout` passed); returns the seconds waited."""
    pids = process_tree(root)
    started = time.monotonic()
    used = cpu_seconds(pids)
    while time.monotonic() - started < timeout:
        time.sleep(window)
        used, before = cpu_seconds(pids), used
        if used - before < below * window:
            break
    return time.monotonic() - started


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of these processes (those still running), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set size so far (VmHWM), or None once it is gone."""
    with contextlib.suppress(OSError):
        found = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        return int(found[1]) / 1024 if found else None
    return None


def rss_mib(pid: int) -> float | None:
    """The process's resident set size now (VmRSS), or None once it is gone."""
    with contextlib.suppress(OSError):
        found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        return int(found[1]) / 1024 if found else None
    return None


def command_line(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


# ---- HTTP load: wrk ----------------------------------------------------------


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit(WRK_MISSING)


def run_wrk(
    url: str, script: str, env: dict[str, str], load: Load, repeat: int, server: int
) -> tuple[Figures, list[Figures]]:
    """A warm-up run, then `repeat` measured ones, of bench/wrk/<script> against `url`. After each,
    waits for the server (the process tree of `server`) to go idle: wrk closes its connections when
    it stops, but the server may go on with the calls in flight, and without the wait a slow call's
    next run (logins: ~6/s) would start behind a queue of dead requests."""

    def once(seconds: float) -> Figures:
        figures = parse_wrk(wrk(url, script, env, load, seconds))
        wait_idle(server)
        return figures

    warmup = once(load.warmup)
    return warmup, [once(load.duration) for _ in range(repeat)]


def alternate_wrk(
    targets: Sequence[tuple[str, dict[str, str], int]], script: str, load: Load, rounds: int
) -> list[list[Figures]]:
    """For servers running side by side, each a (url, wrk env, root pid): a warm-up each, then `rounds`
    rounds in which each runs once, in reverse order every other round (A B, B A, ...), so that a
    drift of the machine's speed falls on all alike. Returns each target's measured runs, with the
    CPU its processes used, up to their going idle after wrk stopped: unlike req/s, CPU per call
    hardly moves with what else runs on the machine."""

    def once(url: str, env: dict[str, str], server: int, seconds: float) -> Figures:
        pids = process_tree(server)
        used = cpu_seconds(pids)
        figures = parse_wrk(wrk(url, script, env, load, seconds))
        wait_idle(server)
        return dataclasses.replace(figures, server_cpu=cpu_seconds(pids) - used)

    for url, env, server in targets:
        once(url, env, server, load.warmup)
    runs: list[list[Figures]] = [[] for _ in targets]
    for round_ in range(rounds):
        order = list(enumerate(targets))
        for i, (url, env, server) in order if round_ % 2 == 0 else reversed(order):
            runs[i].append(once(url, env, server, load.duration))
    return runs


def wrk(url: str, script: str, env: dict[str, str], load: Load, seconds: float) -> str:
    """wrk's output for one run of bench/wrk/<script> against `url`, `seconds` long."""
    command = [
        "wrk", f"-t{load.clients}", f"-c{load.connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT}s", "--latency", "-s", str(WRK_SCRIPTS / script), url,
    ]  # fmt: skip
    lua_path = f"{WRK_SCRIPTS}/?.lua;;"  # the scripts' `require("common")`, then wrk's own path
    done = subprocess.run(
        command, env={**os.environ, **env, "LUA_PATH": lua_path}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or "Requests/sec" not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> Figures:
    """Requests/sec, the 50% and 99% latencies, non-2xx answers and socket errors, from `wrk --latency`."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    answered = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    if rate is None or answered is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{output}")

    def percentile(q: str) -> float | None:
        found = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        return float(found[1]) * _UNITS_MS[found[2]] if found else None

    errors = []
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors.append(f"non-2xx {non_2xx[1]}")
    socket_errors = re.search(r"Socket errors: (.+)", output)
    counts = [part.rsplit(" ", 1) for part in socket_errors[1].split(", ")] if socket_errors else []
    errors += [f"{kind} {n}" for kind, n in counts if n != "0"]
    created = re.search(r"^Created \(201\): (\d+)$", output, re.MULTILINE)
    return Figures(
        float(rate[1]), percentile("50"), percentile("99"), ", ".join(errors),
        int(answered[1]), int(non_2xx[1]) if non_2xx else 0, sum(int(n) for _, n in counts),
        created=int(created[1]) if created else None,
    )  # fmt: skip


# ---- gRPC load: spawned grpc.aio clients -------------------------------------


@dataclass
class _Tally:
    calls: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def run_grpc(target: str, call: GrpcCall, load: Load) -> Figures:
    """`load.clients` processes, `load.connections` calls in flight in all, measuring the same window."""
    # spawn, not fork: gRPC's core does not survive a fork of a process that has used it.
    context = get_context("spawn")
    share, extra = divmod(load.connections, load.clients)
    in_flight = [share + (i < extra) for i in range(load.clients)]
    with context.Manager() as manager, ProcessPoolExecutor(load.clients, mp_context=context) as pool:
        start = manager.Barrier(load.clients)
        futures = [pool.submit(_client, target, call, n, load, start) for n in in_flight]
        total = _Tally()
        for future in futures:
            tally = future.result()
            total.calls += tally.calls
            total.latencies += tally.latencies
            total.errors += tally.errors
    p50, p99 = _percentiles(total.latencies)
    errors = ", ".join(f"{code} {n}" for code, n in total.errors.most_common())
    return Figures(total.calls / load.duration, p50, p99, errors, total.calls)


def _percentiles(latencies: list[float]) -> tuple[float | None, float | None]:
    if len(latencies) < 2:
        return None, None
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def _client(target: str, call: GrpcCall, in_flight: int, load: Load, start: Barrier) -> _Tally:
    return asyncio.run(_drive(target, call, in_flight, load, start))


async def _drive(target: str, call: GrpcCall, in_flight: int, load: Load, start: Barrier) -> _Tally:
    tally = _Tally()
    async with grpc.aio.insecure_channel(target) as channel:
        once = call(channel)
        await channel.channel_ready()
        start.wait(timeout=60)  # every process warms up and measures the same window
        measured_from = time.perf_counter() + load.warmup
        until = measured_from + load.duration

        async def loop() -> None:
            await asyncio.sleep(random.random() / 100)  # spread the first calls a little
            while (started := time.perf_counter()) < until:
                try:
                    await once()
                except grpc.aio.AioRpcError as exc:
                    tally.errors[exc.code().name] += 1
                    continue
                finished = time.perf_counter()
                if measured_from <= finished <= until:
                    tally.calls += 1
                    tally.latencies.append(finished - started)

        await asyncio.gather(*(loop() for _ in range(in_flight)))
    return tally


# ---- the table ---------------------------------------------------------------


def markdown_table(rows: Sequence[Row], baselines: Sequence[str]) -> str:
    """A line per row, and a column per baseline target: the row's req/s over that target's, same
    database and scenario."""
    by_key = {(row.database, row.scenario, row.target): row.median.rate for row in rows}
    header = ["database", "scenario", "target", "req/s", "p50 ms", "p99 ms", "errors",
              *(f"vs {b}" for b in baselines)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for row in rows:
        median = row.median
        ratios = [_ratio(median.rate, by_key.get((row.database, row.scenario, b))) for b in baselines]
        cells = [
            row.database, row.scenario, row.target, _rate(row), _ms(median.p50_ms), _ms(median.p99_ms),
            row.errors or "0", *ratios,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(row: Row) -> str:
    if len(row.runs) == 1:
        return f"{row.median.rate:,.0f}"
    rates = [f.rate for f in row.runs]
    return f"{row.median.rate:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ratio(rate: float, baseline: float | None) -> str:
    return "n/a" if not baseline else f"{rate / baseline:.2f}x"
