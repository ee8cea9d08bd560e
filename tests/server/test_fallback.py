"""Fallbacks and circuit breakers (ARCHITECTURE.md §Fallbacks and circuit breakers) through the real server
on 127.0.0.1: a model that ONNX Runtime fails for some inputs at run time (a Gather index out of bounds),
answered by a fallback model (compared with in-process ONNX Runtime) or a constant response, on gRPC unary,
stream and HTTP; client faults never masked; the breaker opening on consecutive failures and on the error
rate, skipping the model (its statistics do not move), probing after open_seconds and closing or re-opening;
the metrics; and config errors failing only the model that has them. The breaker's state machine is also
checked alone, on a fake clock."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2 as mc
from hotwire.server import datatypes
from hotwire.server.errors import ConfigError
from hotwire.server.fallback import Admission, Breaker, BreakerState, constant_outputs
from hotwire.server.model_config import (
    BreakerParameters,
    FallbackParameters,
    Signature,
    TensorSpec,
    fallback_parameters,
)
from onnx_models import add_sub, ort_reference, tiny_model, write_model
from server_harness import ServerThread

WIDTH = 16
FALLBACK = "hotwire_fallback"
CAUSE = "hotwire_fallback_cause"
BREAKER = "hotwire_breaker"
DEADLINE_S = 10.0  # bound of every polling loop: generous, so a loaded machine never fails a test


def trap_add_sub(offset: float = 0.0) -> onnx.ModelProto:
    """Triton's 'simple' (OUTPUT0 = INPUT0 + INPUT1 + offset, OUTPUT1 = INPUT0 - INPUT1) that ONNX Runtime
    fails at run time when the largest INPUT0 element is 2 or more: that value, as an integer, indexes a
    2-element Gather, and ORT refuses an index out of bounds. (Warm-up's zeros pass.)"""
    shape: list[str | int] = ["batch", WIDTH]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)  # noqa: E731
    nodes = [
        helper.make_node("ReduceMax", ["INPUT0"], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["picked"]),
        helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["sum"]),
        helper.make_node("Add", ["sum", "nothing"], ["sum_or_fail"]),
        helper.make_node("Add", ["sum_or_fail", "offset"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    initializers = [
        numpy_helper.from_array(np.zeros(2, np.float32), "table"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(offset, np.float32), "offset"),
    ]
    return tiny_model(nodes, [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")], initializers)


PRIMARY = trap_add_sub()
BACKUP = add_sub(WIDTH, offset=100.0)  # its answers differ from the primary's: which one answered shows


def good(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1, 1, (rows, WIDTH)).astype(np.float32) for n in ("INPUT0", "INPUT1")}


def bad(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs the primary fails on (INPUT0 >= 2 somewhere) and the backup computes."""
    inputs = good(rows, seed)
    inputs["INPUT0"][0, 0] = 5.0
    return inputs


def config(*parameters: tuple[str, str], batching: str = "", extra: str = "") -> str:
    lines = ["max_batch_size: 8", batching, extra]
    lines += [
        f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}"
        for k, v in parameters
    ]
    return "\n".join(line for line in lines if line)


# -- talking to the server


def grpc_request(
    model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="r")
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def arrays_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, np.float32).reshape(tuple(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents)
    }


def params_of(response: pb.ModelInferResponse) -> dict[str, str]:
    return {key: value.string_param for key, value in response.parameters.items()}


def http_infer(
    server: ServerThread, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
            for n, a in inputs.items()
        ]
    }
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    connection = http.client.HTTPConnection(server.http_address, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", json.dumps(body))
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def http_arrays(body: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in body["outputs"]}


def calls(stub: Any, model: str) -> int:
    """How many requests reached the model: its statistics' successes and failures."""
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    return stats.inference_stats.success.count + stats.inference_stats.fail.count


def poll(step: Callable[[], bool], what: str) -> None:
    """Repeat `step` until it says done, within DEADLINE_S (no single timing assumption)."""
    deadline = time.monotonic() + DEADLINE_S
    while not step():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def assert_backup_answered(outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    expected = ort_reference(BACKUP, inputs)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-6)


def scrape(server: ServerThread) -> str:
    url = f"http://127.0.0.1:{server.app.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


def metric(body: str, name: str, **labels: str) -> float:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{re.escape(text)}}} (\S+)$", body, re.MULTILINE)
    assert match, f"{name}{{{text}}} not in /metrics"
    return float(match.group(1))


# -- a fallback model


def test_a_fallback_model_answers_when_the_model_fails_on_grpc_stream_and_http(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(tmp_path, "primary", PRIMARY, config(("fallback_model", "backup")))
    write_model(tmp_path, "backup", BACKUP, config())
    server = running_server(tmp_path)
    stub = stub_for(server)

    # the model answers what it can, unmarked
    inputs = good()
    response = stub.ModelInfer(grpc_request("primary", inputs))
    assert params_of(response) == {}
    np.testing.assert_allclose(arrays_of(response)["OUTPUT0"], ort_reference(PRIMARY, inputs)["OUTPUT0"])

    # ORT fails: the backup answers, in the primary's name, and says so
    inputs = bad()
    response = stub.ModelInfer(grpc_request("primary", inputs))
    assert (response.model_name, response.model_version) == ("primary", "1")
    assert params_of(response) == {
        FALLBACK: "model:backup",
        CAUSE: "INTERNAL",
        "hotwire_fallback_version": "1",
    }
    assert_backup_answered(arrays_of(response), inputs)

    # a stream gets the same, message by message, in order
    sent = [bad(seed=1), good(seed=2), bad(seed=3)]
    replies = list(stub.ModelStreamInfer(iter(grpc_request("primary", i) for i in sent), timeout=30))
    assert [r.error_message for r in replies] == ["", "", ""]
    streamed = [r.infer_response for r in replies]
    assert [params_of(r).get(FALLBACK) for r in streamed] == ["model:backup", None, "model:backup"]
    assert_backup_answered(arrays_of(streamed[0]), sent[0])
    assert_backup_answered(arrays_of(streamed[2]), sent[2])

    # HTTP: the parameters in the JSON header
    status, body = http_infer(server, "primary", inputs, ["OUTPUT1"])
    assert status == 200, body
    assert body["model_name"] == "primary"
    assert body["parameters"][FALLBACK] == "model:backup" and body["parameters"][CAUSE] == "INTERNAL"
    assert [o["name"] for o in body["outputs"]] == ["OUTPUT1"]
    np.testing.assert_allclose(http_arrays(body)["OUTPUT1"], ort_reference(BACKUP, inputs)["OUTPUT1"])

    # the failures are the primary's, the answers the backup's (3 fallbacks + HTTP)
    (primary,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="primary")).model_stats
    assert (primary.inference_stats.fail.count, primary.inference_stats.success.count) == (4, 2)
    assert calls(stub, "backup") == 4


def test_client_faults_are_never_answered_by_the_fallback(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "primary",
        PRIMARY,
        config(
            ("fallback_model", "backup"),
            ("breaker_consecutive_failures", "1"),
            ("breaker_open_seconds", "60"),
        ),
    )
    write_model(tmp_path, "backup", BACKUP, config())
    server = running_server(tmp_path)
    stub = stub_for(server)
    wrong_width = {n: np.ones((1, 5), np.float32) for n in ("INPUT0", "INPUT1")}

    def refused(request: pb.ModelInferRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        return caught.value

    for breaker in ("closed", "open"):
        error = refused(grpc_request("primary", wrong_width))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, breaker
        assert "shape [1, 5]" in error.details()
        error = refused(grpc_request("primary", good(), ["NO_SUCH_OUTPUT"]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "NO_SUCH_OUTPUT" in error.details()
        status, body = http_infer(server, "primary", wrong_width)
        assert status == 400 and "shape [1, 5]" in body["error"]
        error = refused(grpc_request("primary", {"INPUT0": good()["INPUT0"]}))  # a missing input
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        if breaker == "closed":
            # client faults never open the breaker: it is still closed, and the model still answers
            assert params_of(stub.ModelInfer(grpc_request("primary", good()))) == {}
            stub.ModelInfer(grpc_request("primary", bad()))  # one server-side failure: opens it
    assert calls(stub, "backup") == 1  # only the failure's answer


# -- a constant response


def test_a_constant_response_is_repeated_for_the_batch_and_cut_to_the_requested_outputs(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    row0 = [float(i) for i in range(WIDTH)]
    constant = json.dumps({"OUTPUT0": row0, "OUTPUT1": [[-1.0] * WIDTH]})  # one row, with or without [ ]
    write_model(
        tmp_path, "primary", PRIMARY, config(("fallback_response", constant), ("execution", "thread"))
    )
    server = running_server(tmp_path)
    stub = stub_for(server)

    response = stub.ModelInfer(grpc_request("primary", bad(rows=3)))
    assert params_of(response) == {FALLBACK: "constant", CAUSE: "INTERNAL"}
    outputs = arrays_of(response)
    np.testing.assert_array_equal(outputs["OUTPUT0"], np.tile(np.array(row0, np.float32), (3, 1)))
    np.testing.assert_array_equal(outputs["OUTPUT1"], np.full((3, WIDTH), -1.0, np.float32))

    response = stub.ModelInfer(grpc_request("primary", bad(rows=1), ["OUTPUT1"]))
    assert [o.name for o in response.outputs] == ["OUTPUT1"] and list(response.outputs[0].shape) == [1, WIDTH]

    status, body = http_infer(server, "primary", bad(rows=2))
    assert status == 200 and body["parameters"] == {FALLBACK: "constant", CAUSE: "INTERNAL"}
    np.testing.assert_array_equal(http_arrays(body)["OUTPUT0"], np.tile(np.array(row0, np.float32), (2, 1)))

    # a good request is still the model's
    inputs = good(rows=2)
    response = stub.ModelInfer(grpc_request("primary", inputs))
    assert params_of(response) == {}
    np.testing.assert_allclose(arrays_of(response)["OUTPUT1"], ort_reference(PRIMARY, inputs)["OUTPUT1"])


# -- the circuit breaker


def test_the_breaker_opens_after_consecutive_failures_skips_the_model_then_probes_and_closes(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "primary",
        PRIMARY,
        config(
            ("fallback_model", "backup"),
            ("breaker_consecutive_failures", "3"),
            ("breaker_open_seconds", "0.2"),
        ),
    )
    write_model(tmp_path, "backup", BACKUP, config())
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)

    # a success between failures resets the count
    states = []
    for inputs in (bad(), bad(), good(), bad(), bad(), bad()):
        states.append(params_of(stub.ModelInfer(grpc_request("primary", inputs))).get(BREAKER))
    assert states == ["closed", "closed", None, "closed", "closed", "open"]
    assert calls(stub, "primary") == 6

    # open: even a good request goes straight to the backup, and the model is not called
    inputs = good(seed=7)
    response = stub.ModelInfer(grpc_request("primary", inputs))
    if params_of(response).get(FALLBACK) is not None:  # (0.2 s may already have passed on a slow machine)
        assert params_of(response) == {
            FALLBACK: "model:backup",
            CAUSE: "breaker_open",
            BREAKER: "open",
            "hotwire_fallback_version": "1",
        }
        assert_backup_answered(arrays_of(response), inputs)
        assert calls(stub, "primary") == 6
    body = scrape(server)
    assert metric(body, "hotwire_breaker_transitions_total", model="primary", state="open") == 1

    # after open_seconds one probe reaches the model; it succeeds, the breaker closes, the model answers again
    # (the requests before it, while open, never reach the model)
    reached = calls(stub, "primary")
    poll(
        lambda: params_of(stub.ModelInfer(grpc_request("primary", good()))) == {},
        "the probe request reached the model",
    )
    assert calls(stub, "primary") == reached + 1
    for seed in range(3):
        assert params_of(stub.ModelInfer(grpc_request("primary", good(seed=seed)))) == {}
    body = scrape(server)
    for state in ("open", "half_open", "closed"):
        assert metric(body, "hotwire_breaker_transitions_total", model="primary", state=state) == 1
    assert metric(body, "hotwire_breaker_state", model="primary", state="closed") == 1
    assert metric(body, "hotwire_breaker_state", model="primary", state="open") == 0
    # typed as Prometheus expects: the counters as counters (filed by the parser without their _total)
    types = {family.name: family.type for family in text_string_to_metric_families(body)}
    assert types["hotwire_fallback_responses"] == types["hotwire_breaker_transitions"] == "counter"
    assert types["hotwire_breaker_rejected"] == "counter" and types["hotwire_breaker_state"] == "gauge"
    # every backup answer was a fallback's, counted: the failures' and the open breaker's
    assert metric(body, "hotwire_fallback_responses_total", model="primary", kind="model") == calls(
        stub, "backup"
    )
    assert metric(body, "hotwire_breaker_rejected_total", model="primary") == 0


def test_a_failed_probe_reopens_the_breaker(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "primary",
        PRIMARY,
        config(
            ("fallback_model", "backup"),
            ("breaker_consecutive_failures", "1"),
            ("breaker_open_seconds", "0.2"),
        ),
    )
    write_model(tmp_path, "backup", BACKUP, config())
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert params_of(stub.ModelInfer(grpc_request("primary", bad())))[BREAKER] == "open"
    reached = calls(stub, "primary")

    # bad requests while open never reach the model; the first after open_seconds does (the probe), fails,
    # and the breaker re-opens: its answer is the backup's, for the model's error, with the breaker open again
    def probed() -> bool:
        params = params_of(stub.ModelInfer(grpc_request("primary", bad())))
        assert params[FALLBACK] == "model:backup" and params[BREAKER] == "open"
        return params[CAUSE] == "INTERNAL"

    poll(probed, "the probe failed")
    assert calls(stub, "primary") == reached + 1
    guard = server.app.registry.guards["primary"]
    assert guard.counts.transitions == {"open": 2, "half_open": 1}
    assert guard.breaker is not None and guard.breaker.state is BreakerState.OPEN


def test_without_a_fallback_an_open_breaker_fails_fast_naming_itself(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "primary",
        PRIMARY,
        config(("breaker_consecutive_failures", "2"), ("breaker_open_seconds", "60")),
    )
    server = running_server(tmp_path, metrics_port=0)
    stub = stub_for(server)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(grpc_request("primary", bad()))
        assert caught.value.code() == grpc.StatusCode.INTERNAL  # the model's own error, as without a breaker
    reached = calls(stub, "primary")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(grpc_request("primary", good()))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "model 'primary': circuit breaker open (2 consecutive failures)" in caught.value.details()
    status, body = http_infer(server, "primary", good())
    assert status == 503 and "circuit breaker open" in body["error"]
    assert calls(stub, "primary") == reached
    body = scrape(server)
    assert metric(body, "hotwire_breaker_rejected_total", model="primary") == 2
    assert metric(body, "hotwire_breaker_state", model="primary", state="open") == 1
    assert "hotwire_fallback_responses_total{" not in body  # no fallback, no such series


def test_the_breaker_opens_on_the_error_rate_over_its_window(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "primary",
        PRIMARY,
        config(
            ("fallback_response", json.dumps({"OUTPUT0": [0.0] * WIDTH, "OUTPUT1": [0.0] * WIDTH})),
            ("breaker_error_rate", "0.5"),
            ("breaker_window", "4"),
            ("breaker_open_seconds", "60"),
        ),
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    states = [
        params_of(stub.ModelInfer(grpc_request("primary", inputs))).get(BREAKER)
        for inputs in (bad(), good(), good(), good(), bad(), good(), bad())
    ]
    # the window of 4 fills at the 4th (1 of 4 failed), then [g g g b] 1/4, [g g b g] 1/4, [g b g b] 2/4:
    # the breaker opens
    assert states == ["closed", None, None, None, "closed", None, "open"]
    response = stub.ModelInfer(grpc_request("primary", good()))
    assert params_of(response) == {FALLBACK: "constant", CAUSE: "breaker_open", BREAKER: "open"}
    assert calls(stub, "primary") == 7


def test_the_app_publishes_the_guard_metrics(
    tmp_path: Path, running_server: Callable[..., ServerThread]
) -> None:
    write_model(tmp_path, "primary", PRIMARY, config(("breaker_consecutive_failures", "2")))
    server = running_server(tmp_path, metrics_port=0)
    body = scrape(server)
    assert metric(body, "hotwire_breaker_state", model="primary", state="closed") == 1


# -- loops and a failing fallback


def test_a_fallback_s_own_fallback_is_never_followed(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    # a -> b -> a, both failing on the same inputs: one hop, then the first model's own error
    write_model(tmp_path, "a", PRIMARY, config(("fallback_model", "b")))
    write_model(tmp_path, "b", trap_add_sub(offset=1.0), config(("fallback_model", "a")))
    server = running_server(tmp_path)
    stub = stub_for(server)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(grpc_request("a", bad()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL and "model 'a:1'" in caught.value.details()
    assert (calls(stub, "a"), calls(stub, "b")) == (1, 1)
    status, body = http_infer(server, "b", bad())
    assert status == 500 and "model 'b:1'" in body["error"]
    assert status == 500 and "onnxruntime failed" in body["error"]


def test_an_open_breaker_whose_fallback_fails_is_unavailable_naming_both(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    write_model(
        tmp_path,
        "primary",
        PRIMARY,
        config(
            ("fallback_model", "missing"),
            ("breaker_consecutive_failures", "1"),
            ("breaker_open_seconds", "60"),
        ),
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    with pytest.raises(grpc.RpcError) as caught:  # the fallback model does not exist: the model's own error
        stub.ModelInfer(grpc_request("primary", bad()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(grpc_request("primary", good()))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker open" in caught.value.details()
    assert "its fallback model:missing failed" in caught.value.details()


# -- configuration


def test_config_errors_fail_only_the_model_that_has_them_with_a_clear_reason(
    tmp_path: Path, running_server: Callable[..., ServerThread], stub_for: Callable[..., Any]
) -> None:
    row = [0.0] * WIDTH
    broken = {
        "self_reference": (("fallback_model", "self_reference"),),
        "not_json": (("fallback_response", "{OUTPUT0: 1"),),
        "unknown_output": (
            ("fallback_response", json.dumps({"OUTPUT0": row, "OUTPUT1": row, "EXTRA": row})),
        ),
        "wrong_shape": (("fallback_response", json.dumps({"OUTPUT0": row[:3], "OUTPUT1": row})),),
        "rate": (("breaker_error_rate", "2"),),
    }
    for name, parameters in broken.items():
        write_model(tmp_path, name, PRIMARY, config(*parameters))
    write_model(
        tmp_path, "fine", PRIMARY, config(("fallback_response", json.dumps({"OUTPUT0": row, "OUTPUT1": row})))
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="fine")).ready
    reasons = {name: server.app.registry.entry(name).reason() for name in broken}
    assert not any(stub.ModelReady(pb.ModelReadyRequest(name=name)).ready for name in broken)
    assert reasons["self_reference"] == (
        "model 'self_reference': parameters 'fallback_model': a model cannot be its own fallback"
    )
    assert reasons["not_json"].startswith("model 'not_json': parameters 'fallback_response': not JSON")
    assert reasons["unknown_output"] == (
        "version 1: model 'unknown_output': parameters 'fallback_response': no output(s) ['EXTRA'] in the "
        "model; its outputs are ['OUTPUT0', 'OUTPUT1']"
    )
    assert reasons["wrong_shape"] == (
        "version 1: model 'wrong_shape': parameters 'fallback_response': output 'OUTPUT0': shape [3], "
        "expected one row of shape [16] (the batch dimension excluded: the row is repeated for each row of a "
        "request)"
    )
    assert (
        reasons["rate"]
        == "model 'rate': parameters 'breaker_error_rate': expected a fraction from 0 to 1, got 2.0"
    )
    # a failed load's reason is what a client sees too
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(grpc_request("self_reference", good()))
    assert "a model cannot be its own fallback" in caught.value.details()
    assert "self_reference" not in server.app.registry.guards and "fine" in server.app.registry.guards


def parsed(**values: str) -> FallbackParameters:
    text = "".join(
        f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}\n"
        for k, v in values.items()
    )
    model_config = text_format.Parse('name: "m"\n' + text, mc.ModelConfig())
    return fallback_parameters(model_config)


def test_fallback_parameters_defaults_and_values() -> None:
    assert parsed() == FallbackParameters()
    assert not parsed().configured
    values = parsed(
        fallback_model="other",
        fallback_model_version="3",
        breaker_consecutive_failures="5",
        breaker_error_rate="0.25",
        breaker_window="40",
        breaker_open_seconds="1.5",
    )
    assert values == FallbackParameters("other", "3", None, BreakerParameters(5, 0.25, 40, 1.5))
    assert values.configured and values.breaker.enabled
    assert parsed(breaker_consecutive_failures="2").breaker == BreakerParameters(consecutive_failures=2)
    assert parsed(fallback_response='{"y": [1, 2]}').response == (("y", [1, 2]),)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"fallback_model": "m"}, "parameters 'fallback_model': a model cannot be its own fallback"),
        ({"fallback_model": "a/b"}, "parameters 'fallback_model': expected a model name, got 'a/b'"),
        (
            {"fallback_model_version": "2"},
            "parameters 'fallback_model_version': set without 'fallback_model'",
        ),
        (
            {"fallback_model": "x", "fallback_model_version": "two"},
            "'fallback_model_version': expected an integer",
        ),
        ({"fallback_model": "x", "fallback_response": '{"y": 1}'}, "set together with 'fallback_model'"),
        ({"fallback_response": "[1, 2]"}, "expected a JSON object of output name -> value"),
        ({"fallback_response": "{}"}, "expected a JSON object of output name -> value"),
        ({"breaker_consecutive_failures": "-1"}, "'breaker_consecutive_failures': expected >= 0, got -1"),
        ({"breaker_consecutive_failures": "many"}, "expected an integer, got 'many'"),
        ({"breaker_error_rate": "1.5"}, "'breaker_error_rate': expected a fraction from 0 to 1, got 1.5"),
        ({"breaker_error_rate": "nan"}, "'breaker_error_rate': expected a finite number, got nan"),
        ({"breaker_error_rate": "0.5", "breaker_window": "0"}, "'breaker_window': expected >= 1, got 0"),
        ({"breaker_consecutive_failures": "1", "breaker_open_seconds": "0"}, "expected > 0, got 0.0"),
        ({"breaker_consecutive_failures": "1", "breaker_open_seconds": "inf"}, "expected a finite number"),
        ({"breaker_open_seconds": "5"}, "'breaker_open_seconds': set, but no breaker trigger is"),
        ({"breaker_window": "5"}, "'breaker_window': set, but no breaker trigger is"),
        (
            {"breaker_consecutive_failures": "1", "breaker_window": "5"},
            "'breaker_window': set, but 'breaker_error_rate' is not",
        ),
    ],
)
def test_malformed_fallback_parameters_are_config_errors_naming_model_and_key(
    values: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=f"^model 'm': .*{re.escape(expected)}"):
        parsed(**values)


def _signature(batched: bool, *outputs: tuple[str, str, tuple[int, ...]]) -> Signature:
    specs = tuple(TensorSpec(n, datatypes.BY_NAME[d], dims, dims) for n, d, dims in outputs)
    return Signature((), specs, 8 if batched else 0)


def test_constant_outputs_take_every_datatype_and_check_values_against_it() -> None:
    signature = _signature(
        False, ("f", "FP16", (2,)), ("i", "INT8", (-1,)), ("b", "BOOL", ()), ("s", "BYTES", (1, 2))
    )
    response = {"f": [0.5, 1], "i": [-128, 127, 0], "b": True, "s": [["x", "é"]]}
    arrays = constant_outputs(FallbackParameters(response=tuple(response.items())), signature, "m")
    assert arrays["f"].dtype == np.float16 and arrays["f"].tolist() == [0.5, 1.0]
    assert arrays["i"].dtype == np.int8 and arrays["i"].shape == (3,)
    assert arrays["b"].dtype == np.bool_ and arrays["b"].shape == () and bool(arrays["b"])
    assert arrays["s"].dtype == object and arrays["s"].tolist() == [["x", "é"]]
    assert not arrays["f"].flags.writeable
    for output, value, message in [
        ("i", [128], "128 is outside INT8's -128..127"),
        ("i", [1.5], "INT8 elements must be JSON integers"),
        ("i", [True], "INT8 elements must be JSON integers"),
        ("b", 1, "BOOL elements must be true or false"),
        ("s", [[1, 2]], "BYTES elements must be JSON strings"),
        ("f", ["1", "2"], "FP16 elements must be JSON numbers"),
        ("f", [[1], 2], "nested lists of unequal lengths"),
        ("f", [1, 2, 3], "shape [3], expected shape [2]"),
    ]:
        wrong = {**response, output: value}
        with pytest.raises(ConfigError, match=re.escape(f"output '{output}': {message}")):
            constant_outputs(FallbackParameters(response=tuple(wrong.items())), signature, "m")
    missing = FallbackParameters(response=(("f", [0, 0]),))
    with pytest.raises(ConfigError, match=r"lacks output\(s\) \['i', 'b', 's'\]"):
        constant_outputs(missing, signature, "m")
    # batched: one row, with or without its batch dimension of 1 (never more rows)
    batched = _signature(True, ("y", "FP32", (2,)))
    for value in ([1, 2], [[1, 2]]):
        (array,) = constant_outputs(FallbackParameters(response=(("y", value),)), batched, "m").values()
        assert array.shape == (2,)
    with pytest.raises(ConfigError, match=re.escape("shape [2, 2], expected one row of shape [2]")):
        constant_outputs(FallbackParameters(response=(("y", [[1, 2], [3, 4]]),)), batched, "m")


# -- the breaker alone, on a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_state_machine() -> None:
    clock = Clock()
    moves: list[BreakerState] = []
    breaker = Breaker("m", BreakerParameters(consecutive_failures=2, open_seconds=5.0), moves.append, clock)
    assert breaker.admit() is Admission.PASS
    breaker.record(Admission.PASS, False)
    breaker.record(Admission.PASS, None)  # a client's fault: neither resets nor counts
    assert breaker.state is BreakerState.CLOSED
    late = breaker.admit()  # admitted while closed, finishes after the breaker opened
    breaker.record(Admission.PASS, False)
    assert breaker.state is BreakerState.OPEN and breaker.opened_because == "2 consecutive failures"
    breaker.record(late, True)  # stale: does not close it
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit() is Admission.REJECT and breaker.retry_in() == 5.0
    clock.now += 5.0
    probe = breaker.admit()
    assert probe is Admission.PROBE and breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit() is Admission.REJECT  # one probe at a time
    breaker.record(probe, None)  # the probe was cancelled: the next request probes
    probe = breaker.admit()
    assert probe is Admission.PROBE
    breaker.record(probe, False)
    assert breaker.state is BreakerState.OPEN and breaker.opened_because == "the half-open probe failed"
    clock.now += 5.0
    probe = breaker.admit()
    breaker.record(probe, True)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(Admission.PASS, False)  # the count started over at the close
    assert breaker.state is BreakerState.CLOSED
    assert [m.value for m in moves] == ["open", "half_open", "open", "half_open", "closed"]


def test_breaker_error_rate_needs_a_full_window() -> None:
    breaker = Breaker("m", BreakerParameters(error_rate=0.5, window=4), clock=Clock())
    for ok in (False, False, False):  # 3 of 3 failed, but the window is not full yet
        breaker.record(Admission.PASS, ok)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(Admission.PASS, True)
    assert breaker.state is BreakerState.OPEN and breaker.opened_because == "3 of the last 4 requests failed"
