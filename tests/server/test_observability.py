"""Observability through the real server: statistics equal to metrics after a known sequence, histograms and
lifecycle counters on /metrics, health transitions (Watch too), JSON and request logs, drift that fires on a
shifted input and stays quiet on the reference."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
import types
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import metrics as metrics_module
from hotwire.server.logs import JsonFormatter
from hotwire.server.metrics import LIFECYCLE_EVENTS, render
from onnx_models import add_sub, write_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def scrape_until(port: int, done: Callable[[str], bool], timeout: float = 5.0) -> str:
    """Scrape until `done` holds (a version that is still draining may be reported until it is unloaded)."""
    deadline = time.monotonic() + timeout
    body = scrape(port)
    while not done(body) and time.monotonic() < deadline:
        time.sleep(0.05)
        body = scrape(port)
    return body


def value(body: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in {"model": "simple", "version": "1", **labels}.items())
    match = re.search(rf"^{name}{{{re.escape(label_text)}}} (\S+)$", body, re.MULTILINE)
    assert match, f"{name}{{{label_text}}} not in /metrics"
    return float(match.group(1))


def series_of(body: str, model: str, version: str) -> list[str]:
    """Every sample line labelled with this model and version."""
    return [
        line
        for line in body.splitlines()
        if not line.startswith("#") and f'model="{model}"' in line and f'version="{version}"' in line
    ]


def parse_all(body: str) -> dict[str, Metric]:
    """The whole exposition through prometheus-client's parser, every sample under its family's # TYPE
    line."""
    families = {family.name: family for family in text_string_to_metric_families(body)}
    for family in families.values():
        assert family.type != "unknown", f"{family.name}: its samples match no # TYPE line"
    return families


def simple_request(rows: int, width: int = 16) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple", id=f"r{rows}")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, width])
        request.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return request


def test_statistics_are_exact_and_equal_the_metrics(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8\ndynamic_batching { }")
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)
    for rows in (1, 2, 2, 3):
        stub.ModelInfer(simple_request(rows))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(simple_request(1, width=5))
    client = triton.InferenceServerClient(server.address)
    assert "statistics" in client.get_server_metadata().extensions
    (stats,) = client.get_inference_statistics("simple").model_stats
    client.close()
    inference = stats.inference_stats
    assert (stats.name, stats.version) == ("simple", "1")
    assert stats.inference_count == 8 and stats.execution_count == 4
    assert inference.success.count == 4 and inference.fail.count == 1
    assert (
        inference.queue.count == 4
        and inference.compute_infer.count == 4
        and inference.compute_input.count == 4
    )
    assert inference.compute_infer.ns > 0 and inference.success.ns > inference.compute_infer.ns
    assert inference.fail.ns > 0  # the failure took time, which the request duration must not include
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {1: 1, 2: 2, 3: 1}
    assert stats.last_inference > 0
    body = scrape(server.app.metrics_port)
    assert value(body, "nv_inference_request_success") == inference.success.count
    assert value(body, "nv_inference_request_failure", reason="OTHER") == inference.fail.count
    assert value(body, "nv_inference_request_failure", reason="REJECTED") == 0
    assert "# TYPE nv_inference_request_success counter" in body and "process_resident_memory_bytes" in body
    assert value(body, "nv_inference_count") == stats.inference_count
    assert value(body, "nv_inference_exec_count") == stats.execution_count
    assert value(body, "nv_inference_compute_infer_duration_us") == pytest.approx(
        inference.compute_infer.ns / 1e3
    )
    assert value(body, "nv_inference_queue_duration_us") == pytest.approx(inference.queue.ns / 1e3)
    # Triton's request duration counts successful requests only (its UpdateSuccess adds to it, UpdateFailure
    # not)
    assert value(body, "nv_inference_request_duration_us") == pytest.approx(
        inference.success.ns / 1e3, rel=1e-9
    )
    assert value(body, "nv_inference_pending_request_count") == 0
    assert value(body, "nv_model_load_duration_secs") > 0
    # hotwire's histograms are histogram families with cumulative buckets
    assert "# TYPE hotwire_request_duration_us histogram" in body
    assert value(body, "hotwire_request_duration_us_bucket", le="+Inf") == 4
    assert value(body, "hotwire_request_duration_us_count") == 4
    assert value(body, "hotwire_batch_size_bucket", le="2.0") == 3  # batches of 1, 2, 2 (and 3 above)
    buckets = [
        float(v) for v in re.findall(r"^hotwire_request_duration_us_bucket\{[^}]*\} (\S+)$", body, re.M)
    ]
    assert buckets == sorted(buckets)


def test_requests_failing_to_decode_count_as_failures_of_the_model_they_name(
    tmp_path, running_server, stub_for
):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8\ndynamic_batching { }")
    server = running_server(tmp_path)
    stub = stub_for(server)
    short = simple_request(1)
    short.raw_input_contents[0] = b"\x00" * 5  # wrong byte size: rejected while decoding, before validation
    unknown_type = simple_request(1)
    unknown_type.inputs[1].datatype = "FP128"
    for request in (short, unknown_type):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    list(stub.ModelStreamInfer(iter([short]), timeout=30))  # in-band error on a stream: counted the same
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple")).model_stats
    assert stats.inference_stats.fail.count == 3 and stats.inference_stats.success.count == 0
    server.call(server.app.registry.unload("simple"))
    with pytest.raises(grpc.RpcError) as caught:  # no version loaded: an error naming it, not an empty answer
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "simple" in caught.value.details()


def test_the_whole_exposition_parses_with_every_family_typed(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8\ndynamic_batching { }")
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)
    stub.ModelInfer(simple_request(2))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(simple_request(1, width=5))
    families = parse_all(scrape(server.app.metrics_port))
    # prometheus-client's own counters: TYPE names the `_total` samples, as its generate_latest writes it
    assert families["process_cpu_seconds"].type == "counter"
    assert [s.name for s in families["process_cpu_seconds"].samples] == ["process_cpu_seconds_total"]
    # Triton's counters keep their exact names (the parser files them under `<name>_total`)
    success = families["nv_inference_request_success"]
    assert success.type == "counter" and success.samples[0].value == 1
    assert families["nv_inference_request_failure"].type == "counter"
    assert families["nv_inference_pending_request_count"].type == "gauge"
    latency = families["hotwire_request_duration_us"]
    assert latency.type == "histogram"
    assert {s.name for s in latency.samples} == {
        "hotwire_request_duration_us_bucket",
        "hotwire_request_duration_us_sum",
        "hotwire_request_duration_us_count",
    }


def test_shutdown_publishes_the_final_numbers(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8\ndynamic_batching { }")
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)
    for rows in (1, 2, 3):
        stub.ModelInfer(simple_request(rows))
    server.stop()  # the last publish happens during shutdown, before the versions are forgotten
    body = render(server.app.metrics.exposition()).decode()
    assert value(body, "nv_inference_request_success") == 3 and value(body, "nv_inference_count") == 6


DRIFT_CONFIG = """max_batch_size: 64
dynamic_batching { }
parameters { key: "drift_monitoring" value: { string_value: "true" } }
parameters { key: "drift_reference_rows" value: { string_value: "80" } }
parameters { key: "drift_window_rows" value: { string_value: "80" } }
"""


def test_a_version_s_series_go_away_once_it_is_swapped_out_or_unloaded(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", add_sub(width=4), DRIFT_CONFIG, version=1)
    server = running_server(tmp_path, metrics_port=0, model_control_mode="explicit", load_model=("simple",))
    stub = stub_for(server)
    for _ in range(4):  # 160 rows: an 80-row reference, then an 80-row window
        stub.ModelInfer(simple_request(40, width=4))
    server.call(asyncio.sleep(0.05))
    server.call(server.app.registry.compute_drift())
    body = scrape(server.app.metrics_port)
    assert value(body, "nv_inference_request_success") == 4
    assert value(body, "nv_inference_pending_request_count") == 0
    assert re.search(
        r'^hotwire_drift_ks_pvalue\{model="simple",version="1",feature="INPUT0[^"]*"\} ', body, re.M
    )

    write_model(tmp_path, "simple", add_sub(width=4, offset=1.0), version=2)
    # v2 serves, v1 drains and goes
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"))
    stub.ModelInfer(simple_request(3, width=4))
    body = scrape_until(server.app.metrics_port, lambda body: not series_of(body, "simple", "1"))
    # counters, pending, load time, histograms, drift gauges: all gone
    assert series_of(body, "simple", "1") == []
    assert value(body, "nv_inference_request_success", version="2") == 1
    assert value(body, "nv_inference_count", version="2") == 3
    assert value(body, "nv_inference_pending_request_count", version="2") == 0
    assert value(body, "hotwire_request_duration_us_count", version="2") == 1
    parse_all(body)

    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="simple"))
    body = scrape_until(server.app.metrics_port, lambda body: len(series_of(body, "simple", "2")) == 1)
    # all gone but the history of what happened: the swap to version 2, a counter that must never go down
    assert series_of(body, "simple", "2") == [
        'hotwire_lifecycle_events_total{model="simple",version="2",event="swap"} 1.0'
    ]
    assert [line for line in body.splitlines() if 'model="simple"' in line] == series_of(body, "simple", "2")
    assert "# TYPE nv_inference_request_success counter" in body  # the families stay, empty


MULTIPROCESS_WORKER = """
import math, sys, warnings
warnings.simplefilter("error", UserWarning)  # prometheus-client warns on removing labels in multiprocess mode
from hotwire.server.metrics import Metrics, VersionView, render
from hotwire.server.stats import VersionStats

one, two = VersionStats(), VersionStats()
one.success.count, two.success.count = 5, 7
views = [VersionView("simple", "1", one, 3, 0.5), VersionView("simple", "2", two, 1, 0.5)]
drift = [("simple", "1", "INPUT0[0]", 0.9, 0.001, 2.0), ("simple", "2", "INPUT0[0]", 0.1, 0.9, 0.01)]
metrics = Metrics()
metrics.watch(versions=lambda: list(views), drift=lambda: list(drift))
metrics.publish()
sys.stdout.write(render(Metrics.multiprocess_exposition()).decode() + "=====\\n")
views.pop(0); drift.pop(0)  # version 1 drained and unloaded in this worker
metrics.publish()
sys.stdout.write(render(Metrics.multiprocess_exposition()).decode())
"""


def test_workers_drop_an_unloaded_version_s_series_too(tmp_path):
    # --workers mode: the worker writes prometheus-client's multiprocess files, the supervisor renders their
    # sum
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MULTIPROCESS_WORKER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("=====\n")
    assert value(before, "nv_inference_pending_request_count") == 3
    assert value(before, "nv_inference_request_success") == 5
    assert "hotwire_version_loaded" not in before  # the supervisor's marker is never exposed
    assert series_of(after, "simple", "1") == []
    assert value(after, "nv_inference_request_success", version="2") == 7
    assert value(after, "nv_inference_pending_request_count", version="2") == 1
    assert re.search(
        r'^hotwire_drift_ks_pvalue\{feature="INPUT0\[0\]",model="simple",version="2",pid="\d+"\} 0\.9$',
        after,
        re.M,
    )
    parse_all(after)


def lifecycle(body: str) -> dict[tuple[str, str, str], float]:
    """(model, version, event) -> count, from hotwire_lifecycle_events_total."""
    found = re.findall(
        r'^hotwire_lifecycle_events_total\{(?=[^}]*event="(\w+)")(?=[^}]*model="(\w*)")'
        r'(?=[^}]*version="(\w*)")[^}]*\} (\S+)$',
        body,
        re.M,
    )
    return {(model, version, event): float(count) for event, model, version, count in found}


def test_lifecycle_events_are_counted_per_model_version(tmp_path, running_server, stub_for, caplog):
    write_model(
        tmp_path,
        "simple",
        add_sub(offset=1.0),
        'max_batch_size: 8\nparameters { key: "standby_versions" value: { string_value: "1" } }',
        version=1,
    )
    server = running_server(tmp_path, metrics_port=0, model_control_mode="explicit", load_model=("simple",))
    stub = stub_for(server)
    counts = lifecycle(scrape(server.app.metrics_port))
    # a loaded version's events are there at 0 before any happens, so Prometheus sees the first as an increase
    assert counts == {("simple", "1", event): 0 for event in LIFECYCLE_EVENTS}
    write_model(tmp_path, "simple", add_sub(offset=2.0), version=2)
    with caplog.at_level(logging.INFO):
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"))
        request = pb.RepositoryModelLoadRequest(model_name="simple")
        request.parameters["hotwire.rollback"].string_param = ""
        stub.RepositoryModelLoad(request)
    body = scrape(server.app.metrics_port)
    assert "# TYPE hotwire_lifecycle_events_total counter" in body
    counts = lifecycle(body)
    assert counts[("simple", "2", "swap")] == 1  # the swap to version 2
    assert counts[("simple", "1", "rollback")] == 1  # the rollback to version 1
    assert sum(counts.values()) == 2
    lines = {
        r.event: json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if getattr(r, "event", "") in ("swap", "rollback")
    }
    assert (lines["swap"]["model"], lines["swap"]["version"]) == ("simple", 2)  # the same int as everywhere
    assert (lines["rollback"]["model"], lines["rollback"]["version"]) == ("simple", 1)


LIFECYCLE_WORKER = """
from hotwire.server.metrics import Metrics, VersionView
from hotwire.server.stats import VersionStats

views = [VersionView("simple", str(n), VersionStats(), 0, 0.5) for n in (1, 2)]
metrics = Metrics()
metrics.watch(versions=lambda: list(views),
              events=lambda: {("simple", "2", "guard_rollback"): 1, ("broken", "", "load_failure"): 1})
metrics.publish()
views.pop(0)  # version 1 unloaded in this worker
metrics.publish()
"""
SUPERVISOR = """
import sys
from hotwire.server.metrics import Metrics, render
sys.stdout.write(render(Metrics.multiprocess_exposition()).decode())
"""


def test_workers_sum_the_lifecycle_counts_per_model_version(tmp_path):
    # --workers: each worker counts its own canary guard's rollbacks; the supervisor adds them up per version
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for script in (LIFECYCLE_WORKER, LIFECYCLE_WORKER, SUPERVISOR):
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    body = result.stdout
    counts = lifecycle(body)
    assert counts[("simple", "2", "guard_rollback")] == 2  # one per worker, summed
    assert counts[("broken", "", "load_failure")] == 2  # a model that never loaded keeps its failures
    assert counts[("simple", "2", "swap")] == 0  # version 2 is loaded: its events are there at 0
    assert not any(version == "1" for _, version, _ in counts)  # version 1's zeros went with it
    assert 'pid="' not in "".join(line for line in body.splitlines() if "lifecycle" in line)
    parse_all(body)


def test_health_follows_load_unload_and_drain_and_watch_streams_it(tmp_path, running_server):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8")
    server = running_server(tmp_path, model_control_mode="explicit")
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
    seen: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(service="simple"), timeout=60)

    def follow() -> None:
        try:
            for update in watch:
                seen.append(update.status)
        except grpc.RpcError:
            pass

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    stub = __import__("hotwire.proto.grpc_service_pb2_grpc", fromlist=["x"]).GRPCInferenceServiceStub(channel)
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="simple"))
    assert health.Check(health_pb2.HealthCheckRequest(service="simple")).status == SERVING
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="simple"))
    assert health.Check(health_pb2.HealthCheckRequest(service="simple")).status == NOT_SERVING
    for _ in range(100):
        if seen[-1:] == [NOT_SERVING] and SERVING in seen:
            break
        time.sleep(0.02)
    assert SERVING in seen and seen[-1] == NOT_SERVING  # Watch streamed the transitions
    server.call(server.app.stop())  # drain: the server reports NOT_SERVING
    assert server.app.health._server_status[""] == NOT_SERVING  # type: ignore[attr-defined]
    watch.cancel()
    channel.close()


def test_idle_watch_and_inference_streams_end_cleanly_at_shutdown_instead_of_holding_it(
    tmp_path, running_server
):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8")
    server = running_server(tmp_path, shutdown_grace_s=30)
    channel = grpc.insecure_channel(server.address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="simple"), timeout=60
    )
    assert next(watch).status == SERVING
    outbox: queue.Queue = queue.Queue()
    stub = __import__("hotwire.proto.grpc_service_pb2_grpc", fromlist=["x"]).GRPCInferenceServiceStub(channel)
    stream = stub.ModelStreamInfer(iter(outbox.get, None), timeout=60)
    outbox.put(simple_request(1))
    assert not next(stream).error_message  # then the client keeps the stream open and sends nothing more
    started = time.monotonic()
    server.call(server.app.stop())
    assert time.monotonic() - started < 10  # not the 30 s grace
    assert [update.status for update in watch] == [NOT_SERVING]  # told, then its stream ended with OK
    # nothing lost: what it read was answered; the end is UNAVAILABLE, as it cannot know whether more came
    with pytest.raises(grpc.RpcError) as ended:
        list(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    outbox.put(None)
    channel.close()


def test_json_logs_carry_lifecycle_events_and_request_breakdowns(tmp_path, running_server, stub_for, caplog):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8")
    with caplog.at_level(logging.INFO):
        server = running_server(tmp_path, request_log_rate=1.0, slow_request_ms=0.000001)
        stub_for(server).ModelInfer(simple_request(2))
        streamed = simple_request(1)
        streamed.id = "streamed"
        list(stub_for(server).ModelStreamInfer(iter([streamed]), timeout=30))
    formatter = JsonFormatter()
    loaded = [r for r in caplog.records if getattr(r, "event", "") == "model_loaded"]
    assert loaded and json.loads(formatter.format(loaded[0]))["model"] == "simple"
    slow = [r for r in caplog.records if getattr(r, "event", "") == "slow_request"]
    assert slow, "every request is slower than 1 ns"
    line = json.loads(formatter.format(slow[0]))
    assert line["level"] == "WARNING" and line["request_id"] == "r2"
    # one type for `version` in every JSON line: an int, on request lines as on lifecycle lines
    versions = [json.loads(formatter.format(r))["version"] for r in caplog.records if hasattr(r, "version")]
    assert len(versions) >= 3 and all(v == 1 and type(v) is int for v in versions), versions
    stages = ("decode_ms", "queue_ms", "preprocess_ms", "compute_ms", "encode_ms", "other_ms")
    assert {*stages, "total_ms"} <= set(line)
    assert line["total_ms"] >= line["compute_ms"] >= 0
    # they add up
    assert sum(line[stage] for stage in stages) == pytest.approx(line["total_ms"], rel=0.02, abs=0.002)
    assert any(r.request_id == "streamed" for r in slow), "stream requests are logged too"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_log_format_from_the_command_line(serve, tmp_path, workers):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8")
    process = serve(
        "--model-repository",
        str(tmp_path),
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        "--host",
        "127.0.0.1",
        "--log-format",
        "json",
        "--workers",
        workers,
    )
    process.wait_listening(timeout=120)
    assert process.stop() == 0
    lines = [json.loads(line) for line in process.lines if line.strip()]  # every line is one JSON object
    assert any(line.get("event") == "model_loaded" and line["model"] == "simple" for line in lines)
    assert all({"level", "logger", "message"} <= set(line) for line in lines)
    if workers == "2":  # the supervisor tags its workers' lines with a field, not a prefix
        assert {line.get("worker") for line in lines if line.get("event") == "model_loaded"} == {0, 1}


def test_drift_fires_on_a_shifted_input_and_stays_quiet_on_the_reference(tmp_path, running_server, stub_for):
    config = """max_batch_size: 64
dynamic_batching { }
parameters { key: "drift_monitoring" value: { string_value: "true" } }
parameters { key: "drift_reference_rows" value: { string_value: "400" } }
parameters { key: "drift_window_rows" value: { string_value: "400" } }
"""
    write_model(tmp_path, "simple", add_sub(width=4), config)
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)
    rng = np.random.default_rng(11)

    def send(shift: float, rows: int = 400) -> None:
        for _ in range(rows // 40):
            request = pb.ModelInferRequest(model_name="simple")
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="FP32", shape=[40, 4])
                request.raw_input_contents.append(
                    (rng.standard_normal((40, 4)) + shift).astype(np.float32).tobytes()
                )
            stub.ModelInfer(request)

    send(0.0)  # the reference, captured from the first 400 rows
    send(0.0)  # the same distribution
    server.call(asyncio.sleep(0.05))
    server.call(server.app.registry.compute_drift())
    report = server.app.registry.route("simple").drift_report
    assert report is not None and report.reference_complete
    assert report.drifted(p_threshold=0.05 / 16) == []  # quiet (Bonferroni over the features)
    send(0.75)
    server.call(asyncio.sleep(0.05))
    server.call(server.app.registry.compute_drift())
    report = server.app.registry.route("simple").drift_report
    drifted = report.drifted(p_threshold=0.05)
    assert any(name.startswith("INPUT0") for name in drifted) and any(
        name.startswith("INPUT1") for name in drifted
    )
    body = scrape(server.app.metrics_port)
    pvalues = [
        float(v)
        for v in re.findall(
            r'^hotwire_drift_ks_pvalue\{model="simple",version="1",feature="INPUT0[^"]*"\} (\S+)$', body, re.M
        )
    ]
    assert pvalues and min(pvalues) < 0.05


class _FakeNvml(types.ModuleType):
    """nvidia-ml-py's calls the GPU collector makes, answered for GPU 0 in MIG mode (two of its seven MIG
    slots in use) and GPU 1 without MIG; a test double, since no GPU is here."""

    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        pass

    GIB = 2**30

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.migs = {("gpu0", 0): "MIG-aaaa", ("gpu0", 3): "MIG-bbbb"}

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return {"gpu0": "GPU-0000", "gpu1": "GPU-1111", "MIG-aaaa": "MIG-aaaa", "MIG-bbbb": "MIG-bbbb"}[
            handle
        ]

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> types.SimpleNamespace:
        used = {"gpu0": 3, "gpu1": 5, "MIG-aaaa": 1, "MIG-bbbb": 2}[handle]
        total = 10 if handle.startswith("MIG") else 80
        return types.SimpleNamespace(used=used * self.GIB, total=total * self.GIB)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> types.SimpleNamespace:
        if handle == "gpu0":
            raise self.NVMLError("Not Supported")  # what NVML answers for a GPU in MIG mode
        return types.SimpleNamespace(gpu=42)

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        if handle == "gpu1":
            raise self.NVMLError("Not Supported")
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: str) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: str, index: int) -> str:
        if (handle, index) not in self.migs:
            raise self.NVMLError("Not Found")
        return self.migs[(handle, index)]


def test_gpu_metrics_give_each_mig_instance_its_memory_and_skip_what_nvml_cannot_say(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    registry = CollectorRegistry()
    registry.register(metrics_module._GpuCollector())
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    samples = lambda name: {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}  # noqa: E731
    gib = _FakeNvml.GIB
    assert samples("hotwire_mig_memory_used_bytes") == {
        (("gpu_uuid", "GPU-0000"), ("mig_uuid", "MIG-aaaa")): 1 * gib,
        (("gpu_uuid", "GPU-0000"), ("mig_uuid", "MIG-bbbb")): 2 * gib,
    }
    assert set(samples("hotwire_mig_memory_total_bytes").values()) == {10 * gib}
    assert samples("nv_gpu_memory_used_bytes") == {
        (("gpu_uuid", "GPU-0000"),): 3 * gib,
        (("gpu_uuid", "GPU-1111"),): 5 * gib,
    }
    # utilization: only the GPU NVML reports it for (none per MIG instance, nor for a GPU in MIG mode)
    assert samples("nv_gpu_utilization") == {(("gpu_uuid", "GPU-1111"),): 0.42}
