"""Faults: an ONNX Runtime error in one batch fails that batch's requests only; the server serves on."""

from __future__ import annotations

import time

import grpc
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from hotwire.proto import grpc_service_pb2 as pb
from onnx_models import tiny_model, write_model

TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)
# four requests make a batch; the delay is long enough that they surely gather
CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 2000000 }
"""


def lookup_model():
    """y[b] = TABLE[index[b]]: Gather, which ONNX Runtime fails at run time for an index outside 0..9 — a
    value no request check can know is wrong."""
    return tiny_model(
        [helper.make_node("Gather", ["table", "index"], ["y"], axis=0)],
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(TABLE, "table")],
    )


def _request(index: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lookup", id=str(index))
    request.inputs.add(name="index", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([index], np.int64).tobytes())
    return request


def _send_batch(stub, indices: list[int]) -> list:  # type: ignore[no-untyped-def]
    futures = [stub.ModelInfer.future(_request(i), timeout=30) for i in indices]
    answers = []
    for future in futures:
        try:
            answers.append(future.result())
        except grpc.RpcError as error:
            answers.append(error)
    return answers


def test_an_onnxruntime_error_fails_only_its_batch(tmp_path, running_server, stub_for):
    write_model(tmp_path, "lookup", lookup_model(), CONFIG)
    server = running_server(tmp_path)
    stub = stub_for(server)
    stats = server.app.registry.route("lookup", "").stats

    def run(indices: list[int], succeeds: bool = True) -> list:  # type: ignore[no-untyped-def]
        executions = stats.execution_count
        answers = _send_batch(stub, indices)
        # a successful batch is one execution; a failed one counts none (as Triton's execution_count)
        assert stats.execution_count == executions + succeeds, "the four requests did not run as one batch"
        return answers

    good = run([1, 2, 3, 4])
    for index, answer in zip([1, 2, 3, 4], good):
        np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32), TABLE[index])

    # one index out of range: ORT fails the batch, so all four fail (5, 6 and 7 alone would not: they
    # shared the batch), with ORT's message
    failed = run([5, 6, 99, 7], succeeds=False)
    for answer in failed:
        assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.INTERNAL
        assert "onnxruntime failed" in answer.details() and "idx=99" in answer.details()

    deadline = time.monotonic() + 10
    while server.app.registry.route("lookup", "").batcher.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    after = run([8, 9, 0, 1])  # the next batch, and the server, are fine
    for index, answer in zip([8, 9, 0, 1], after):
        np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32), TABLE[index])
    assert (
        stats.execution_count == 2 and stats.inference_count == 8
    )  # only the good batches count as inferences
    assert stats.fail.count == 4
