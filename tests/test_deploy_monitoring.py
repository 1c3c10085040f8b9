"""The alert rules and the Grafana dashboard in deploy/ watch metrics the service exports: a
metric renamed in service/metrics.py without them would leave an alert watching nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hanseq.service.metrics import Metrics
from hanseq.service.protocol import TaskInfo

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NAME = re.compile(r"\b((?:hanseq|grpc_server|process)_[a-z_]+)")


def exported() -> set[str]:
    """Every sample name a server's /metrics can show, with a state as it has when serving."""
    metrics = Metrics()
    task = TaskInfo(model_id="m", model_version="1", metric="bleu")
    metrics.watch(
        lambda: {"queued": {"t": 0}, "queue_limit": 1, "alive": 1, "busy": 0, "tasks": {"t": task}}
    )
    metrics.requests.labels("t", "OK").inc()
    for histogram in (metrics.latency, metrics.queue_wait, metrics.batch_size):
        histogram.labels("t").observe(1)
    metrics.compute.labels("cpu", "t").observe(1)
    metrics.tokens.labels("t").inc()
    metrics.cache_lookups.labels("local", "hit").inc()
    metrics.cache_errors.inc()
    metrics.grpc_started.labels("UNARY", "s", "m").inc()
    metrics.grpc_handled.labels("UNARY", "s", "m", "OK").inc()
    metrics.grpc_seconds.labels("UNARY", "s", "m").observe(1)
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def names_in(expression: str) -> set[str]:
    return set(NAME.findall(expression))


def test_alert_rules_are_well_formed_and_watch_exported_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "HanseqErrorRatioHigh",
        "HanseqLatencyP99High",
        "HanseqQueueSaturated",
        "HanseqCacheDown",
        "HanseqNoHealthyWorker",
    }
    known = exported()
    for alert in alerts:
        assert alert["expr"].strip() and alert["annotations"]["summary"] and alert["labels"]
        missing = names_in(alert["expr"]) - known
        assert not missing, f"{alert['alert']} watches metrics nobody exports: {missing}"


def test_dashboard_panels_query_exported_metrics():
    dashboard = json.loads(
        (DEPLOY / "k8s" / "base" / "grafana" / "hanseq-dashboard.json").read_text()
    )
    known = exported()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert not names_in(expr) - known, expr
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
