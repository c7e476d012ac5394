"""deploy/prometheus/alerts.yml: it parses, and every expression names metrics a worker exports."""

from __future__ import annotations

import re
from typing import Any

import yaml
from prometheus_client import generate_latest

from app.metrics import FINAL_OUTCOMES, LIVE_STATUSES, QueueCollector, WorkerMetrics
from app.queries import ClaimedRun, QueueDepth
from tests.support.http import samples
from tests.support.paths import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus itself adds to every target.
BUILT_IN = {"up"}
FUNCTIONS = {"sum", "rate", "max", "avg", "min", "and", "or", "unless"}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _exported_names() -> set[str]:
    metrics = WorkerMetrics(["p"])
    metrics.run_claimed(ClaimedRun(1, "p", {}, 1, 3, 60.0))
    metrics.attempt_ended("p", "succeeded", 0.5)
    metrics.registry.register(QueueCollector(lambda: [QueueDepth("p", "pending", 1, 2.0)], 0, ["p"]))
    return {name for name, _ in samples(generate_latest(metrics.registry).decode())}


def test_every_rule_is_complete() -> None:
    """Each rule has a unique name, an expression, a duration, a severity and a summary."""
    rules = _rules()
    assert len(rules) >= 6
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_expressions_name_only_metrics_the_worker_exports() -> None:
    """Every metric an expression reads is exported by a worker (or is Prometheus's own `up`)."""
    exported = _exported_names()
    for rule in _rules():
        # Drop label matchers, ranges, strings and grouping labels; what is left names series.
        expr = re.sub(r'\{[^}]*\}|\[[^]]*\]|"[^"]*"|\b(?:by|without)\s*\([^)]*\)', " ", rule["expr"])
        metrics = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - FUNCTIONS
        assert metrics, rule["alert"]
        assert metrics <= exported | BUILT_IN, (rule["alert"], metrics - exported)


def test_label_values_in_expressions_exist() -> None:
    """outcome and status matchers only use values the worker produces."""
    for rule in _rules():
        for label, pattern in re.findall(r'(outcome|status)=~?"([^"]+)"', rule["expr"]):
            known = FINAL_OUTCOMES if label == "outcome" else LIVE_STATUSES
            assert set(pattern.split("|")) <= set(known), rule["alert"]
