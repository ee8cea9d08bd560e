"""monitoring/ against the real tools and the real server.

`promtool check rules` and `promtool test rules` on the alerts, promtool's PromQL parser on every dashboard
query, and every metric, label and bucket that the alerts, their unit tests and the dashboard name checked
against a real /metrics scrape (single process, and the --workers supervisor's sum), so the files and the
server cannot drift apart.

promtool is in the Debian package `prometheus`. Without it the promtool tests skip, except under CI=true,
where they fail: CI must run them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from external_tools import missing
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from hotwire.server.metrics import FAILURE_REASONS, LIFECYCLE, LIFECYCLE_EVENTS
from onnx_models import add_sub, write_model
from server_harness import ServerThread

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ADDED_BY_PROMETHEUS = {"job", "instance"}  # target labels, not on /metrics

# (name, labels, value) of one sample line of the text format
Sample = tuple[str, dict[str, str], str]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (Debian: apt-get install -y --no-install-recommends prometheus)")
    assert path is not None
    return path


def run_promtool(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


# ----- PromQL text ---------------------------------------------------------------------------------------

KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Identifiers used as series selectors: label lists, matchers and durations blanked, function calls and
    keywords left out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    names = re.findall(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?!\s*\()(?![\w:])", expr)
    return {name for name in names if name.lower() not in KEYWORDS}


def test_metric_names_finds_every_selector_and_nothing_else() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{m=~"$model"}[$__rate_interval])))'
    assert metric_names(expr) == {"a_bucket"}
    assert metric_names("b < 0.05") == {"b"} and metric_names("sum(c) > bool 1e-3") == {"c"}
    assert metric_names("x / on (model) group_left y offset 5m") == {"x", "y"}


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Every `name{label="value", ...}` selector with its equality matchers."""
    return [
        (name, dict(re.findall(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"', body)))
        for name, body in re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", expr)
    ]


def alert_exprs() -> dict[str, str]:
    """alert name -> expr, from alerts.yml."""
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expression) of every panel target and template variable query."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = [
        (f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
        for p in dashboard_panels(dashboard["panels"])
        for t in p.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", query)
        assert match, f"variable {variable['name']}: {query!r} is not label_values(selector, label)"
        found.append((f"variable {variable['name']}", match.group(1)))
    return found


def as_plain_promql(expr: str) -> str:
    """A dashboard query as Prometheus receives it after Grafana fills in its variables."""
    return expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$model", ".*")


def unit_test_series() -> list[tuple[str, dict[str, str]]]:
    series = re.findall(r"series: '([^']+)'", ALERTS_TEST.read_text())
    assert series
    return [selectors(text)[0] for text in series]


# ----- scrapes ------------------------------------------------------------------------------------------

SAMPLE_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$")


def parse_samples(body: str) -> list[Sample]:
    samples = []
    for line in body.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE_LINE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples.append((match.group(1), labels, match.group(3)))
    return samples


def families(body: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE))


DRIFT_CONFIG = """max_batch_size: 64
dynamic_batching { }
parameters { key: "drift_monitoring" value: { string_value: "true" } }
parameters { key: "drift_reference_rows" value: { string_value: "80" } }
parameters { key: "drift_window_rows" value: { string_value: "80" } }
"""


@pytest.fixture(scope="module")
def single_process_scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real server that has served requests, failed one, and computed drift."""
    repository = tmp_path_factory.mktemp("repository")
    write_model(repository, "simple", add_sub(width=4), DRIFT_CONFIG)
    server = ServerThread(repository, metrics_port=0).start()
    channel = grpc.insecure_channel(server.address)
    try:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for rows in (40, 40, 40, 40, 2):  # an 80-row drift reference, then an 80-row window
            stub.ModelInfer(request(rows, width=4))
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request(1, width=3))
        server.call(server.app.registry.compute_drift())
        url = f"http://127.0.0.1:{server.app.metrics_port}/metrics"
        yield urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        channel.close()
        server.stop()


def request(rows: int, width: int) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="simple")
    rng = np.random.default_rng(rows)
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="FP32", shape=[rows, width])
        message.raw_input_contents.append(rng.standard_normal((rows, width)).astype(np.float32).tobytes())
    return message


SUPERVISOR = """
import sys
from hotwire.server.metrics import Metrics, VersionView, render
from hotwire.server.stats import VersionStats

stats = VersionStats()
stats.success.count = 3
metrics = Metrics()
metrics.watch(versions=lambda: [VersionView("simple", "1", stats, 0, 0.5)],
              events=lambda: {("simple", "1", "swap"): 1},
              drift=lambda: [("simple", "1", "INPUT0[3]", 0.5, 0.2, 0.01)])
metrics.publish()
sys.stdout.write(render(Metrics.multiprocess_exposition()).decode())
"""


@pytest.fixture(scope="module")
def supervisor_scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the --workers supervisor serves: a worker's values, through prometheus-client's multiprocess
    files."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("multiprocess"))}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SUPERVISOR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(params=["single process", "--workers supervisor"])
def scrape(request: pytest.FixtureRequest) -> str:
    fixture = "single_process_scrape" if request.param == "single process" else "supervisor_scrape"
    return str(request.getfixturevalue(fixture))


# ----- promtool -----------------------------------------------------------------------------------------


def test_promtool_checks_the_alert_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_exprs())} rules found" in out
    assert len(alert_exprs()) == 4


def test_promtool_runs_the_alert_unit_tests(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(ALERTS_TEST))


def test_the_unit_tests_check_every_alert_and_name_its_model() -> None:
    text = ALERTS_TEST.read_text()
    tested = set(re.findall(r"alertname: (\w+)", text))
    assert tested == set(alert_exprs())
    assert "p95 latency 962.5ms" in text  # seconds, humanized: not 962.5kus
    assert 'summary: "simple: canary guard rolled back version 2 on h1:8002"' in text


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    # As recording rules, each query goes through Prometheus's own PromQL parser.
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (where, expr) in enumerate(dashboard_exprs()):
        rules += [
            f"      - record: dashboard:query_{i}",
            f"        expr: {json.dumps(as_plain_promql(expr))}",
            f"        labels: {{where: {json.dumps(where)}}}",
        ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(rules) + "\n")
    out = run_promtool(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(dashboard_exprs())} rules found" in out


# ----- the files against a real scrape ------------------------------------------------------------------


def test_every_metric_the_alerts_and_the_dashboard_query_is_exported(scrape: str) -> None:
    samples = parse_samples(scrape)
    exported = {name for name, _, _ in samples}
    queried = [(f"alert {alert}", expr) for alert, expr in alert_exprs().items()] + dashboard_exprs()
    for where, expr in queried:
        names = metric_names(expr)
        assert names, where
        assert names <= exported, f"{where} queries {sorted(names - exported)}: not on /metrics"
        for name, matchers in selectors(expr):  # and each `label="value"` matcher finds a series
            wanted = {k: v for k, v in matchers.items() if k not in ADDED_BY_PROMETHEUS}
            assert any(n == name and wanted.items() <= labels.items() for n, labels, _ in samples), (
                f"{where}: no {name} series with {wanted}"
            )


def test_every_metric_the_monitoring_text_mentions_is_exported(scrape: str) -> None:
    known = {name for name, _, _ in parse_samples(scrape)} | families(scrape)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    descriptions = [p.get("description", "") for p in dashboard_panels(dashboard["panels"])]
    text = ALERTS.read_text() + " ".join(descriptions)
    mentioned = set(re.findall(r"\b(?:nv|hotwire|process)_\w+", text))
    assert mentioned and mentioned <= known, sorted(mentioned - known)


def test_the_alert_unit_tests_feed_series_as_hotwire_exports_them(scrape: str) -> None:
    samples = parse_samples(scrape)
    for name, labels in unit_test_series():
        assert set(labels) >= ADDED_BY_PROMETHEUS, f"{name}: a scraped series carries job and instance"
        keys = set(labels) - ADDED_BY_PROMETHEUS
        same = [s for s in samples if s[0] == name and set(s[1]) - {"pid"} == keys]
        assert same, f"{name}{sorted(keys)}: /metrics has no {name} with exactly these labels"
        for key in ("le", "event", "reason"):  # values hotwire defines (bucket bounds in µs, event names)
            if key in labels:
                values = {s[1][key] for s in same}
                assert labels[key] in values, f"{name}: {key}={labels[key]!r} is never exported"


def test_the_lifecycle_counters_carry_model_and_version(single_process_scrape: str) -> None:
    lifecycle = [labels for name, labels, _ in parse_samples(single_process_scrape) if name == LIFECYCLE]
    # every event of a loaded version is there from the start (at 0)
    assert sorted(labels["event"] for labels in lifecycle) == sorted(LIFECYCLE_EVENTS)
    assert all((labels["model"], labels["version"]) == ("simple", "1") for labels in lifecycle)
    failures = {
        labels["reason"]
        for name, labels, _ in parse_samples(single_process_scrape)
        if name == "nv_inference_request_failure"
    }
    assert failures == {reason.value for reason in FAILURE_REASONS}


def test_the_dashboard_is_grafana_json_with_job_filters_and_no_deprecated_style() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    def keys(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)
        elif isinstance(node, list):
            for item in node:
                yield from keys(item)

    assert "style" not in set(keys(dashboard))  # deprecated since Grafana 9: the theme is the viewer's
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["job", "model"]
    panels = list(dashboard_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert {"id", "type", "title", "gridPos"} <= set(panel), panel.get("title")
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # every selector filters by job: the process_* metrics above all, which every exporter has
            for name in metric_names(target["expr"]):
                assert f'{name}{{job=~"$job"' in target["expr"], (panel["title"], name)
    process = [t["expr"] for p in panels for t in p.get("targets", []) if "process_" in t["expr"]]
    assert len(process) == 2 and all('job=~"$job"' in expr for expr in process)
