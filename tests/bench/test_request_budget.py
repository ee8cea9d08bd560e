"""The request-budget benchmark: its in-process stages, and its launchers (timed hotwire, probed echo) serving
real answers under a short load."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from hotwire.bench import models, request_budget
from hotwire.bench.run import HOTWIRE_CONFIGS, MODELS, ChildServer, Client
from hotwire.clients import Client as InferenceClient

# only the under-load test pins; the probed servers are pinned to the server's CPU by their launcher
needs_two_cpus = pytest.mark.skipif(
    not request_budget._can_pin(), reason="needs CPUs 0 and 1 to pin client and server apart"
)


def test_the_in_process_budget_times_every_stage_and_the_references() -> None:
    budget = asyncio.run(request_budget.in_process_budget(200))
    assert list(budget) == [
        "decode (wire.decode_request)",
        "route and validate",
        "run (batcher.run_now: feeds, ORT, statistics of the batch)",
        "ORT session.run alone",
        "encode (ResponseEncoder)",
        "accounting (statistics, handler time, canary/shadow hooks)",
        "whole model_infer",
        request_budget.REST,
        "echo reference: parse, handler, serialize",
        "inline reference: parse, handler, serialize",
    ]
    assert all(value > 0 for name, value in budget.items() if name != request_budget.REST)
    # the whole path contains the run, which contains ORT's own call
    assert budget["whole model_infer"] > budget["ORT session.run alone"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("budget") / "models"
    classifier = (MODELS["classifier"].build(), HOTWIRE_CONFIGS["classifier"])
    models.write_model_repository(root, {"classifier": classifier})
    return root


@needs_two_cpus
@pytest.mark.parametrize("probe", ["echo", "sleep0", "hash", "ort"])
def test_each_probed_echo_server_runs_its_probe_counts_and_answers_like_echo(
    repository: Path, probe: str
) -> None:
    server: ChildServer = request_budget._server(probe, repository, repository / "classifier/1/model.onnx")
    try:
        url = server.wait_listening()
        with InferenceClient(url) as client:
            result = client.infer("classifier", {"input": np.ones((3, 16), np.float32)})
            client.infer("classifier", {"input": np.ones((1, 16), np.float32)})
            assert request_budget._answered(url, probe) == 2
        assert result["probabilities"].shape == (3, 4)
        assert not result["probabilities"].any()  # echo answers zeros, probe or not
    finally:
        server.stop()
    assert f"probe {probe} ran\n" in server.lines


@needs_two_cpus
def test_under_load_hotwire_reports_its_cpu_per_request_and_handler_time(repository: Path) -> None:
    client = Client("loadgen", 400, None)
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {request_budget.CLIENT_CPU})
        sample = request_budget.measure_under_load(
            client, "hotwire", repository, repository / "classifier/1/model.onnx", 2
        )
    finally:
        os.sched_setaffinity(0, previous)
    assert sample.throughput > 0
    assert sample.cpu_us_per_request > 0
    assert 0 < sample.core_share <= 2  # one pinned core, and the counters' tick granularity
    # the timed launcher printed its line at exit: the handler includes the ORT call it timed
    assert sample.handler_p50_us is not None and sample.ort_p50_us is not None
    assert sample.handler_p50_us > sample.ort_p50_us > 0


def test_an_unknown_probe_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        request_budget.main(["--probes", "nap", "--repeats", "0", "--calls", "10"])
    assert exited.value.code == 2


def test_render_lists_every_server_with_its_repeats() -> None:
    load = {
        "hotwire": [request_budget.LoadSample(2000, 480, 7000, 0.96, 140, 45)] * 2,
        "echo": [request_budget.LoadSample(3500, 290, 4200, 1.0)],
        "ort": [],
    }
    text = request_budget.render("cmd", {"whole model_infer": 60.0}, load, Client("loadgen", 400, None), 16)
    assert "| whole model_infer | 60.0 |" in text
    assert "| hotwire | 2,000 | 480 (480, 480) | 96% | 7,000 | 140 | 45 |" in text
    assert "| echo | 3,500 | 290 (290) | 100% | 4,200 | — | — |" in text
    assert "session.run" not in text.split("| server |")[1]  # no row for a probe that was not measured
