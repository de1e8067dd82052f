"""deploy/prometheus/alerts.yml is valid: the structure Prometheus loads, and every expression parses as PromQL."""

from __future__ import annotations

import re
from pathlib import Path

import promql_parser
import yaml

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
DURATION = re.compile(r"^\d+[smhdwy]$")
REQUIRED = {"TokenbridgeConsumerLag", "TokenbridgePendingAge", "TokenbridgeDeadLetters", "TokenbridgeErrorRate"}
REQUIRED |= {"TokenbridgeNoConsumers", "TokenbridgeRedisDown"}


def _rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_expression_is_valid_promql() -> None:
    for rule in _rules():
        promql_parser.parse(str(rule["expr"]))


def test_every_rule_has_what_prometheus_and_a_pager_need() -> None:
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert "for" not in rule or DURATION.match(str(rule["for"]))
        assert rule["labels"]["severity"] in ("warning", "critical")  # type: ignore[index]
        assert rule["annotations"]["summary"]  # type: ignore[index]


def test_the_alerts_cover_the_failure_model() -> None:
    assert {rule["alert"] for rule in _rules()} >= REQUIRED


def test_the_metrics_the_rules_use_exist_in_the_code() -> None:
    code = "".join(p.read_text() for d in ("app", "workers", "tasks") for p in (RULES.parents[2] / d).glob("*.py"))
    for rule in _rules():
        for metric in re.findall(r"tokenbridge_[a-z_]+", str(rule["expr"])):
            base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
            assert base in code or metric in code, f"{metric} is not exported"


def test_a_broken_expression_would_be_caught() -> None:
    try:
        promql_parser.parse("sum(rate(tokenbridge_events_sent_total[5m]) >")
    except ValueError:
        return
    raise AssertionError("the parser accepted a broken expression")
