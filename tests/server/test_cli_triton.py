"""Triton users' flags and habits in `hotwire serve`, run as a user runs it: Triton's spellings of the
settings hotwire has, hints for tritonserver flags it has not, and the start-up messages users expect."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from hotwire.server.config import parse_serve_args, variables
from onnx_models import add_sub, write_model

HOTWIRE = [sys.executable, "-m", "hotwire.server"]
# gRPC C-core's own log line: severity letter, MMDD, time, thread id, file:line]
GRPC_CORE_LINE = re.compile(r"^[EWID]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # Without the GRPC_VERBOSITY this test process got from importing hotwire: the child must set its own.
    inherited = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    return subprocess.run(
        [*HOTWIRE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**inherited, **(env or {})},
    )


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """`simple` (loads, but sets Triton fields hotwire ignores) and `broken` (not an ONNX file)."""
    write_model(
        tmp_path,
        "simple",
        add_sub(),
        "max_batch_size: 8\nresponse_cache { enable: true }\n"
        "instance_group [ { count: 1 kind: KIND_CPU rate_limiter { priority: 1 } } ]",
    )
    write_model(tmp_path, "broken", b"not an onnx model")
    return tmp_path


def test_tritons_flags_configure_the_server(serve, repository):
    process = serve(
        "--model-store",
        str(repository),
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        "--log-verbose=1",
        "--exit-timeout-secs",
        "7",
        "--strict-readiness=false",
        "--exit-on-error=false",
        env={"HOTWIRE_GRPC_PROT": "9000", "HOTWIRE_PERF_ANALYZER_HOME": "/tmp"},
    )
    port = process.wait_listening()
    assert f"hotwire listening on 127.0.0.1:{port}" in process.log
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    # not strict: ready although `broken` failed, which did not stop the server (exit-on-error false)
    assert client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("broken")
    client.close()
    log = process.log
    assert f"model repository {repository}" in log
    assert re.search(r"DEBUG hotwire\.server\.app: settings: .*log_level='DEBUG'", log), log
    assert "grpc._cython.cygrpc" not in log  # DEBUG is hotwire's: not grpc's line per call
    assert re.search(r"WARNING .*model simple: .*'response_cache'.*ignored", log), log
    assert re.search(r"WARNING .*model simple: .*'instance_group\[0\]\.rate_limiter'.*ignored", log), log
    assert re.search(r"WARNING .*HOTWIRE_GRPC_PROT .*did you mean HOTWIRE_GRPC_PORT", log), log
    assert "HOTWIRE_PERF_ANALYZER_HOME" not in log  # read by the bench, not a misspelling
    assert process.stop() == 0
    assert "grace 7 s" in process.log


def test_readiness_is_strict_by_default(serve, repository):
    process = serve(
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
    )
    port = process.wait_listening()
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_model_ready("simple") and not client.is_server_ready()
    client.close()
    assert process.stop() == 0


def test_exit_on_error_true_exits_when_a_model_fails_to_load(repository):
    result = _run(
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--exit-on-error=true",
    )
    assert result.returncode == 1, result.stderr
    assert "--exit-on-error: model broken failed to load" in result.stderr
    assert "hotwire listening" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--exit-on-error=true", True),
        ("--exit-on-error=false", False),
        ("--exit-on-error=1", True),
        ("--exit-on-error=0", False),
        ("--exit-on-error=yes", True),
        ("--exit-on-error", True),
        ("--strict-readiness=false", False),
        ("--strict-readiness=False", False),
        ("--strict-readiness=no", False),
    ],
)
def test_boolean_flags_take_tritons_forms(flag, expected):
    config = parse_serve_args([flag], {})
    assert getattr(config, flag[2:].split("=")[0].replace("-", "_")) is expected
    defaults = parse_serve_args([], {})
    assert defaults.exit_on_error is False and defaults.strict_readiness is True
    assert parse_serve_args([], {"HOTWIRE_STRICT_READINESS": "false"}).strict_readiness is False


@pytest.mark.parametrize(("given", "used"), [("default", "plain"), ("ISO8601", "plain"), ("json", "json")])
def test_tritons_log_formats_are_taken(given, used):
    assert parse_serve_args(["--log-format", given], {}).log_format == used
    assert parse_serve_args([], {"HOTWIRE_LOG_FORMAT": given}).log_format == used


def test_tritonserver_flags_get_a_hint_instead_of_unrecognized_arguments():
    result = _run(
        "serve",
        "--http-thread-count",
        "8",
        "--model-load-thread-count=4",
        "--allow-metrics",
        "false",
        "--log-info",
        "--reuse-grpc-port=1",
        "--response-cache-byte-size",
        "1024",
        "--frobnicate",
    )
    assert result.returncode == 2
    stderr = result.stderr
    assert "--http-thread-count: hotwire serves HTTP on its event loop" in stderr
    assert "--model-load-thread-count: not supported by hotwire" in stderr
    assert "--allow-metrics: use --metrics-port -1" in stderr
    assert "--log-info: use --log-level INFO" in stderr
    assert "--reuse-grpc-port: use --workers N" in stderr
    assert "--response-cache-byte-size: not supported by hotwire" in stderr
    # only what is neither a Triton flag nor a Triton flag's value is unrecognized
    assert stderr.rstrip().endswith("unrecognized arguments: --frobnicate"), stderr


def test_version_and_the_environment_variables_in_help():
    for args in (["--version"], ["serve", "--version"]):
        result = _run(*args)
        assert result.returncode == 0 and re.fullmatch(r"hotwire \d+\.\d+\S*\n", result.stdout), result
    result = _run("serve", "--help")
    assert result.returncode == 0
    for variable in variables():
        assert variable in result.stdout
    for alias in ("--model-store", "--grpc-address", "--exit-timeout-secs", "--log-verbose"):
        assert alias in result.stdout


def test_an_empty_repository_warns_and_a_port_in_use_is_one_clean_line(serve, tmp_path):
    first = serve(
        "--model-repository", str(tmp_path), "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1"
    )
    port = first.wait_listening()
    assert re.search(rf"WARNING .*model repository {re.escape(str(tmp_path))} is empty", first.log), first.log
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_ready()
    client.close()
    second = _run(
        "serve",
        "--model-repository",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--metrics-port",
        "-1",
    )
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if " INFO " not in line and " WARNING " not in line]
    assert errors == [
        (
            f"hotwire: gRPC: cannot bind 127.0.0.1:{port}: Address already in use "
            "(is another server using the port, or the host wrong?)"
        )
    ], second.stderr
    assert not GRPC_CORE_LINE.search(second.stderr) and "GRPC_VERBOSITY" not in second.stderr
    assert first.stop() == 0


def test_traffic_with_nothing_to_change_is_a_usage_error():
    result = _run("traffic", "classifier", "--url", "127.0.0.1:1")
    assert result.returncode == 2
    assert "nothing to change" in result.stderr and "updated" not in result.stdout


@pytest.mark.slow
def test_warm_kernels_counts_the_same_signatures_cold_and_warm(tmp_path):
    cache = tmp_path / "kernels"
    cold = _run("warm-kernels", "--kernel-cache-dir", str(cache), timeout=600)
    warm = _run("warm-kernels", "--kernel-cache-dir", str(cache), "--check", timeout=600)
    assert cold.returncode == 0 and warm.returncode == 0, (cold.stderr, warm.stderr)
    compiled = re.fullmatch(r"kernel cache \S+: 0 kernel signatures loaded, (\d+) compiled\n", cold.stdout)
    loaded = re.fullmatch(r"kernel cache \S+: (\d+) kernel signatures loaded, 0 compiled\n", warm.stdout)
    assert compiled and loaded, (cold.stdout, warm.stdout)
    assert int(compiled.group(1)) == int(loaded.group(1)) > 0
