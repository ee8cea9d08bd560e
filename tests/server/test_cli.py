"""`hotwire serve` as a user runs it: a real process, the bundled repository, flags and HOTWIRE_* variables,
and a graceful SIGTERM that finishes in-flight requests and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from hotwire.server.config import ServerConfig, bundled_repository, parse_serve_args
from hotwire.server.errors import ConfigError
from onnx_models import matmul_chain, write_model


def slow_model(layers: int = 40, width: int = 512) -> onnx.ModelProto:
    """A MatMul chain: ~0.1 s per call at batch 128 on one core, so requests are surely in flight at
    SIGTERM."""
    return matmul_chain(layers, width)


def test_serve_without_flags_serves_the_bundled_models(serve):
    process = serve("--grpc-port", "0", "--metrics-port", "-1", "--host", "127.0.0.1")
    port = process.wait_listening()
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_ready()
    for model in ("classifier", "image_classifier"):
        assert client.is_model_ready(model)
        assert f"loaded model {model} version 1" in process.log
    x = np.random.default_rng(1).random((2, 16), dtype=np.float32)
    tensor = triton.InferInput("input", [2, 16], "FP32")
    tensor.set_data_from_numpy(x)
    served = client.infer("classifier", [tensor]).as_numpy("probabilities")
    session = ort.InferenceSession(
        str(bundled_repository() / "classifier" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(served, session.run(None, {"input": x})[0], rtol=1e-6)
    image = triton.InferInput("image", [1, 64, 64, 3], "UINT8")
    image.set_data_from_numpy(np.full((1, 64, 64, 3), 128, np.uint8))
    assert client.infer("image_classifier", [image]).as_numpy("probabilities").shape == (1, 10)
    client.close()
    assert process.stop() == 0


def test_environment_variables_configure_the_server(serve, tmp_path):
    write_model(tmp_path, "slow", slow_model(layers=2))
    process = serve(
        env={
            "HOTWIRE_MODEL_REPOSITORY": str(tmp_path),
            "HOTWIRE_GRPC_PORT": "0",
            "HOTWIRE_HOST": "127.0.0.1",
            "HOTWIRE_METRICS_PORT": "-1",
            "HOTWIRE_LOG_LEVEL": "debug",
        }
    )
    port = process.wait_listening()
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_model_ready("slow") and not client.is_model_ready("classifier")
    client.close()
    assert process.stop() == 0


def test_flags_win_over_environment_and_bad_values_are_clear_errors(tmp_path):
    config = parse_serve_args(
        ["--grpc-port", "9001"], {"HOTWIRE_GRPC_PORT": "7001", "HOTWIRE_LOG_LEVEL": "warning"}
    )
    assert config.grpc_port == 9001 and config.log_level == "WARNING"
    assert config.model_repository == bundled_repository()
    assert parse_serve_args([], {}) == ServerConfig(model_repository=bundled_repository())
    result = subprocess.run(
        [sys.executable, "-m", "hotwire.server", "serve"],
        capture_output=True,
        text=True,
        env={**os.environ, "HOTWIRE_GRPC_PORT": "eighty"},
        timeout=60,
    )
    assert result.returncode == 2 and "HOTWIRE_GRPC_PORT" in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hotwire.server",
            "serve",
            "--model-repository",
            str(tmp_path / "nope"),
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is not a directory" in result.stderr


@pytest.mark.parametrize(
    "flags, environ, named",
    [
        (["--grpc-port", "70000"], {}, "--grpc-port 70000"),
        ([], {"HOTWIRE_GRPC_PORT": "-5"}, "HOTWIRE_GRPC_PORT"),
        ([], {"HOTWIRE_METRICS_PORT": "99999"}, "HOTWIRE_METRICS_PORT"),
        ([], {"HOTWIRE_LOG_FORMAT": "xml"}, "--log-format 'xml'"),
        ([], {"HOTWIRE_REQUEST_LOG_RATE": "2"}, "--request-log-rate 2"),
        ([], {"HOTWIRE_SHUTDOWN_GRACE_S": "-1"}, "--shutdown-grace-s -1"),
        ([], {"HOTWIRE_REPOSITORY_POLL_SECS": "0"}, "--repository-poll-secs 0"),
    ],
)
def test_out_of_range_values_from_flags_or_environment_are_refused(flags, environ, named):
    with pytest.raises(ConfigError) as caught:
        parse_serve_args(flags, environ)
    assert named in str(caught.value) and "expected" in str(caught.value)


def test_a_port_in_use_is_a_clear_error_for_one_server_and_for_workers(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for workers in ("1", "2"):
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hotwire.server",
                    "serve",
                    "--workers",
                    workers,
                    "--host",
                    "127.0.0.1",
                    "--grpc-port",
                    port,
                    "--metrics-port",
                    "-1",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 1, result.stderr
            assert port in result.stderr and "Traceback" not in result.stderr, result.stderr
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hotwire.server",
                "serve",
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--metrics-port",
                port,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr, (
            result.stderr
        )


def test_workers_that_can_never_start_stop_the_supervisor(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hotwire.server",
            "serve",
            "--workers",
            "2",
            "--model-repository",
            str(tmp_path / "missing"),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "cannot start" in result.stderr, result.stderr
    assert time.monotonic() - started < 60  # it gave up instead of restarting forever


def test_sigterm_finishes_in_flight_requests_then_exits_zero(serve, tmp_path):
    model = slow_model()
    write_model(tmp_path, "slow", model, "max_batch_size: 128\ndynamic_batching { }")
    process = serve(
        "--model-repository", str(tmp_path), "--grpc-port", "0", "--metrics-port", "-1", "--host", "127.0.0.1"
    )
    port = process.wait_listening()
    x = np.random.default_rng(2).random((128, 512), dtype=np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]

    def infer_once(_: int) -> np.ndarray:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("x", [128, 512], "FP32")
        tensor.set_data_from_numpy(x)
        try:
            return client.infer("slow", [tensor], client_timeout=60).as_numpy("y")
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(infer_once, i) for i in range(4)]
        time.sleep(0.3)  # requests are queued or computing: each takes ~0.1 s and they run one after another
        process.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=60) for f in futures]
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)
    assert process.proc.wait(30) == 0
    assert "received SIGTERM" in process.log and "shutdown complete" in process.log
