"""The inline and echo reference servers speak the protocol the way perf_analyzer and tritonclient expect:
metadata shapes start with -1, config dims leave the batch dimension out, inline answers what in-process
onnxruntime answers, echo answers zeros of the right name and shape, and SIGTERM exits 0."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from hotwire.bench.models import serialize_model, small_classifier
from server_harness import LoggedProcess

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class ReferenceProcess(LoggedProcess):
    """`python -m hotwire.bench.reference_servers KIND ...`."""

    def __init__(self, kind: str, model: Path, name: str) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "hotwire.bench.reference_servers",
                kind,
                "--model",
                str(model),
                "--name",
                name,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            LISTENING,
        )

    def url(self, timeout: float = 30) -> str:
        return f"127.0.0.1:{self.wait_listening(timeout)}"


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "classifier.onnx"
    path.write_bytes(serialize_model(small_classifier()))
    return path


@pytest.fixture(scope="module")
def servers(classifier_file: Path) -> Iterator[dict[str, ReferenceProcess]]:
    # Both start at once: their start-up (imports, session creation) overlaps.
    started = {kind: ReferenceProcess(kind, classifier_file, "classifier") for kind in ("inline", "echo")}
    yield started
    for process in started.values():
        process.close()


@pytest.fixture
def client_for(
    servers: dict[str, ReferenceProcess],
) -> Iterator[Callable[[str], triton.InferenceServerClient]]:
    clients: list[triton.InferenceServerClient] = []

    def make(kind: str) -> triton.InferenceServerClient:
        client = triton.InferenceServerClient(servers[kind].url())
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _infer(client: triton.InferenceServerClient, x: np.ndarray) -> triton.InferResult:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("classifier", [tensor])


@pytest.mark.parametrize("kind", ["inline", "echo"])
def test_reference_server_reports_batched_metadata_and_config(client_for, kind):
    client = client_for(kind)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("classifier")
    assert not client.is_model_ready("missing")
    assert list(client.get_server_metadata().extensions) == []
    metadata = client.get_model_metadata("classifier")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("input", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 4])
    ]
    config = client.get_model_config("classifier").config
    assert config.max_batch_size == 64
    # 11: TYPE_FP32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", 11, [16])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("probabilities", 11, [4])]


def test_inline_answers_what_in_process_onnxruntime_answers(client_for, classifier_file):
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(classifier_file), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    got = _infer(client_for("inline"), x).as_numpy("probabilities")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_echo_answers_zeros_of_the_right_name_and_shape(client_for):
    client = client_for("echo")
    for batch in (1, 5, 5):
        result = _infer(client, np.ones((batch, 16), dtype=np.float32))
        output = result.get_output("probabilities")
        assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [batch, 4])
        probabilities = result.as_numpy("probabilities")
        assert probabilities.dtype == np.float32 and probabilities.shape == (batch, 4)
        assert not probabilities.any()


def test_unknown_model_is_not_found(client_for):
    with pytest.raises(triton.InferenceServerException, match="StatusCode.NOT_FOUND"):
        client_for("echo").get_model_metadata("missing")


def test_sigterm_exits_zero(classifier_file):
    process = ReferenceProcess("echo", classifier_file, "classifier")
    try:
        process.url()
        assert process.stop() == 0
    finally:
        process.close()


def test_inline_http_answers_what_in_process_onnxruntime_answers_in_json_and_binary(classifier_file):
    """The HTTP reference (`inline-http`, reference_http.py): what perf_analyzer -i http asks of it, through
    tritonclient.http, and SIGTERM exits 0."""
    import tritonclient.http as triton_http

    process = ReferenceProcess("inline-http", classifier_file, "classifier")
    try:
        client = triton_http.InferenceServerClient(process.url())
        try:
            assert (
                client.is_server_live() and client.is_server_ready() and client.is_model_ready("classifier")
            )
            metadata = client.get_model_metadata("classifier")
            assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
                ("input", "FP32", [-1, 16])
            ]
            assert client.get_model_config("classifier")["max_batch_size"] == 64
            x = np.random.default_rng(8).standard_normal((3, 16)).astype(np.float32)
            expected = ort.InferenceSession(str(classifier_file), providers=["CPUExecutionProvider"]).run(
                None, {"input": x}
            )[0]
            for binary in (True, False):
                tensor = triton_http.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                output = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
                got = client.infer("classifier", [tensor], outputs=[output]).as_numpy("probabilities")
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        finally:
            client.close()
        assert process.stop() == 0
    finally:
        process.close()
