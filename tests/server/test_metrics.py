"""/metrics after a known sequence of requests: Triton's names, labels and exact values."""

from __future__ import annotations

import re
import urllib.request

import grpc
import numpy as np
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from onnx_models import add_sub, write_model


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def value(body: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in {"model": "simple", "version": "1", **labels}.items())
    match = re.search(rf"^{name}{{{re.escape(label_text)}}} (\S+)$", body, re.MULTILINE)
    assert match, f"{name}{{{label_text}}} not in /metrics"
    return float(match.group(1))


def request(rows: int, width: int = 16) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="FP32", shape=[rows, width])
        message.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return message


def test_metrics_count_successes_rows_and_failures_exactly(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", add_sub(), "max_batch_size: 8\ndynamic_batching { }")
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)
    for rows in (1, 2, 3, 4, 5):
        stub.ModelInfer(request(rows))
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request(1, width=3))  # wrong shape: a failure counted as OTHER
    body = scrape(server.app.metrics_port)
    assert "# TYPE nv_inference_request_success counter" in body
    assert value(body, "nv_inference_request_success") == 5
    assert value(body, "nv_inference_count") == 15
    assert value(body, "nv_inference_exec_count") == 5
    assert value(body, "nv_inference_request_failure", reason="OTHER") == 2
    assert value(body, "nv_inference_request_failure", reason="REJECTED") == 0
    assert value(body, "nv_inference_request_duration_us") > value(body, "nv_inference_compute_infer_duration_us") > 0
    assert "process_resident_memory_bytes" in body
