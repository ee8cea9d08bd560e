"""The client against another Open Inference Protocol implementation: the bench's inline and echo reference
servers (protobuf-parsed grpc.aio servicers, no hotwire code on their request path), for the methods they
implement; the rest answer UNIMPLEMENTED, which the client raises as ServerError."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest

from hotwire.bench.models import serialize_model, small_classifier
from hotwire.clients import Client, ServerError
from onnx_models import ort_reference
from server_harness import LoggedProcess

CLASSIFIER = small_classifier()
LISTENING = r"listening on 127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    import re

    path = tmp_path_factory.mktemp("reference") / "classifier.onnx"
    path.write_bytes(serialize_model(CLASSIFIER))
    processes = {
        kind: LoggedProcess(
            [
                sys.executable,
                "-m",
                "hotwire.bench.reference_servers",
                kind,
                "--model",
                str(path),
                "--name",
                "classifier",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],  # fmt: skip
            re.compile(LISTENING),
        )
        for kind in ("inline", "echo")
    }
    try:
        yield {kind: f"127.0.0.1:{process.wait_listening(60)}" for kind, process in processes.items()}
    finally:
        for process in processes.values():
            process.close()


@pytest.mark.parametrize("multiplex", [True, False], ids=["multiplexed", "unary"])
def test_inline_answers_what_onnxruntime_answers(urls, multiplex):
    x = np.random.default_rng(5).random((3, 16), dtype=np.float32)
    with Client(urls["inline"], multiplex=multiplex) as client:
        assert client.server_live() and client.server_ready() and client.model_ready("classifier")
        metadata = client.model_metadata("classifier")
        assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("input", "FP32", (-1, 16))]
        assert client.model_config("classifier").max_batch_size > 0
        result = client.infer("classifier", {"input": x})
    expected = ort_reference(CLASSIFIER, {"input": x})["probabilities"]
    np.testing.assert_allclose(result["probabilities"], expected, rtol=1e-6)


@pytest.mark.parametrize("multiplex", [True, False], ids=["multiplexed", "unary"])
def test_echo_answers_zeros_of_the_right_shape(urls, multiplex):
    with Client(urls["echo"], multiplex=multiplex) as client:
        result = client.infer("classifier", {"input": np.ones((4, 16), np.float32)})
    assert result["probabilities"].shape == (4, 4) and not result["probabilities"].any()


def test_methods_a_server_lacks_raise_server_error_unimplemented(urls):
    with Client(urls["echo"]) as client, pytest.raises(ServerError) as caught:
        client.repository_index()
    assert caught.value.status == "UNIMPLEMENTED"
