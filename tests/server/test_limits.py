"""Limits (limits.py): what a config may ask for, and what clients may ask per request and per second;
refusals with their status, message, retry hint and metric, through the real server."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server.errors import ModelLoadError, Overloaded, RequestTooLarge, Shed
from hotwire.server.limits import AdmissionControl, BufferBudget, RequestLimits, TokenBucket
from hotwire.server.loader import buffer_bytes
from onnx_models import SIMPLE_CONFIG, add_sub, matmul_chain, ort_reference, simple_inputs, write_model

MODEL = add_sub()
HOLDING_CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 1000000 }
"""


def _inputs(count: int, rows: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(shape=(rows, 16)) for _ in range(count)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _request(rows: int = 1, seed: int = 0, outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple")
    for name, array in simple_inputs(rows, seed).items():
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _refused(body: str, reason: str) -> float:
    match = re.search(rf'^hotwire_requests_refused_total{{reason="{reason}"}} (\S+)$', body, re.MULTILINE)
    assert match, body[-2000:]
    return float(match.group(1))


def _scrape(server) -> str:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{server.app.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


# ----- the pieces on their own ------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # the next token in 1/rate
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0
    assert [bucket.take(100.0) for _ in range(4)][-1] > 0  # a long idle saves at most `burst`


def test_admission_caps_and_rates_with_their_retry_hints() -> None:
    clock = FakeClock()
    gate = AdmissionControl(
        RequestLimits(max_inflight=2, max_request_tensors=4, max_request_rows=8, rate=100, burst=3), clock
    )
    with pytest.raises(RequestTooLarge, match="3 inputs and 2 requested outputs, over the server's 4"):
        gate.enter(_inputs(3, 1), 2)
    with pytest.raises(RequestTooLarge, match="9 rows, over the server's 8"):
        gate.enter(_inputs(1, 9), 0)
    gate.enter(_inputs(1, 1), 0)
    gate.enter(_inputs(1, 1), 0)
    with pytest.raises(Overloaded, match="2 requests in flight") as full:
        gate.enter(_inputs(1, 1), 0)
    assert full.value.retry_after_s > 0
    gate.leave()
    gate.enter(_inputs(1, 1), 0)  # the third token
    gate.leave()
    with pytest.raises(Overloaded, match="100 requests per second") as limited:
        gate.enter(_inputs(1, 1), 0)
    assert limited.value.retry_after_s == pytest.approx(0.01)
    clock.now += 0.01
    gate.enter(_inputs(1, 1), 0)
    assert gate.refused == {
        "concurrency": 1,
        "rate": 1,
        "caller_rate": 0,
        "tensors": 1,
        "rows": 1,
        "deadline": 0,
    }
    with pytest.raises(Shed, match="about 300 ms, more than the 100 ms left"):
        gate.check_deadline("m", 0.3, 0.1)
    gate.check_deadline("m", 0.3, 0.5)
    assert gate.refused["deadline"] == 1


def test_per_caller_buckets_are_separate_and_bounded() -> None:
    clock = FakeClock()
    gate = AdmissionControl(RequestLimits(caller_rate=1, caller_burst=1), clock)
    gate.enter(_inputs(1, 1), 0, caller="a")
    with pytest.raises(Overloaded, match="per caller"):
        gate.enter(_inputs(1, 1), 0, caller="a")
    gate.enter(_inputs(1, 1), 0, caller="b")  # another caller has its own bucket
    for index in range(5000):  # many callers: only the most recent few thousand are remembered
        gate.enter(_inputs(1, 1), 0, caller=index)
        gate.leave()
    assert len(gate._callers) <= 4096


def test_buffer_budget_reserves_and_releases() -> None:
    budget = BufferBudget(1000)
    first = budget.reserve(600, "model 'a'")
    with pytest.raises(ModelLoadError, match="model 'b' needs .* budget .*--max-buffer-bytes"):
        budget.reserve(600, "model 'b'")
    first.release()
    first.release()  # idempotent
    assert budget.used == 0
    budget.reserve(600, "model 'b'")


# ----- through the server ------------------------------------------------------------------------------


def test_rate_limit_refuses_with_retry_after_on_grpc_and_http(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", MODEL, SIMPLE_CONFIG)
    server = running_server(tmp_path, rate_limit=0.5, rate_burst=3, metrics_port=0)
    stub = stub_for(server)
    feeds = simple_inputs(1)
    expected = ort_reference(MODEL, feeds)
    for _ in range(3):
        response = stub.ModelInfer(_request(), timeout=10)
        got = np.frombuffer(response.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(got, expected["OUTPUT0"].reshape(-1))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "0.5 requests per second" in refused.value.details()
    trailers = dict(refused.value.trailing_metadata())
    assert trailers["retry-after"] == "2"  # a token every 2 s
    assert 1000 <= int(trailers["grpc-retry-pushback-ms"]) <= 2000
    connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=10)
    body = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                for n, a in feeds.items()
            ]
        }
    )
    connection.request("POST", "/v2/models/simple/infer", body=body)
    answer = connection.getresponse()
    assert answer.status == 429 and answer.getheader("Retry-After") in ("1", "2")
    assert b"requests per second" in answer.read()
    connection.close()
    assert _refused(_scrape(server), "rate") == 2
    assert _refused(_scrape(server), "concurrency") == 0


def test_per_key_rates_hold_each_key_to_its_own_bucket(tmp_path, running_server):
    write_model(tmp_path / "repo", "simple", MODEL, SIMPLE_CONFIG)
    keys = tmp_path / "keys"
    keys.write_text("".join(f"infer {hashlib.sha256(k.encode()).hexdigest()}\n" for k in ("key-a", "key-b")))
    server = running_server(
        tmp_path / "repo", api_keys=keys, caller_rate_limit=0.2, caller_burst=2, metrics_port=0
    )
    inputs = []
    for name, array in simple_inputs(1).items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.address) as client:
        for _ in range(2):
            client.infer("simple", inputs, headers={"authorization": "Bearer key-a"})
        with pytest.raises(InferenceServerException, match="per caller") as error:
            client.infer("simple", inputs, headers={"authorization": "Bearer key-a"})
        assert str(error.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
        for _ in range(2):  # key-b's bucket is untouched
            client.infer("simple", inputs, headers={"authorization": "Bearer key-b"})
    assert _refused(_scrape(server), "caller_rate") == 1


def test_in_flight_cap_refuses_beyond_it_and_the_held_requests_finish(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", MODEL, HOLDING_CONFIG)
    server = running_server(tmp_path, max_inflight=2)
    stub = stub_for(server)
    held = [stub.ModelInfer.future(_request(1, seed=i), timeout=30) for i in range(2)]
    batcher = server.app.registry.route("simple", "").batcher
    deadline = time.monotonic() + 10
    while batcher.queued < 2:  # both wait up to a second for a batch of 8
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 requests in flight" in refused.value.details()
    assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
    for index, future in enumerate(held):
        expected = ort_reference(MODEL, simple_inputs(1, seed=index))["OUTPUT0"]
        got = np.frombuffer(future.result(timeout=30).raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(got, expected.reshape(-1))
    stub.ModelInfer(_request(), timeout=10)  # the slots are back


def test_tensor_and_row_caps_per_request(tmp_path, running_server, stub_for):
    write_model(tmp_path, "simple", MODEL, SIMPLE_CONFIG)
    server = running_server(tmp_path, max_request_tensors=3, max_request_rows=4)
    stub = stub_for(server)
    stub.ModelInfer(_request(4, outputs=("OUTPUT0",)), timeout=10)  # 3 tensors, 4 rows: at the caps
    for request, message in (
        (_request(1, outputs=("OUTPUT0", "OUTPUT1")), "2 inputs and 2 requested outputs"),
        (_request(5), "5 rows, over the server's 4 per request"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert message in refused.value.details()
        assert "retry-after" not in dict(refused.value.trailing_metadata() or ())  # retrying won't help
    connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=10)
    rows = np.zeros((5, 16), np.float32).reshape(-1).tolist()
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [5, 16], "data": rows} for n in ("INPUT0", "INPUT1")
        ]
    }
    connection.request("POST", "/v2/models/simple/infer", body=json.dumps(body))
    answer = connection.getresponse()
    assert answer.status == 400 and b"per request" in answer.read()
    connection.close()


def test_a_request_whose_deadline_the_queue_outlasts_is_shed_before_it_queues(
    tmp_path, running_server, stub_for
):
    config = "max_batch_size: 64\ndynamic_batching { }"
    write_model(tmp_path, "slow", matmul_chain(layers=40, width=512), config)  # ~0.1 s per batch of 64
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)

    def infer(rows: int, deadline: float) -> pb.ModelInferResponse:
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="x", datatype="FP32", shape=[rows, 512])
        request.raw_input_contents.append(np.ones((rows, 512), np.float32).tobytes())
        return stub.ModelInfer(request, timeout=deadline)

    infer(64, 60)  # measured once: the batcher knows what a row costs
    batcher = server.app.registry.route("slow", "").batcher
    with ThreadPoolExecutor(16) as pool:
        busy = [pool.submit(infer, 64, 60) for _ in range(16)]
        deadline = time.monotonic() + 20
        while batcher.queued < 8:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        ahead = batcher.expected_wait_s()  # 8+ queued batches of 64 rows on one instance
        assert ahead > 0.02
        with pytest.raises(grpc.RpcError) as shed:
            infer(1, ahead / 3)  # far less time than the queue ahead needs
        assert shed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "shed: the queue ahead needs about" in shed.value.details()
        for future in busy:
            future.result(timeout=60)
    stats = server.app.registry.route("slow", "").stats
    assert stats.inference_count == 17 * 64  # the first request and the 16 busy ones: the shed row never ran
    assert _refused(_scrape(server), "deadline") == 1


# ----- what a config may ask for ------------------------------------------------------------------------


def test_configs_over_the_caps_fail_their_own_load_only(tmp_path, running_server):
    write_model(tmp_path, "simple", MODEL, SIMPLE_CONFIG)
    config = SIMPLE_CONFIG.replace('name: "simple"\n', "")
    write_model(tmp_path, "huge_batch", MODEL, config.replace("max_batch_size: 8", "max_batch_size: 200000"))
    write_model(tmp_path, "many", MODEL, config.replace("count: 1", "count: 16"))
    server = running_server(tmp_path)
    index = {m.name: m for m in server.app.plane.repository_index().models}
    assert index["simple"].state == "READY"
    assert (
        "max_batch_size 200000 is over the server's 4096 (--max-model-batch-size)"
        in index["huge_batch"].reason
    )
    assert "16 instances, over the server's 8 per model (--max-model-instances)" in index["many"].reason


def test_the_buffer_budget_spans_models_and_is_released_at_unload(tmp_path, running_server):
    for name in ("a", "b"):
        write_model(tmp_path, name, MODEL, SIMPLE_CONFIG.replace('name: "simple"\n', ""))
    server = running_server(tmp_path, model_control_mode="explicit", load_model=("a",))
    one_model = server.app.registry.buffer_budget.used
    signature = server.app.registry.route("a", "").signature
    assert one_model == buffer_bytes(signature) == 8 * 4 * 16 * 4  # 8 rows x 4 tensors x 16 FP32
    server.stop()

    server = running_server(
        tmp_path,
        model_control_mode="explicit",
        load_model=("a",),
        max_buffer_bytes=one_model + one_model // 2,
    )
    with grpcclient.InferenceServerClient(server.address) as client:
        with pytest.raises(InferenceServerException, match="--max-buffer-bytes"):
            client.load_model("b")
        assert client.is_model_ready("a") and not client.is_model_ready("b")
        client.unload_model("a")
        client.load_model("b")  # a's share came back
        assert client.is_model_ready("b")
        assert server.app.registry.buffer_budget.used == one_model


def test_the_issue_s_uploaded_config_is_refused_and_costs_no_memory(tmp_path, running_server):
    """A 45-byte config asking for max_batch_size 200000 once took the server from 222 to 1,028 MiB."""
    write_model(tmp_path, "simple", MODEL, SIMPLE_CONFIG)
    server = running_server(tmp_path, model_control_mode="explicit")

    def resident_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    before = resident_mib()
    with grpcclient.InferenceServerClient(server.address) as client:
        with pytest.raises(InferenceServerException, match="--max-model-batch-size"):
            client.load_model("simple", config='{"max_batch_size": 200000}')
    assert resident_mib() - before < 50
