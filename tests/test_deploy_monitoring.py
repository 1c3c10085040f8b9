"""The alert rules, the Grafana dashboard and the autoscalers in deploy/ watch metrics the
service exports: a metric renamed in service/metrics.py without them would leave an alert
watching nothing.

The rules and every dashboard query go through the real promtool (`make test` installs the
Debian package `prometheus`, which has it): `promtool check rules` parses them and `promtool
test rules` runs deploy/prometheus/alerts_test.yml, where each alert meets series that must
fire it and series that must not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hanseq.service.metrics import Metrics
from hanseq.service.protocol import TaskInfo

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "k8s" / "base" / "grafana" / "hanseq-dashboard.json"
NAME = re.compile(r"\b((?:hanseq|grpc_server|process)_[a-z_]+)")
# A metric name and the matchers after it, if any: hanseq_x{a="b", c=~"d"}
SELECTOR = re.compile(r"\b((?:hanseq|grpc_server|process)_[a-z_]+)\b(\{[^}]*\})?")
# What every dashboard query must filter on, so that one shared Prometheus (many namespaces,
# many jobs) never mixes another deployment's series into a panel.
FILTERS = ('namespace="$namespace"', 'job="$job"', 'pod=~"$pod"')
# Concrete values for Grafana's variables, to hand the queries to promtool.
GRAFANA_VALUES = {
    "$__rate_interval": "1m",
    "$namespace": "hanseq",
    "$job": "hanseq-metrics",
    "$pod": ".+",
}


def fake_nvml() -> types.SimpleNamespace:
    """The part of pynvml that metrics.py calls, for one GPU whose only process is this one:
    enough for the GPU series to be exported on a machine without a GPU."""

    class NVMLError(Exception):
        pass

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=2**30, total=2**34),
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=50),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [
            types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2**30)
        ],
    )


def exported() -> set[str]:
    """Every sample name a server's /metrics can show, with a state as it has when serving:
    one CPU and one GPU worker (this process stands in for both; NVML is faked)."""
    metrics = Metrics()
    task = TaskInfo(model_id="m", model_version="1", metric="bleu")
    workers = [
        {"worker": "0", "device": "cpu", "pid": os.getpid()},
        {"worker": "1", "device": "cuda:0", "pid": os.getpid()},
    ]
    metrics.watch(
        lambda: {
            "queued": {"t": 0},
            "queue_limit": 1,
            "alive": 2,
            "busy": 0,
            "tasks": {"t": task},
            "shares": {("m", "1"): 1.0},
            "workers": workers,
        }
    )
    metrics.requests.labels("t", "OK").inc()
    metrics.model_requests.labels("m", "1", "t").inc()
    metrics.batch_items.labels("t", "OK").inc()
    for histogram in (metrics.latency, metrics.queue_wait, metrics.batch_size):
        histogram.labels("t").observe(1)
    metrics.compute.labels("cpu", "t").observe(1)
    metrics.tokens.labels("t").inc()
    metrics.worker_restarts.labels("cpu").inc()
    metrics.cache_lookups.labels("local", "hit").inc()
    metrics.cache_errors.inc()
    metrics.grpc_started.labels("UNARY", "s", "m").inc()
    metrics.grpc_handled.labels("UNARY", "s", "m", "OK").inc()
    metrics.grpc_seconds.labels("UNARY", "s", "m").observe(1)
    with mock.patch.dict(sys.modules, {"pynvml": fake_nvml()}):
        text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def names_in(expression: str) -> set[str]:
    return set(NAME.findall(expression))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `make test` installs it (Debian package prometheus; "
            "by hand: apt-get install prometheus)"
        )
    return subprocess.run(
        [path, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r for group in rules["groups"] for r in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard."""
    return [(panel, t) for panel in dashboard()["panels"] for t in panel["targets"]]


# -- what the service exports ----------------------------------------------------------------


def test_the_new_metrics_are_exported_and_no_created_series():
    known = exported()
    assert {
        "hanseq_worker_resident_memory_bytes",
        "hanseq_worker_gpu_memory_bytes",
        "hanseq_worker_restarts_total",
        "hanseq_compute_seconds_bucket",
        "hanseq_batch_items_total",
        "hanseq_gpu_utilization_ratio",
        "process_resident_memory_bytes",
    } <= known
    # nobody reads _created, and every counter and histogram would export one more series
    assert not {name for name in known if name.endswith("_created")}


# -- alerts ----------------------------------------------------------------------------------


def test_alert_rules_are_well_formed_and_watch_exported_metrics():
    alerts = alert_rules()
    assert {a["alert"] for a in alerts} >= {
        "HanseqErrorRatioHigh",
        "HanseqLoadShedding",
        "HanseqDeadlineMisses",
        "HanseqLatencyP99High",
        "HanseqQueueSaturated",
        "HanseqCacheDown",
        "HanseqNoHealthyWorker",
    }
    known = exported()
    readme = (DEPLOY / "README.md").read_text()
    for alert in alerts:
        name = alert["alert"]
        assert alert["expr"].strip()
        assert alert["labels"]["severity"] in {"page", "warn"}, name
        annotations = alert["annotations"]
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{name} has no {key} annotation"
        # the runbook hint points at a README entry that exists
        assert annotations["runbook"] == f"deploy/README.md, Alerts: {name}"
        assert f"**{name}**" in readme, f"deploy/README.md does not explain {name}"
        missing = names_in(alert["expr"]) - known
        assert not missing, f"{name} watches metrics nobody exports: {missing}"


def test_the_error_ratio_leaves_out_what_other_alerts_watch():
    alerts = {a["alert"]: a for a in alert_rules()}
    excluded = set(
        re.search(r'code!~"([^"]+)"', alerts["HanseqErrorRatioHigh"]["expr"])[1].split("|")
    )
    assert {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"} <= excluded
    assert 'code="RESOURCE_EXHAUSTED"' in alerts["HanseqLoadShedding"]["expr"]
    assert 'code="DEADLINE_EXCEEDED"' in alerts["HanseqDeadlineMisses"]["expr"]
    # the dashboard's error ratio is the alert's: same codes left out
    (panel,) = [p for p in dashboard()["panels"] if p["title"].startswith("Server-side error")]
    (target,) = panel["targets"]
    assert set(re.search(r'code!~"([^"]+)"', target["expr"])[1].split("|")) == excluded


def test_the_prometheusrule_is_the_alerts_file():
    rule = yaml.safe_load((DEPLOY / "k8s" / "base" / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_promtool_accepts_the_rules():
    run = promtool("check", "rules", ALERTS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in run.stdout


def test_promtool_unit_tests_of_every_alert_pass():
    """alerts_test.yml: each alert fires on its series, and stays quiet on others (pending,
    below threshold, another namespace, a starting pod: whatever its expectation leaves out)."""
    cases = yaml.safe_load(ALERT_TESTS.read_text())
    assert cases["rule_files"] == [ALERTS.name]
    fires, quiet = set(), set()
    for case in cases["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in alert_rules()}
    assert names <= fires, f"never seen firing: {names - fires}"
    assert names <= quiet, f"never seen quiet: {names - quiet}"
    run = promtool("test", "rules", ALERT_TESTS)
    assert run.returncode == 0, run.stdout + run.stderr


# -- the dashboard ---------------------------------------------------------------------------


def test_dashboard_panels_query_exported_metrics():
    known = exported()
    exprs = [t["expr"] for _, t in targets()]
    assert len(exprs) >= 10
    for expr in exprs:
        assert not names_in(expr) - known, expr
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_worker_memory_restart_compute_and_batch_item_panels():
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard()["panels"]}

    def panel_with(*metrics: str) -> list[str]:
        return [
            t for t, exprs in panels.items() if all(any(m in e for e in exprs) for m in metrics)
        ]

    # worker processes' memory beside the server process's own
    assert panel_with("hanseq_worker_resident_memory_bytes", "process_resident_memory_bytes")
    assert panel_with("hanseq_worker_gpu_memory_bytes")
    assert panel_with("hanseq_worker_restarts_total")
    assert panel_with("hanseq_batch_items_total")
    assert panel_with("hanseq_gpu_utilization_ratio")
    by_task = [
        e
        for exprs in panels.values()
        for e in exprs
        if "hanseq_compute_seconds_bucket" in e and "task" in by_labels(e)
    ]
    assert by_task, "no panel shows compute time by task"


def test_dashboard_template_variables():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "pod"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}", name
        assert re.fullmatch(rf"label_values\(.+, {name}\)", v["query"]), v["query"]
    # each narrows the next: jobs of the namespace, pods of the job
    assert 'namespace="$namespace"' in variables["job"]["query"]
    assert {'namespace="$namespace"', 'job="$job"'} <= set(
        re.findall(r'\w+="\$\w+"', variables["pod"]["query"])
    )
    pod = variables["pod"]
    assert pod["multi"] and pod["includeAll"]
    # All as a regex, not the list read at load time: pods the HPA adds later are included
    assert pod["allValue"] == ".+"
    assert not variables["namespace"]["multi"] and not variables["job"]["multi"]
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_query_filters_on_namespace_job_and_pod():
    for panel, target in targets():
        selectors = SELECTOR.findall(target["expr"])
        assert selectors, target["expr"]
        for metric, matchers in selectors:
            for wanted in FILTERS:
                assert wanted in matchers, f"{panel['title']}: {metric} lacks {wanted}"


def by_labels(expr: str) -> set[str]:
    """The labels an expression's aggregations keep (le is consumed by histogram_quantile)."""
    found = re.findall(r"\bby \(([^)]*)\)", expr)
    return {label.strip() for group in found for label in group.split(",")} - {"le", ""}


def test_every_dashboard_query_has_a_legend_that_tells_its_series_apart():
    for panel, target in targets():
        legend = target.get("legendFormat", "")
        where = f"{panel['title']} {target['refId']}"
        assert legend.strip(), f"{where}: no legendFormat"
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        kept = by_labels(target["expr"])
        # every label that makes a series of its own is in the legend, and the legend names
        # no label the aggregation dropped (it would print empty)
        assert shown == kept, f"{where}: legend shows {shown}, series differ by {kept}"
        if not kept:  # then it must be one series: an aggregation over everything
            assert re.match(r"(sum|max|min|avg|count)\(", target["expr"]), where
    for panel in dashboard()["panels"]:
        legends = [t["legendFormat"] for t in panel["targets"]]
        assert len(legends) == len(set(legends)), f"{panel['title']}: two targets look alike"


def grafana_to_promql(text: str) -> str:
    for variable, value in sorted(GRAFANA_VALUES.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(variable, value)
    assert "$" not in text, f"a Grafana variable the test does not know: {text}"
    return text


def test_every_dashboard_query_parses(tmp_path):
    """Each query, with the variables filled in, as a recording rule that promtool parses;
    the variables' own label_values() selectors too."""
    rules = [
        {
            "record": f"dashboard:panel{panel['id']}_{target['refId']}",
            "expr": grafana_to_promql(target["expr"]),
        }
        for panel, target in targets()
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"])[1]
            rules.append(
                {"record": f"dashboard:var_{variable['name']}", "expr": grafana_to_promql(selector)}
            )
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = promtool("check", "rules", path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout


# -- autoscaling -----------------------------------------------------------------------------


def adapter_rules() -> list[dict]:
    """The prometheus-adapter rules deploy/README.md gives (the yaml block with rules.custom)."""
    readme = (DEPLOY / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and "custom" in (doc.get("rules") or {}):
            return doc["rules"]["custom"]
    raise AssertionError("deploy/README.md has no prometheus-adapter rules block")


def hpa_pod_metrics() -> set[str]:
    names = set()
    for path in (
        DEPLOY / "k8s" / "base" / "hpa.yaml",
        DEPLOY / "k8s" / "overlays" / "gpu" / "hpa.yaml",
    ):
        spec = yaml.safe_load(path.read_text())["spec"]
        names |= {m["pods"]["metric"]["name"] for m in spec["metrics"] if m["type"] == "Pods"}
    return names


def test_hpas_scale_on_hanseq_own_per_pod_metrics(tmp_path):
    """A Pods metric must be a series of hanseq's own pods (their namespace and pod labels,
    from the ServiceMonitor's scrape), served by an adapter rule: DCGM's series belong to the
    dcgm-exporter pods and never map to hanseq's."""
    known = exported()
    wanted = hpa_pod_metrics()
    assert "hanseq_gpu_utilization_ratio" in wanted
    assert wanted <= known, f"the HPAs scale on metrics hanseq does not export: {wanted - known}"
    served = {}
    for rule in adapter_rules():
        served[rule["name"]["as"]] = rule
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
    assert wanted <= set(served), f"no adapter rule serves {wanted - set(served)}"
    queries = []
    for name in sorted(wanted):
        rule = served[name]
        assert names_in(rule["seriesQuery"]) == {name}
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
        # the query the adapter sends for one namespace's pods must be valid PromQL
        query = (
            rule["metricsQuery"]
            .replace("<<.GroupBy>>", "namespace, pod")
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", 'namespace="hanseq",pod=~"hanseq-a|hanseq-b"')
        )
        assert "<<" not in query, query
        queries += [
            {"record": f"adapter:{name}:series", "expr": rule["seriesQuery"]},
            {"record": f"adapter:{name}", "expr": query},
        ]
    path = tmp_path / "adapter_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": queries}]}))
    run = promtool("check", "rules", path)
    assert run.returncode == 0, run.stdout + run.stderr
