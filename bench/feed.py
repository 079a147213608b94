"""What the movement feed costs inventory, within one `bench.run`: the memory of idle
WatchMovements streams, and POST /inventory while streams read every movement as it is recorded.
The second alone, as `make bench` measures it, for comparing versions:

    .venv/bin/python -m bench.feed --database postgresql [--rounds 4] [--duration 5] [--streams 10]

The watchers are real grpc.aio clients in a spawned process of their own, so that their CPU is not
counted as the server's. Each stream has a connection of its own, as separate clients would, starts
live at the feed's end (`after` empty) and names no product or location: every movement recorded
while it is open reaches it. A stream counts as open once its first heartbeat came (the server sends
one as soon as the stream is live).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from bench.databases import DATABASES, databases
from bench.harness import (
    Figures,
    Load,
    cpu_seconds,
    parse_wrk,
    process_tree,
    require_wrk,
    rss_mib,
    wait_idle,
    wrk,
)
from bench.scenarios import BY_KEY, Scenario
from bench.systems import Invmesh, invmesh, invmesh_label
from invmesh.inventory.v1 import inventory_service_pb2 as pb
from invmesh.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

OPEN_SECONDS = 60  # the most the watchers may take to be live
SETTLE_SECONDS = 1.0  # after the watchers are live, before memory is read: their first messages sent
CATCH_UP_SECONDS = 15  # the most to wait for the watchers to receive what is still being sent
MEMORY_PROCESSES = ("inventory", "facade")  # the facade is not on the streams' way: a control


# ---- the watcher client process ------------------------------------------------


@dataclass(frozen=True)
class Received:
    """What a client process's streams got so far."""

    movements: list[int]  # movement events, by stream
    messages: list[int]  # the messages that carried them (several events each, when ready at once)
    ended: Counter[str] = field(default_factory=Counter)  # streams that ended, by status code


class Watchers:
    """The control end of a watcher client process."""

    def __init__(self, control: Connection, pid: int) -> None:
        self._control = control
        self.pid = pid  # the client process, whose CPU competes with the servers' on this machine

    def received(self) -> Received:
        self._control.send("count")
        answer: Received = self._control.recv()
        return answer

    def caught_up(self) -> Received:
        """What the streams received once it stops growing (two readings 0.3 s apart agree)."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        last = self.received()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.received()
            if now == last:
                break
            last = now
        return last


@contextlib.contextmanager
def watching(address: str, token: str, streams: int) -> Iterator[Watchers]:
    """`streams` WatchMovements streams to `address` in a new process, each live when this yields."""
    context = get_context("spawn")  # gRPC's core does not survive a fork of a process that used it
    control, theirs = context.Pipe()
    process = context.Process(target=_client, args=(address, token, streams, theirs), daemon=True)
    process.start()
    try:
        if not control.poll(OPEN_SECONDS):
            raise RuntimeError(f"{streams} WatchMovements streams were not live within {OPEN_SECONDS}s")
        opened: Received = control.recv()
        if opened.ended:
            raise RuntimeError(f"WatchMovements streams ended as they opened: {dict(opened.ended)}")
        assert process.pid is not None
        yield Watchers(control, process.pid)
    finally:
        with contextlib.suppress(OSError):
            control.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def _client(address: str, token: str, streams: int, control: Connection) -> None:
    asyncio.run(_watch(address, token, streams, control))


async def _watch(address: str, token: str, streams: int, control: Connection) -> None:
    """Opens the streams, says when all are live, then answers "count" with what they received
    until told anything else."""
    movements, messages = [0] * streams, [0] * streams
    ended: Counter[str] = Counter()
    live = [asyncio.Event() for _ in range(streams)]
    metadata = (("authorization", f"Bearer {token}"),)
    # A subchannel pool of its own: a connection per channel, not one shared by all.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(streams)
    ]

    async def follow(i: int, channel: grpc.aio.Channel) -> None:
        stream = pb_grpc.InventoryServiceStub(channel).WatchMovements(
            pb.WatchMovementsRequest(after=""), metadata=metadata
        )
        try:
            async for message in stream:
                kinds = [event.WhichOneof("event") for event in message.events]
                if "movement" in kinds:
                    movements[i] += kinds.count("movement")
                    messages[i] += 1
                if "heartbeat" in kinds:
                    live[i].set()
            ended["OK"] += 1
        except grpc.aio.AioRpcError as error:
            ended[error.code().name] += 1
        live[i].set()  # ended: counted, not waited for

    tasks = [asyncio.create_task(follow(i, channel)) for i, channel in enumerate(channels)]
    await asyncio.gather(*(event.wait() for event in live))
    control.send(Received(list(movements), list(messages), Counter(ended)))
    while await asyncio.to_thread(control.recv) == "count":
        control.send(Received(list(movements), list(messages), Counter(ended)))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(channel.close() for channel in channels))


# ---- idle streams: memory --------------------------------------------------------


@dataclass(frozen=True)
class IdleMemory:
    """Resident memory (MiB) of a process with no stream, `streams` idle ones, and twice as many."""

    database: str
    process: str
    streams: int
    before: float
    opened: float
    doubled: float

    def per_stream_kib(self, after: float, before: float) -> float:
        return 1024 * (after - before) / self.streams


def idle_memory(mesh: Invmesh, database: str, streams: int) -> list[IdleMemory]:
    """The resident memory of inventory and the facade before and after `streams` idle streams
    are opened, and after as many more (the second lot shows what a stream costs once the first
    stream's one-time costs are paid)."""
    labels = {invmesh_label(pid, pid == mesh.pid): pid for pid in process_tree(mesh.pid)}
    pids = {name: labels[name] for name in MEMORY_PROCESSES if name in labels}
    wait_idle(mesh.pid)

    def now() -> dict[str, float]:
        return {name: rss_mib(pid) or 0.0 for name, pid in pids.items()}

    address = mesh.addresses["inventory"]
    before = now()
    with watching(address, mesh.token, streams):
        time.sleep(SETTLE_SECONDS)
        opened = now()
        with watching(address, mesh.token, streams):
            time.sleep(SETTLE_SECONDS)
            doubled = now()
    return [IdleMemory(database, n, streams, before[n], opened[n], doubled[n]) for n in pids]


def memory_table(rows: list[IdleMemory]) -> str:
    lines = [
        "Resident memory (VmRSS) of each process before any stream, with idle WatchMovements streams "
        "open (each on its own connection, live at the feed's end; read after they had their first "
        f"heartbeat and {SETTLE_SECONDS:g} s more), and with as many more. The streams go to "
        "inventory directly; the facade is a control. Read before the load rows.",
        "",
        "| database | process | no stream, MiB | N streams, MiB | per stream, KiB | 2N streams, MiB "
        "| per stream of the second N, KiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        first, second = m.per_stream_kib(m.opened, m.before), m.per_stream_kib(m.doubled, m.opened)
        lines.append(
            f"| {m.database} | {m.process} (N = {m.streams}) | {m.before:.1f} | {m.opened:.1f} | "
            f"{first:.1f} | {m.doubled:.1f} | {second:.1f} |"
        )
    return "\n".join(lines)


# ---- active streams: POST /inventory -----------------------------------------------


@dataclass(frozen=True)
class WatchedRun:
    figures: Figures  # server_cpu: every process of `invmesh up`
    inventory_cpu: float  # CPU seconds of the inventory process alone
    facade_cpu: float  # the facade's: its work per request is the same with streams or without
    received: Received | None  # None: no watchers during the run
    client_cpu: float = 0.0  # CPU seconds of the streams' client process


@dataclass(frozen=True)
class Watched:
    """POST /inventory's rounds, each one run without streams and one with `streams`."""

    database: str
    scenario: str
    streams: int
    in_flight: int  # wrk's connections: requests that may land after a run stopped
    without: list[WatchedRun]
    with_streams: list[WatchedRun]
    load_average: float  # the machine's, over the last minute, when the rounds ended

    def ratios(self) -> list[float]:
        """req/s with the streams over without, round by round."""
        pairs = zip(self.with_streams, self.without, strict=True)
        return [a.figures.rate / b.figures.rate for a, b in pairs if b.figures.rate]

    def check(self) -> tuple[str, bool]:
        """Every stream received every acknowledged movement, and no more than could have landed."""
        lines, ok = [], True
        for run in self.with_streams:
            assert run.received is not None
            figures = run.figures
            acknowledged = figures.answered - figures.non_2xx
            unknown = figures.non_2xx + figures.socket_errors + self.in_flight
            low, high = min(run.received.movements), max(run.received.movements)
            fine = acknowledged <= low and high <= acknowledged + unknown and not run.received.ended
            ok &= fine
            ended = f", streams ended: {dict(run.received.ended)}" if run.received.ended else ""
            sent = _span(min(run.received.messages), max(run.received.messages))
            lines.append(
                f"{acknowledged:,} acknowledged, each stream {_span(low, high)} in {sent} messages{ended}"
            )
        verdict = "every stream got every acknowledged movement" if ok else "MISSED OR EXTRA EVENTS"
        return f"movement events per stream, by run: {'; '.join(lines)}: {verdict}", ok


def _span(low: int, high: int) -> str:
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def with_watchers(
    mesh: Invmesh, database: str, ids_file: Path, scenario: Scenario, load: Load, rounds: int, streams: int
) -> Watched:
    """A warm-up each way, then `rounds` rounds of one wrk run without streams and one with
    `streams` reading every movement, in reverse order every other round."""
    env = {**scenario.env, "IDS_FILE": str(ids_file), "TOKEN": mesh.token}
    address = mesh.addresses["inventory"]
    pids = process_tree(mesh.pid)
    labels = {invmesh_label(pid, pid == mesh.pid): pid for pid in pids}
    inventory, facade = labels["inventory"], labels["facade"]

    def once(watchers: int, seconds: float) -> WatchedRun:
        with contextlib.ExitStack() as stack:
            feed = stack.enter_context(watching(address, mesh.token, watchers)) if watchers else None
            client = [feed.pid] if feed else []
            used, inventory_used, facade_used, client_used = (
                cpu_seconds(pids),
                cpu_seconds([inventory]),
                cpu_seconds([facade]),
                cpu_seconds(client),
            )
            figures = parse_wrk(wrk(mesh.url, scenario.script, env, load, seconds))
            wait_idle(mesh.pid)  # the streams still being sent to included
            received = feed.caught_up() if feed else None
            cpu, inventory_cpu = cpu_seconds(pids) - used, cpu_seconds([inventory]) - inventory_used
            facade_cpu, client_cpu = cpu_seconds([facade]) - facade_used, cpu_seconds(client) - client_used
        return WatchedRun(
            dataclasses.replace(figures, server_cpu=cpu), inventory_cpu, facade_cpu, received, client_cpu
        )

    once(0, load.warmup)
    once(streams, load.warmup)
    without: list[WatchedRun] = []
    with_streams: list[WatchedRun] = []
    for round_ in range(rounds):
        order = [(0, without), (streams, with_streams)]
        for watchers, runs in order if round_ % 2 == 0 else reversed(order):
            runs.append(once(watchers, load.duration))
    load_average = os.getloadavg()[0]
    return Watched(database, scenario.name, streams, load.connections, without, with_streams, load_average)


def load_table(rows: list[Watched]) -> str:
    lines = [
        "The same system, rounds of one wrk run without streams and one with N streams reading "
        "every movement live (a client process of their own; streams opened before and closed after "
        "each run, outside its CPU), the order reversed every other round. CPU per request is what "
        "the processes of `invmesh up` used from the run's start until idle after it (the streams "
        "still being sent to included) over the answers; the streams' client process runs on the same "
        "two cores, so its CPU is taken from the servers'. The machine's speed drifts between runs; "
        "the facade, which the streams do not pass, does the same work per request in every run, so "
        "inventory's CPU over the facade's shows the streams' cost to inventory apart from the drift. "
        "Budget: with 10 streams, req/s at least 0.95 of without.",
        "",
        "| database | scenario | streams | req/s (range) | over no streams: req/s, median of the rounds "
        "(range) | CPU ms per request, all | inventory | over no streams: CPU all / inventory "
        "| inventory's CPU over the facade's, median of the runs (range) "
        "| the streams' client process, CPU ms per request | load average at the end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in rows:
        base_all, base_inventory = _cpu_ms(w.without)
        for streams, runs in ((0, w.without), (w.streams, w.with_streams)):
            rates = sorted(r.figures.rate for r in runs)
            rate = f"{rates[(len(rates) - 1) // 2]:,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f})"
            ratios = w.ratios()
            versus = "-" if not streams else (
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
            cpu_all, cpu_inventory = _cpu_ms(runs)
            cpu_versus = (
                "-" if not streams else f"{cpu_all / base_all:.3f} / {cpu_inventory / base_inventory:.3f}"
            )
            answered = sum(r.figures.answered for r in runs) or 1
            client = "-" if not streams else f"{1000 * sum(r.client_cpu for r in runs) / answered:.3f}"
            over_facade = sorted(r.inventory_cpu / r.facade_cpu for r in runs if r.facade_cpu)
            control = (
                f"{statistics.median(over_facade):.2f} ({over_facade[0]:.2f}-{over_facade[-1]:.2f})"
                if over_facade
                else "-"
            )
            lines.append(
                f"| {w.database} | {w.scenario} | {streams} | {rate} | {versus} | {cpu_all:.3f} | "
                f"{cpu_inventory:.3f} | {cpu_versus} | {control} | {client} | {w.load_average:.2f} |"
            )
    return "\n".join(lines)


def _cpu_ms(runs: list[WatchedRun]) -> tuple[float, float]:
    """CPU milliseconds per answered request over the runs: all of invmesh's processes, inventory."""
    answered = sum(r.figures.answered for r in runs) or 1
    return (
        1000 * sum(r.figures.server_cpu for r in runs) / answered,
        1000 * sum(r.inventory_cpu for r in runs) / answered,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=DATABASES, default="sqlite")
    parser.add_argument("--rounds", type=int, default=4, help="rounds without and with streams (default 4)")
    parser.add_argument(
        "--duration", type=float, default=5, help="seconds per run (default 5, as make bench)"
    )
    parser.add_argument("--streams", type=int, default=10, help="streams in the runs with them (default 10)")
    parser.add_argument(
        "--products", type=int, default=1000, help="products seeded (default 1000, as make bench)"
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    require_wrk()
    load = Load(connections=64, duration=args.duration, warmup=2)
    with tempfile.TemporaryDirectory() as tmp, databases(args.database, Path(tmp), args.postgres) as dbs:
        with invmesh(Path(tmp), dbs.invmesh_env, products=args.products, rounds=4) as mesh:
            ids = Path(tmp) / "ids"
            ids.write_text("\n".join(mesh.product_ids))
            watched = with_watchers(
                mesh, args.database, ids, BY_KEY["movement"], load, args.rounds, args.streams
            )
    print(load_table([watched]))
    print(watched.check()[0])


if __name__ == "__main__":
    main()
