"""deploy/observability: the Grafana dashboard and the Prometheus rules use only metric names the
code registers, and promtool accepts the rules and passes their unit tests."""

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.test_docs import _anchors

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "deploy" / "observability"

# Modules whose import registers invmesh's metrics in the default registry.
METRIC_MODULES = [
    "mesh.metrics",
    "mesh.db",
    "mesh.tokens",
    "facade.middleware",
    "auth.accounts",
    "inventory.stock",
]

# Families a collector reports only while a database pool is open (mesh/db.py: the waiting
# calls only for PostgreSQL and MariaDB), which this test process never opens.
REPORTED_WITH_A_POOL = {
    "invmesh_db_pool_in_use",
    "invmesh_db_pool_idle",
    "invmesh_db_pool_overflow",
    "invmesh_db_pool_waiting",
}
# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase",
    "histogram_quantile", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
    "label_values", "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers left once strings, label matchers, ranges,
    `by (...)` groupings and PromQL's own words are taken out."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r",\s*\w+\s*\)", ")", expr)  # label_values(selector, label)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"e\d*", w)}


def registered() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    histogram = ["_bucket", "_sum", "_count"]
    suffixes = {"counter": ["_total"], "histogram": histogram, "summary": histogram[1:]}
    # A labelled metric with no child yet has no samples: name the series from its type.
    return {
        metric.name + suffix for metric in REGISTRY.collect() for suffix in suffixes.get(metric.type, [""])
    }


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((HERE / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((HERE / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_metric_name_extraction_sees_selectors_not_labels() -> None:
    expr = 'sum by (job, le) (rate(grpc_server_handling_seconds_bucket{job=~"$job"}[5m])) / up > 0.5'
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "up"}


def test_dashboard_uses_only_registered_metrics() -> None:
    dashboard = json.loads((HERE / "dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    known = registered() | REPORTED_WITH_A_POOL | PROMETHEUS_SERIES
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert used - known == set()
    # Every allowed-but-missing name is really used, so the allow-list cannot rot silently.
    assert REPORTED_WITH_A_POOL - registered() <= used


def test_rules_use_only_registered_metrics_and_carry_runbooks() -> None:
    records = {r["record"] for r in rules() if "record" in r}
    operations_anchors = _anchors((ROOT / "docs" / "operations.md").read_text())
    known = registered() | REPORTED_WITH_A_POOL | PROMETHEUS_SERIES | records
    for rule in rules():
        assert metric_names(rule["expr"]) - known == set(), rule
        if "alert" in rule:
            assert rule["for"] and rule["labels"]["severity"] in {"critical", "warning", "info"}
            anchor = "alert-" + rule["alert"].lower()
            assert rule["annotations"]["runbook"] == f"docs/operations.md#{anchor}"
            assert anchor in operations_anchors, f"docs/operations.md has no heading for {anchor}"
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_promtool_checks_and_tests_the_rules() -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: deploy/observability/check.sh installs it")
        pytest.skip("promtool missing: run deploy/observability/check.sh as root")
    checks = [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yaml"]]
    for args in [*checks, ["test", "rules", "alerts.test.yaml"]]:
        result = subprocess.run(["promtool", *args], cwd=HERE, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
