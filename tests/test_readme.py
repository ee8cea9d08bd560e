"""The README's examples run as printed, against a real `hotwire serve` of the bundled models: only the
address changes (the tests' server listens on an ephemeral port of 127.0.0.1, the README's on
localhost:8001)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from external_tools import missing
from hotwire.bench import perf_analyzer

README = (Path(__file__).parents[1] / "README.md").read_text()
README_ADDRESS = "localhost:8001"
README_HTTP_ADDRESS = "localhost:8000"
NUMBER = re.compile(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _example(language: str, marker: str) -> str:
    found = [block for block in _blocks(language) if marker in block]
    assert len(found) == 1, (
        f"expected one {language} example in README.md containing {marker!r}, found {len(found)}"
    )
    return found[0]


@pytest.fixture(scope="module")
def server() -> object:
    from server_harness import ServeProcess

    process = ServeProcess(
        ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1"]
    )
    try:
        process.wait_listening(180)
        yield process
    finally:
        process.stop()
        process.close()


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def http_address(server) -> str:
    return f"127.0.0.1:{server.http_port}"


def _run_python(example: str, address: str, cwd: Path | None = None) -> str:
    assert README_ADDRESS in example
    result = subprocess.run(
        [sys.executable, "-c", example.replace(README_ADDRESS, address)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    ("marker", "shape"), [('client.infer("classifier"', (2, 4)), ('client.infer("image_classifier"', (1, 10))]
)
def test_the_tritonclient_examples_print_probabilities(address, marker, shape):
    printed = _run_python(_example("python", marker), address)
    probabilities = np.array([float(n) for n in NUMBER.findall(printed)]).reshape(shape)  # a softmax per row
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_the_hotwire_client_example_prints_probabilities(address):
    printed = _run_python(_example("python", "from hotwire.clients import Client"), address)
    probabilities = np.array([float(n) for n in NUMBER.findall(printed)]).reshape(2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_generated_client_example_prints_probabilities(address, tmp_path):
    command = shlex.split(_example("bash", "hotwire client generate").split("#")[0])
    assert command[:3] == ["hotwire", "client", "generate"]
    argv = [address if arg == README_ADDRESS else arg for arg in command[1:]]
    generated = subprocess.run(
        [sys.executable, "-m", "hotwire.server", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    printed = _run_python(_example("python", "from mymodels import ClassifierClient"), address, cwd=tmp_path)
    probabilities = np.array([float(n) for n in NUMBER.findall(printed)]).reshape(2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_the_perf_analyzer_example_completes_up_to_concurrency_16(address):
    tool, why = perf_analyzer.locate()
    if tool is None:
        missing(why)
    assert tool is not None
    block = _example("bash", "bin/perf_analyzer -m")
    command = block[block.index("~/.cache/hotwire/perf-analyzer/bin/perf_analyzer") :].replace("\\\n", " ")
    argv = shlex.split(command.strip())
    argv[0] = tool.path  # the README's path is the default install location; the located one may be elsewhere
    argv = [address if arg == README_ADDRESS else arg for arg in argv]
    result = subprocess.run(argv, capture_output=True, text=True, env=tool.env, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for level in (4, 8, 12, 16):
        assert f"Concurrency: {level}, throughput:" in result.stdout, result.stdout[-3000:]


def test_the_curl_examples_answer_as_described(http_address):
    block = _example("bash", "curl -s localhost:8000")
    commands = [c for c in re.split(r"\n(?=curl )", block.strip())]
    assert len(commands) == 3
    outputs = []
    for command in commands:
        assert README_HTTP_ADDRESS in command
        result = subprocess.run(
            ["bash", "-c", command.replace(README_HTTP_ADDRESS, http_address)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0].strip() == "200"
    metadata = json.loads(outputs[1])
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    answer = json.loads(outputs[2])
    assert (answer["model_name"], answer["model_version"]) == ("classifier", "1")
    (probabilities,) = answer["outputs"]
    assert (probabilities["name"], probabilities["datatype"], probabilities["shape"]) == (
        "probabilities",
        "FP32",
        [1, 4],
    )
    np.testing.assert_allclose(sum(probabilities["data"]), 1.0, rtol=1e-5)
