"""hotwire's closed-loop load generator measures a real server and stops by itself."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from hotwire.bench.loadgen import build_request, run_load
from hotwire.bench.models import serialize_model, small_classifier
from hotwire.proto import grpc_service_pb2 as pb

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def echo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = tmp_path_factory.mktemp("loadgen") / "classifier.onnx"
    model.write_bytes(serialize_model(small_classifier()))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hotwire.bench.reference_servers",
            "echo",
            "--model",
            str(model),
            "--name",
            "classifier",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    found: list[int] = []
    lines: list[str] = []
    ready = threading.Event()

    def collect() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = LISTENING.search(line)
            if match:
                found.append(int(match.group(1)))
                ready.set()
        ready.set()

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        ready.wait(30)
        assert found, "echo server did not start:\n" + "".join(lines)
        yield f"127.0.0.1:{found[0]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        collector.join(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_load_against_echo_counts_successes_in_the_window(echo_url):
    inputs = {"input": np.zeros((1, 16), dtype=np.float32)}
    start = time.monotonic()
    result = run_load(echo_url, "classifier", inputs, concurrency=2, duration_s=0.5, warmup_s=0.1)
    elapsed = time.monotonic() - start
    assert result.count > 0 and result.errors == 0
    assert result.throughput == pytest.approx(result.count / 0.5)
    assert 0 < result.p50_us <= result.p90_us <= result.p99_us
    assert elapsed < 5  # bounded by time: stops by itself


def test_failed_calls_are_errors_not_successes(echo_url):
    inputs = {"input": np.zeros((1, 16), dtype=np.float32)}
    result = run_load(echo_url, "no_such_model", inputs, concurrency=1, duration_s=0.2, warmup_s=0.0)
    assert result.count == 0 and result.errors > 0
    assert result.throughput == 0


def test_request_is_serialized_once_with_raw_inputs():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = pb.ModelInferRequest.FromString(build_request("m", {"input": x}))
    assert request.model_name == "m"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("input", "FP32", [2, 3])]
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(2, 3), x)
    with pytest.raises(ValueError, match="unsupported dtype"):
        build_request("m", {"input": np.array(["a"])})


def test_big_endian_inputs_go_little_endian_on_the_wire():
    x = np.arange(4, dtype=">f4")
    request = pb.ModelInferRequest.FromString(build_request("m", {"input": x}))
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], dtype="<f4"), x)
