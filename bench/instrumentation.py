"""What metrics and traces cost, within one `bench.run`: the same build started several times at
once on the same databases, as deployed (metrics on, traces off), with metrics off, and with traces
on as well (every request sampled, and one in ten as production would; spans exported over
OTLP/HTTP to a receiver that drops them), their runs alternating so that the machine's drift falls
on each alike.

Metrics have a budget: at most 5% of req/s on `GET /products/{id}` and `POST /inventory`.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.databases import Databases
from bench.harness import Figures, Load, alternate_wrk
from bench.scenarios import Scenario
from bench.systems import invmesh

SCENARIOS = ("get-product", "movement")


@dataclass(frozen=True)
class Variant:
    name: str
    metrics: bool
    sampled: float | None = None  # traces on, this share of new traces sampled; None: traces off

    def env(self, sink: str) -> dict[str, str]:
        if self.sampled is None:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(self.sampled),
        }


AS_DEPLOYED = Variant("metrics on, traces off (as deployed)", metrics=True)
METRICS_OFF = Variant("metrics off", metrics=False)
VARIANTS = (
    AS_DEPLOYED,
    METRICS_OFF,
    Variant("metrics on, traces on, all sampled", metrics=True, sampled=1.0),
    Variant("metrics on, traces on, 1 in 10 sampled", metrics=True, sampled=0.1),
)


@dataclass(frozen=True)
class Cost:
    """One route, each variant's runs; a round is one run of each, next to each other in time."""

    database: str
    scenario: str
    runs: dict[str, list[Figures]]  # by variant name

    def ratios(self, variant: Variant, baseline: Variant = METRICS_OFF) -> list[float]:
        """req/s of `variant` over `baseline`'s, round by round."""
        pairs = zip(self.runs[variant.name], self.runs[baseline.name], strict=True)
        return [a.rate / b.rate for a, b in pairs if b.rate]

    def cpu_ms(self, variant: Variant) -> float:
        """CPU milliseconds the variant's processes spent per answered call, over all its runs."""
        runs = self.runs[variant.name]
        answered = sum(f.answered for f in runs)
        return 1000 * sum(f.server_cpu for f in runs) / answered if answered else float("nan")


class _DropSpans(BaseHTTPRequestHandler):
    """OTLP/HTTP's answer to an export: 200 with an empty ExportTraceServiceResponse."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def span_sink() -> Iterator[str]:
    """A receiver of OTLP/HTTP exports on a thread of this process; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DropSpans)
    thread = threading.Thread(target=server.serve_forever, name="span-sink", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def measure(
    dbs: Databases,
    work: Path,
    ids: list[str],
    scenarios: list[tuple[Scenario, Load]],
    rounds: int,
    bcrypt: int,
) -> list[Cost]:
    """Every variant started at once on `dbs`, already seeded with the products `ids` (users'
    passwords at bcrypt cost `bcrypt`); each scenario run `rounds` times on each, alternating."""
    names = "; ".join(v.name for v in VARIANTS)
    print(f"bench: {dbs.name}: starting invmesh {len(VARIANTS)} times: {names}", file=sys.stderr, flush=True)
    ids_file = work / "invmesh-ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    costs = []
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(span_sink())
        systems = []
        for i, variant in enumerate(VARIANTS):
            start = invmesh(work, dbs.invmesh_env, products=ids, rounds=bcrypt, metrics=variant.metrics,
                            name=f"invmesh-{i}", extra_env=variant.env(sink))  # fmt: skip
            systems.append(stack.enter_context(start))
        for scenario, load in scenarios:
            targets = [
                (system.url, {**scenario.env, "IDS_FILE": str(ids_file), "TOKEN": system.token}, system.pid)
                for system in systems
            ]
            runs = alternate_wrk(targets, scenario.script, load, rounds)
            cost = Cost(dbs.name, scenario.name, {v.name: r for v, r in zip(VARIANTS, runs, strict=True)})
            costs.append(cost)
            print(f"bench: {dbs.name}, {scenario.name}: " + "; ".join(
                f"{v.name}: CPU per request {cost.cpu_ms(v) / cost.cpu_ms(METRICS_OFF):.3f}x metrics off"
                for v in VARIANTS if v != METRICS_OFF), file=sys.stderr, flush=True)  # fmt: skip
    return costs


def table(costs: list[Cost]) -> str:
    """The report's section: each route, each variant, against metrics off."""
    rounds = max(len(runs) for c in costs for runs in c.runs.values())
    variants = ", ".join(v.name for v in VARIANTS)
    lines = [
        f"The same build started {len(VARIANTS)} times at once on the same databases: {variants}; spans "
        "go over OTLP/HTTP to a receiver in the benchmark's process "
        f"that drops them. {rounds} rounds of one wrk run each, the systems in turn (the order reversed "
        "every other round). Budget: metrics cost at most 5% of req/s, as deployed over metrics off at "
        "least 0.95. CPU per request is what each system's processes used over its runs (until idle after "
        "each) over its answers: the cost itself, which other work on the machine moves far less than "
        "req/s.",
        "",
        "| database | scenario | variant | req/s | p50 ms | over metrics off: req/s, median of the rounds "
        "(range) | CPU ms per request | over metrics off: CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        off_cpu = c.cpu_ms(METRICS_OFF)
        for v in VARIANTS:
            runs = sorted(c.runs[v.name], key=lambda f: f.rate)
            median = runs[(len(runs) - 1) // 2]
            ratios = c.ratios(v)
            versus = "-" if v == METRICS_OFF or not ratios else (
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
            cpu_versus = "-" if v == METRICS_OFF else f"{c.cpu_ms(v) / off_cpu:.3f}"
            cells = [c.database, c.scenario, v.name, f"{median.rate:,.0f}", f"{median.p50_ms or 0:.1f}",
                     versus, f"{c.cpu_ms(v):.3f}", cpu_versus]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
