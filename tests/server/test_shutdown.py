"""What clients see while the server shuts down: in-flight requests finish, new ones get UNAVAILABLE (which
retry policies retry; never CANCELLED), and a stream cut short answers what it read, then ends UNAVAILABLE."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time

import grpc
import numpy as np

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from onnx_models import add_sub, ort_reference, simple_inputs, write_model

MODEL = add_sub()
# one request waits up to a second in the queue for a batch of 8: surely in flight when the shutdown starts
HOLDING_CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 1000000 }
"""


def _request(
    rows: int, seed: int, request_id: str = ""
) -> tuple[pb.ModelInferRequest, dict[str, np.ndarray]]:
    feeds = simple_inputs(rows, seed)
    request = pb.ModelInferRequest(model_name="simple", id=request_id)
    for name, array in feeds.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request, ort_reference(MODEL, feeds)


def _output(response: pb.ModelInferResponse, index: int) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(
        response.outputs[index].shape
    )


def _begin_stop(server) -> asyncio.Future:  # type: ignore[no-untyped-def]
    return asyncio.run_coroutine_threadsafe(server.app.stop(), server.loop)


def _wait_draining(server) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not server.app._service.draining:
        assert time.monotonic() < deadline, "the shutdown did not start"
        time.sleep(0.002)


def test_in_flight_requests_finish_and_new_ones_get_unavailable(tmp_path, running_server):
    write_model(tmp_path, "simple", MODEL, HOLDING_CONFIG)
    server = running_server(tmp_path, shutdown_grace_s=10)
    channel = grpc.insecure_channel(server.address)
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    held, expected = _request(2, seed=1)
    in_flight = stub.ModelInfer.future(held, timeout=30)
    deadline = time.monotonic() + 10
    while server.app.registry.route("simple", "").batcher.queued == 0:  # it waits in the queue
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stopping = _begin_stop(server)
    _wait_draining(server)
    late, _ = _request(1, seed=2)
    try:
        stub.ModelInfer(late, timeout=10)
        raise AssertionError("a request arriving during the shutdown was served")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (error.details() or "")
    response = in_flight.result(timeout=30)  # the held request finished, correctly
    np.testing.assert_array_equal(_output(response, 0), expected["OUTPUT0"])
    stopping.result(timeout=30)
    channel.close()


def test_clients_that_back_off_never_see_cancelled_across_a_shutdown(tmp_path, running_server):
    """Eight clients under load; each waits 0.1 s after an UNAVAILABLE, as a retry policy would. Every answer
    is OK (and right) or UNAVAILABLE: none CANCELLED, which gRPC gives calls that race its own shutdown."""
    write_model(tmp_path, "simple", MODEL, "max_batch_size: 8\ndynamic_batching { }")
    server = running_server(tmp_path, shutdown_grace_s=10)
    request, expected = _request(1, seed=3)
    codes: collections.Counter[str] = collections.Counter()
    wrong: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(5000):  # bounded: ends long before this unless the server is gone
                if stop.is_set():
                    return
                try:
                    response = stub.ModelInfer(request, timeout=10)
                except grpc.RpcError as error:
                    codes[error.code().name] += 1
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        time.sleep(0.1)
                    continue
                codes["OK"] += 1
                if not np.array_equal(_output(response, 0), expected["OUTPUT0"]):
                    wrong.append(response.id)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while codes["OK"] < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    _begin_stop(server).result(timeout=30)
    time.sleep(0.3)  # clients keep calling a server that is gone
    stop.set()
    for thread in threads:
        thread.join(30)
    assert codes["OK"] >= 200 and codes["UNAVAILABLE"] > 0, codes
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert not wrong


def test_a_stream_cut_short_answers_what_it_read_then_ends_unavailable(tmp_path, running_server):
    write_model(tmp_path, "simple", MODEL, "max_batch_size: 8")
    server = running_server(tmp_path, shutdown_grace_s=30)
    channel = grpc.insecure_channel(server.address)
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    outbox: queue.Queue = queue.Queue()
    stream = stub.ModelStreamInfer(iter(outbox.get, None), timeout=60)
    sent = [_request(1, seed=i, request_id=f"m{i}") for i in range(3)]
    for request, _ in sent:
        outbox.put(request)
    answers = [next(stream) for _ in sent]
    assert [a.infer_response.id for a in answers] == ["m0", "m1", "m2"]
    for answer, (_, expected) in zip(answers, sent):
        np.testing.assert_array_equal(_output(answer.infer_response, 0), expected["OUTPUT0"])
    started = time.monotonic()
    stopping = _begin_stop(server)  # the client keeps the stream open
    try:
        next(stream)
        raise AssertionError("the stream went on during the shutdown")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "every message read was answered" in (error.details() or "")
    stopping.result(timeout=30)
    assert time.monotonic() - started < 10  # not the 30 s grace
    outbox.put(None)
    channel.close()


def test_a_stream_opened_during_the_shutdown_is_unavailable(tmp_path, running_server):
    write_model(tmp_path, "simple", MODEL, HOLDING_CONFIG)
    server = running_server(tmp_path, shutdown_grace_s=10)
    channel = grpc.insecure_channel(server.address)
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    held, _ = _request(1, seed=5)
    in_flight = stub.ModelInfer.future(held, timeout=30)  # keeps the server draining for up to a second
    deadline = time.monotonic() + 10
    while server.app.registry.route("simple", "").batcher.queued == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stopping = _begin_stop(server)
    _wait_draining(server)
    request, _ = _request(1, seed=6, request_id="late")
    try:
        list(stub.ModelStreamInfer(iter([request]), timeout=10))
        raise AssertionError("a stream opened during the shutdown was served")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (error.details() or "")
    in_flight.result(timeout=30)
    stopping.result(timeout=30)
    channel.close()
