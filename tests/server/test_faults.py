"""Faults through the real server on 127.0.0.1 (hardening issue item 13): an ONNX Runtime error fails only its
own batch, a SIGKILLed `--workers` worker is restarted while the other serves, and a SIGTERMed `serve` process
under load answers every request OK or UNAVAILABLE and exits 0.

Nothing here asserts on timing: batches are composed by the batching policy itself (a preferred size equal to
max_batch_size and a 20 s queue delay, so a batch forms when, and only when, four requests are queued), and
every wait is a poll with a generous bound.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hotwire.bench.worker_kill import connections  # the one /proc connection counter
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from hotwire.server.errors import FailureReason
from onnx_models import add_sub, ort_reference, simple_inputs, tiny_model, write_model
from server_harness import ServeProcess

BOUND_S = 60.0  # bound of every polling loop: generous, so a loaded machine never fails a test


def _poll(condition: Callable[[], bool], what: str, bound_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound_s:.0f} s: {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------------------ an ORT error in one batch

WIDTH = 4
PICK = tiny_model(
    [helper.make_node("GatherElements", ["x", "index"], ["y"], axis=1)],
    [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH]),
        helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1]),
    ],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
)
# y[i] = x[i, index[i]]: ONNX Runtime refuses an index outside [-4, 3] at run time, which no validation of
# shapes and datatypes can know (warm-up's zeros pass). A batch forms exactly when four requests are queued.
BATCH = 4
PICK_CONFIG = f"""
max_batch_size: {BATCH}
dynamic_batching {{ preferred_batch_size: [ {BATCH} ] max_queue_delay_microseconds: 20000000 }}
parameters {{ key: "execution" value: {{ string_value: "%s" }} }}
"""
BAD_INDEX = 7


def _pick_feeds(seed: int, index: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    chosen = int(rng.integers(0, WIDTH)) if index is None else index
    return {
        "x": rng.standard_normal((1, WIDTH)).astype(np.float32),
        "index": np.array([[chosen]], np.int64),
    }


def _pick(stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, feeds: dict[str, np.ndarray]) -> object:
    """The output array, or the grpc.RpcError the call ended with."""
    request = pb.ModelInferRequest(model_name="pick")
    for name, array in feeds.items():
        request.inputs.add(name=name, datatype="FP32" if name == "x" else "INT64", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    try:
        response = stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return error
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(
        tuple(response.outputs[0].shape)
    )


def _ort_error(feeds: dict[str, np.ndarray]) -> str:
    """What in-process ONNX Runtime says about these inputs: its own message, without the source location."""
    session = ort.InferenceSession(PICK.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as caught:  # ORT raises its own (pybind) exception types
        session.run(None, feeds)
    # "GatherElements op: Out of range value in index tensor"
    return str(caught.value).rsplit("]", 1)[-1].strip()


@pytest.mark.parametrize("execution", ["thread", "inline"])
def test_an_onnxruntime_error_fails_only_its_own_batch(tmp_path, running_server, stub_for, execution):
    write_model(tmp_path, "pick", PICK, PICK_CONFIG % execution)
    server = running_server(tmp_path)
    stub = stub_for(server)
    ort_message = _ort_error(_pick_feeds(0, BAD_INDEX))
    assert "Out of range value in index tensor" in ort_message

    def batch(groups: list[dict[str, np.ndarray]]) -> list[object]:
        with ThreadPoolExecutor(len(groups)) as pool:
            return list(pool.map(lambda feeds: _pick(stub, feeds), groups))

    def check_ok(feeds: dict[str, np.ndarray], result: object) -> None:
        assert isinstance(result, np.ndarray), result
        np.testing.assert_array_equal(result, ort_reference(PICK, feeds)["y"])

    def check_failed(result: object) -> None:
        assert isinstance(result, grpc.RpcError), result
        assert result.code() == grpc.StatusCode.INTERNAL, result
        assert "model 'pick:1': onnxruntime failed" in result.details()
        assert ort_message in result.details(), result.details()

    # before: one batch of four good requests
    before = [_pick_feeds(seed) for seed in range(1, 5)]
    for feeds, result in zip(before, batch(before)):
        check_ok(feeds, result)
    # one bad request among four: the one batch fails, each of its requests INTERNAL with ORT's message
    mixed = [_pick_feeds(seed, BAD_INDEX if seed == 12 else None) for seed in range(10, 14)]
    for result in batch(mixed):
        check_failed(result)
    # eight at once, one bad: two batches of four; whichever three joined the bad one fail, the other four
    # are right (which four depends on arrival order; that it is exactly four does not)
    concurrent = [_pick_feeds(seed, BAD_INDEX if seed == 23 else None) for seed in range(20, 28)]
    results = batch(concurrent)
    check_failed(results[3])
    failed = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(failed) == BATCH, results
    for result in failed:
        check_failed(result)
    for feeds, result in zip(concurrent, results):
        if not isinstance(result, grpc.RpcError):
            check_ok(feeds, result)
    # after: the server serves as before
    after = [_pick_feeds(seed) for seed in range(30, 34)]
    for feeds, result in zip(after, batch(after)):
        check_ok(feeds, result)

    stats = server.app.registry.route("pick").stats
    # every batch was the preferred four rows: the three that succeeded are the executions counted (a failed
    # batch is not), and each request of the two that failed is a BACKEND failure
    assert {rows: b.compute_infer.count for rows, b in stats.batches.items()} == {BATCH: 3}
    assert stats.execution_count == 3 and stats.inference_count == 3 * BATCH
    assert stats.success.count == 3 * BATCH
    assert stats.fail.count == 2 * BATCH
    assert dict(stats.fail_by_reason) == {FailureReason.BACKEND: 2 * BATCH}


# ------------------------------------------------------------------------------ processes under load

SIMPLE = add_sub()
SIMPLE_CONFIG = "max_batch_size: 8\ndynamic_batching { }"
CLIENTS = 8
# gRPC shares one connection among the channels of a process that have the same target and arguments (its
# global subchannel pool): each client channel here gets its own connection, as separate client processes
# would, so the kernel spreads them over the workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _simple_repository(root: Path) -> Path:
    write_model(root, "simple", SIMPLE, SIMPLE_CONFIG)
    return root


class Load:
    """Closed-loop clients, one gRPC channel (so one connection) each, sending Triton's 'simple' with their
    own inputs. Each waits 0.1 s after an UNAVAILABLE, as a retry policy would; every outcome is counted,
    and an OK with other values than in-process ORT's is a wrong answer."""

    def __init__(self, port: int, clients: int = CLIENTS) -> None:
        self.address = f"127.0.0.1:{port}"
        self.codes: collections.Counter[str] = collections.Counter()
        self.details: collections.Counter[str] = collections.Counter()  # of the failures
        self.ok_by_client = [0] * clients
        self.wrong = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def _client(self, index: int) -> None:
        feeds = simple_inputs(1, seed=100 + index)
        expected = ort_reference(SIMPLE, feeds)
        request = pb.ModelInferRequest(model_name="simple")
        for name, array in feeds.items():
            request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        with grpc.insecure_channel(self.address, OWN_CONNECTION) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 2 * BOUND_S  # bounded: ends long before this unless a test is stuck
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    response = stub.ModelInfer(request, timeout=10)
                except grpc.RpcError as error:
                    with self._lock:
                        self.codes[error.code().name] += 1
                        self.details[f"{error.code().name}: {_shape_of(error.details() or '')}"] += 1
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        time.sleep(0.1)
                    continue
                right = all(
                    np.array_equal(
                        np.frombuffer(response.raw_output_contents[i], np.float32).reshape(1, 16),
                        expected[name],
                    )
                    for i, name in enumerate(("OUTPUT0", "OUTPUT1"))
                )
                with self._lock:
                    self.codes["OK"] += 1
                    self.ok_by_client[index] += 1
                    self.wrong += not right

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self._threads)


def _shape_of(details: str) -> str:
    """A failure's details without what varies from call to call (ports, addresses, timestamps)."""
    return re.sub(r"\d+", "N", details)[:120]


def _worker_pids(log: str) -> list[tuple[int, int]]:
    """(worker index, pid) in the order the supervisor started them."""
    return [(int(i), int(pid)) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log)]


def _serve(serve, root: Path, *extra: str) -> ServeProcess:  # type: ignore[no-untyped-def]
    return serve(
        "--model-repository",
        str(_simple_repository(root)),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "-1",
        "--metrics-port",
        "-1",
        *extra,
    )


def test_a_killed_worker_is_restarted_while_the_other_serves(tmp_path, serve):
    process = _serve(serve, tmp_path, "--workers", "2")
    port = process.wait_listening(timeout=120)
    first = dict(_worker_pids(process.log))
    assert sorted(first) == [0, 1]
    victim, survivor = first[0], first[1]
    with Load(port) as load:
        _poll(lambda: min(load.ok_by_client) >= 20, "every client answered")
        on_victim = connections(victim, port)  # the calls that may be cut: one in flight per connection
        assert on_victim + connections(survivor, port) == CLIENTS
        os.kill(victim, signal.SIGKILL)
        killed_at_ok = load.codes["OK"]
        process.wait_for(f"worker 0 (pid {victim}) exited with signal 9; restarting it", timeout=BOUND_S)
        # the survivor serves meanwhile: everybody's calls go on succeeding
        _poll(lambda: load.codes["OK"] >= killed_at_ok + 200, "answers after the kill")
        _poll(
            lambda: len(re.findall(r"^\[worker 0\].*hotwire listening on ", process.log, re.MULTILINE)) == 2,
            "the restarted worker 0 listening",
        )
        restarted = dict(_worker_pids(process.log))
        replacement = restarted[0]
        assert replacement not in (victim, survivor) and restarted[1] == survivor
        assert len(_worker_pids(process.log)) == 3  # one restart, of the killed worker only

        # the replacement serves: fresh connections until one lands on it (the kernel spreads connections
        # over the listening workers); each one's call must be right
        feeds = simple_inputs(1, seed=7)
        expected = ort_reference(SIMPLE, feeds)["OUTPUT0"]
        request = pb.ModelInferRequest(model_name="simple")
        for name, array in feeds.items():
            request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        channels = []
        try:
            for _ in range(64):  # 2**-64 that none lands on the replacement
                before = connections(replacement, port)
                channel = grpc.insecure_channel(f"127.0.0.1:{port}", OWN_CONNECTION)
                channels.append(channel)
                response = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, timeout=30
                )
                np.testing.assert_array_equal(
                    np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 16), expected
                )
                if connections(replacement, port) > before:
                    break
            else:
                raise AssertionError("no new connection reached the restarted worker")
        finally:
            for channel in channels:
                channel.close()
        _poll(lambda: load.total >= 1000, "a thousand answers in all")
    assert load.wrong == 0, load.codes
    assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.details
    # only calls in flight on the killed worker's connections failed, at most one per connection
    assert load.codes["UNAVAILABLE"] <= on_victim, (on_victim, load.details)
    assert load.codes["UNAVAILABLE"] <= 0.01 * load.total, load.codes
    assert process.stop() == 0
    assert "all workers stopped" in process.log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_under_load_answers_every_request_ok_or_unavailable_and_exits_0(tmp_path, serve, workers):
    """Eight clients that back off 0.1 s after an UNAVAILABLE; SIGTERM to the `serve` process (with
    --workers 2, the supervisor, which passes it on). Every answer is OK with the right values, or
    UNAVAILABLE: the server's own "shutting down" while it drains, or no server to connect to once it is
    gone. Never CANCELLED or INTERNAL, and never a call cut off mid-way (a request accepted, then lost)."""
    process = _serve(serve, tmp_path, "--workers", workers, "--shutdown-grace-s", "10")
    port = process.wait_listening(timeout=120)
    with Load(port) as load:
        _poll(lambda: min(load.ok_by_client) >= 20, "every client answered")
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(BOUND_S) == 0
        stopped_at = load.total
        _poll(lambda: load.total >= stopped_at + CLIENTS, "calls to a server that is gone")
    process.stop()
    assert load.wrong == 0, load.codes
    assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.details
    assert load.codes["UNAVAILABLE"] > 0, load.codes
    cut = {
        detail: count
        for detail, count in load.details.items()
        if "shutting down" not in detail and not _cannot_connect(detail)
    }
    assert not cut, load.details
    assert process.log.count("shutdown complete") == int(workers), process.log


def _cannot_connect(detail: str) -> bool:
    return any(
        text in detail for text in ("failed to connect", "Connection refused", "connections to all backends")
    )
