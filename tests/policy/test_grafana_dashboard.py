"""deploy/grafana/tokenbridge.json imports into Grafana, and every expression in it names only metrics the code
exports and operations.md documents; the queue comes first, then the latency of each stage."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenbridge.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What a scrape shows of each metric family, by its type (a counter also shows ``_created``; nothing here uses it).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
# Grafana's variables, replaced by what Grafana puts there before the expression is parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return result


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _expressions(panel: dict[str, Any]) -> list[str]:
    return [str(target["expr"]) for target in panel["targets"]]


def _exported() -> set[str]:
    """Every sample name the processes' registries expose: web (app.metrics), worker (tasks.metrics), consumer
    (workers.metrics)."""
    for module in ("app.metrics", "tasks.metrics", "workers.metrics"):
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("tokenbridge_"):
            names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    return names


# Expressions around one other expression (``.expr``).
_WRAPPERS = (promql_parser.AggregateExpr, promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)


def _selectors(expr: Any) -> Iterator[str]:
    """The metric name of every vector selector in a parsed expression."""
    if isinstance(expr, promql_parser.VectorSelector):
        yield expr.name or ""
    elif isinstance(expr, promql_parser.MatrixSelector):
        yield from _selectors(expr.vector_selector)
    elif isinstance(expr, promql_parser.BinaryExpr):
        yield from _selectors(expr.lhs)
        yield from _selectors(expr.rhs)
    elif isinstance(expr, promql_parser.Call):
        for arg in expr.args:
            yield from _selectors(arg)
    elif isinstance(expr, _WRAPPERS):
        yield from _selectors(expr.expr)


def _metrics(expression: str) -> list[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"a Grafana variable the test does not know: {expression}"
    return list(_selectors(promql_parser.parse(expression)))


def test_the_dashboard_is_importable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "tokenbridge" and dashboard["title"] == "tokenbridge"
    assert "id" not in dashboard or dashboard["id"] is None  # Grafana gives it one at import
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in ("row", "timeseries", "stat"), panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24 and position["h"] > 0, panel["title"]


def test_every_panel_queries_the_chosen_prometheus() -> None:
    for panel in _panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["refId"], panel["title"]


def test_every_expression_names_only_metrics_the_code_exports() -> None:
    exported = _exported()
    assert {"tokenbridge_work_lag", "tokenbridge_events_sent_total", "tokenbridge_processor_seconds_bucket"} <= exported
    unknown = {
        (panel["title"], metric)
        for panel in _panels()
        for expression in _expressions(panel)
        for metric in _metrics(expression)
        if metric not in exported
    }
    assert unknown == set()


def test_every_metric_used_is_documented() -> None:
    documented = set(re.findall(r"^\| `(tokenbridge_\w+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.M))
    used = {metric for panel in _panels() for expression in _expressions(panel) for metric in _metrics(expression)}
    assert {re.sub(r"_(bucket|sum|count)$", "", metric) for metric in used} - documented == set()


def test_the_queue_comes_first_then_the_latency_of_each_stage() -> None:
    rows = [panel for panel in _dashboard()["panels"] if panel["type"] == "row"]
    assert [row["title"] for row in rows[:2]] == ["Queue and backlog", "Latency per stage"]
    first_row = [panel for panel in _panels() if panel["gridPos"]["y"] < rows[1]["gridPos"]["y"]]
    first_metrics = {metric for panel in first_row for e in _expressions(panel) for metric in _metrics(e)}
    assert {"tokenbridge_work_lag", "tokenbridge_work_pending", "tokenbridge_work_oldest_pending_seconds"} <= (
        first_metrics
    )
    second_row = [
        panel for panel in _panels() if rows[1]["gridPos"]["y"] < panel["gridPos"]["y"] < rows[2]["gridPos"]["y"]
    ]
    latencies = {metric for panel in second_row for e in _expressions(panel) for metric in _metrics(e)}
    stages = ("time_to_first_token_seconds", "delivery_latency_seconds", "processor_seconds")
    assert {f"tokenbridge_{stage}_bucket" for stage in stages} <= latencies


def test_a_metric_the_code_does_not_export_would_be_caught() -> None:
    assert _metrics("sum(rate(tokenbridge_no_such_thing_total[$__rate_interval])) / max(up)") == [
        "tokenbridge_no_such_thing_total",
        "up",
    ]
    assert "tokenbridge_no_such_thing_total" not in _exported()
