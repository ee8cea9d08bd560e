"""Dynamic batching through the real server: concurrent clients each get exactly their own rows
(equal to unbatched ONNX Runtime), preferred sizes and the delay bound hold, ragged padding never reaches a
response, and the reserved `priority` / `timeout` parameters are honoured."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hotwire.proto import grpc_service_pb2 as pb
from onnx_models import matmul_chain, write_model


def scale_model(width: int | None = 8) -> onnx.ModelProto:
    """y = x * 3 + row-independent bias, shape [batch, width] (width None: a dynamic second axis)."""
    dim = width if width is not None else "length"
    bias = numpy_helper.from_array(np.array(0.5, np.float32), "bias")
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    nodes = [helper.make_node("Mul", ["x", "three"], ["t"]), helper.make_node("Add", ["t", "bias"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        [bias, three],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def infer(stub, model: str, x: np.ndarray, deadline: float = 30, **params: int) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    for key, value in params.items():
        if key == "priority":
            request.parameters[key].uint64_param = value
        else:
            request.parameters[key].int64_param = value
    response = stub.ModelInfer(request, timeout=deadline)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(
        tuple(response.outputs[0].shape)
    )


def test_concurrent_clients_each_get_exactly_their_own_rows(tmp_path, running_server, stub_for):
    model = matmul_chain(layers=30, width=512)  # ~1 ms a row: 16 clients surely queue behind each other
    write_model(tmp_path, "chain", model, "max_batch_size: 16\ndynamic_batching { }")
    server = running_server(tmp_path)
    stub = stub_for(server)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 4, 512)).astype(np.float32) for i in range(96)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: infer(stub, "chain", x), inputs))
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    stats = server.app.registry.route("chain").stats
    assert stats.inference_count == sum(len(x) for x in inputs)
    assert stats.success.count == len(inputs)
    assert stats.execution_count < len(inputs), "16 concurrent clients never shared a batch"
    assert max(stats.batches) <= 16


def test_a_lone_request_waits_at_most_the_queue_delay(tmp_path, running_server, stub_for):
    write_model(
        tmp_path,
        "delayed",
        scale_model(),
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 300000 }",
    )
    write_model(tmp_path, "eager", scale_model(), "max_batch_size: 8\ndynamic_batching { }")
    stub = stub_for(running_server(tmp_path))
    x = np.ones((1, 8), np.float32)
    infer(stub, "delayed", x)  # first call pays connection set-up
    started = time.monotonic()
    np.testing.assert_array_equal(infer(stub, "delayed", x), x * 3 + 0.5)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.3 + 1.0, elapsed  # held for company for the delay, then sent alone
    started = time.monotonic()
    infer(stub, "eager", x)
    assert time.monotonic() - started < 0.3  # delay 0: work-conserving, never held


def test_a_preferred_batch_size_goes_at_once_without_waiting_for_the_delay(
    tmp_path, running_server, stub_for
):
    write_model(
        tmp_path,
        "pref",
        scale_model(),
        "max_batch_size: 16\ndynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: "
        "20000000 }",
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda v: infer(stub, "pref", np.full((1, 8), v, np.float32)), range(4)))
    assert time.monotonic() - started < 10  # far below the 20 s delay: the batch of 4 was preferred
    for value, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 8), value * 3 + 0.5, np.float32))
    assert dict(server.app.registry.route("pref").stats.batches).keys() == {4}


def test_ragged_inputs_batch_together_and_padding_never_reaches_a_response(
    tmp_path, running_server, stub_for
):
    config = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
dynamic_batching { max_queue_delay_microseconds: 200000 preferred_batch_size: [ 3 ] }
"""
    write_model(tmp_path, "ragged", scale_model(width=None), config)
    server = running_server(tmp_path)
    stub = stub_for(server)
    lengths = [2, 5, 3]
    inputs = [np.arange(n, dtype=np.float32).reshape(1, n) + 1 for n in lengths]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda x: infer(stub, "ragged", x), inputs))
    for x, result in zip(inputs, results):
        assert result.shape == x.shape
        np.testing.assert_array_equal(result, x * 3 + 0.5)
    # one padded batch of all three
    assert dict(server.app.registry.route("ragged").stats.batches).keys() == {3}


def test_without_ragged_batching_other_lengths_run_in_separate_batches(tmp_path, running_server, stub_for):
    write_model(
        tmp_path,
        "strict",
        scale_model(width=None),
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100000 }",
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    inputs = [np.ones((1, n), np.float32) * n for n in (2, 5, 2, 5)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: infer(stub, "strict", x), inputs))
    for x, result in zip(inputs, results):
        np.testing.assert_array_equal(result, x * 3 + 0.5)
    stats = server.app.registry.route("strict").stats
    assert stats.inference_count == 4 and stats.execution_count >= 2


def test_timeout_parameter_and_client_deadline_expire_queued_requests(tmp_path, running_server, stub_for):
    config = """
max_batch_size: 64
dynamic_batching { default_queue_policy { allow_timeout_override: true } }
"""
    write_model(tmp_path, "slow", matmul_chain(layers=40, width=512), config)  # ~0.1 s per batch of 64
    server = running_server(tmp_path)
    stub = stub_for(server)
    big = np.ones((64, 512), np.float32)
    with ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(infer, stub, "slow", big) for _ in range(8)]  # keep the one instance busy a while
        batcher = server.app.registry.route("slow").batcher
        for _ in range(500):  # the probes must arrive behind queued work
            if batcher.queued >= 2:
                break
            time.sleep(0.01)
        assert batcher.queued >= 2
        with pytest.raises(grpc.RpcError) as caught:
            infer(stub, "slow", np.ones((1, 512), np.float32), timeout=1000)  # µs
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            # the client gives up: slot freed
            infer(stub, "slow", np.ones((1, 512), np.float32), deadline=0.01)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for future in busy:
            future.result(timeout=60)
    stats = server.app.registry.route("slow").stats
    assert stats.inference_count == 8 * 64  # neither expired request was computed


def test_priority_parameter_out_of_range_means_the_default_level_as_in_triton(
    tmp_path, running_server, stub_for
):
    write_model(
        tmp_path,
        "prio",
        scale_model(),
        "max_batch_size: 8\ndynamic_batching { priority_levels: 2 default_priority_level: 2 }",
    )
    stub = stub_for(running_server(tmp_path))
    x = np.ones((1, 8), np.float32)
    for priority in (1, 2, 3, 99):
        np.testing.assert_array_equal(infer(stub, "prio", x, priority=priority), x * 3 + 0.5)


def test_every_instance_of_a_model_takes_batches(tmp_path, running_server, stub_for):
    write_model(
        tmp_path,
        "two",
        matmul_chain(layers=10, width=128),
        "max_batch_size: 8\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        'parameters { key: "execution" value: { string_value: "thread" } }',
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    version = server.app.registry.route("two")
    assert len(version.instances) == 2 and version.instances[0].session is not version.instances[1].session
    used: set[str] = set()
    original = [instance.run_sync for instance in version.instances]
    for instance, run in zip(version.instances, original):

        def recording(feeds, names, instance=instance, run=run):
            used.add(instance.name)
            return run(feeds, names)

        instance.run_sync = recording  # type: ignore[method-assign]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: infer(stub, "two", np.ones((8, 128), np.float32)), range(32)))
    assert len(used) == 2


def test_a_tiny_model_runs_inline_with_one_instance_and_on_threads_with_several(tmp_path, running_server):
    write_model(tmp_path, "one", scale_model(), "max_batch_size: 8")
    write_model(
        tmp_path, "two", scale_model(), "max_batch_size: 8\ninstance_group [ { count: 2 kind: KIND_CPU } ]"
    )
    registry = running_server(tmp_path).app.registry
    assert [instance.inline for instance in registry.route("one").instances] == [True]
    # count: 2 asks for concurrency, which two instances taking turns on the loop thread could not give
    assert [instance.inline for instance in registry.route("two").instances] == [False, False]
