"""A bounded soak of a real server (hardening issue item 14).

A `hotwire serve` subprocess on 127.0.0.1 (explicit model control) serves `simple` (Triton's add_sub) and
`swap` (y = x + version) while, for SOAK_S seconds and at most MAX_REQUESTS_PER_CLIENT requests per client,
clients run at once:

- gRPC unary clients: valid requests and invalid ones (each with the status it must get);
- gRPC future clients: batches of calls, some cancelled by the client before their answer;
- HTTP clients: JSON and binary-extension requests on a keep-alive connection, invalid ones, and connections
  dropped mid-request (a body cut short, or a request whose answer is never read);
- ModelStreamInfer clients: streams of valid and invalid messages, some streams cancelled half-way;
- and the test itself swapping `swap` to a new version every SWAP_EVERY_S (RepositoryModelLoad with `config`
  and `file:` parameters), rolling back to the standby version every third swap.

Every valid answer is compared with in-process ONNX Runtime (onnx_models.ort_reference) for the version that
answered it. Asserted: no valid request lost or wrong (every one answered OK with the right values, but for
those the test cancelled), every invalid one got its status, the server stays alive and logs no traceback, and
its RSS after the soak is within SOAK_RSS_BOUND of its RSS after a warm-up. The figures are printed (`pytest
-s`) as a short report.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc as pb_grpc
from onnx_models import SIMPLE_CONFIG, add_sub, ort_reference, tiny_model, write_model
from server_harness import ServeProcess

SOAK_S = 15.0
WARM_UP_S = 2.0
SWAP_EVERY_S = 1.2
MAX_REQUESTS_PER_CLIENT = 20_000
SOAK_RSS_BOUND = 32 * 1024 * 1024
CALL_TIMEOUT_S = 30.0
WIDTH = 4  # swap's row width
MAX_VERSION = 40  # versions the swaps may reach (their reference models are built up front)
SWAP_CONFIG = json.dumps(
    {
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 500},
        "parameters": {"standby_versions": {"string_value": "1"}},
    }
)

ADD_SUB = add_sub()


def offset_model(version: int) -> onnx.ModelProto:
    """y = x + version: every answer names the version that computed it."""
    offset = numpy_helper.from_array(np.array(float(version), np.float32), "offset")
    shape: list[str | int] = ["batch", WIDTH]
    return tiny_model(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [offset],
    )


OFFSET_MODELS = {v: offset_model(v) for v in range(1, MAX_VERSION + 1)}


# ------------------------------------------------------------------------------------------------------------
# requests and what their answers must be


@dataclass
class Case:
    """One request: its model and inputs, and either the status it must get (invalid) or None (valid: OK, with
    the reference outputs of the version that answers)."""

    model: str
    feeds: dict[str, np.ndarray]
    datatype: str = "FP32"
    expect: grpc.StatusCode | None = None
    http_expect: int | None = None

    @property
    def valid(self) -> bool:
        return self.expect is None

    def grpc(self) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=self.model)
        for name, array in self.feeds.items():
            request.inputs.add(name=name, datatype=self.datatype, shape=array.shape)
            request.raw_input_contents.append(array.tobytes())
        return request

    def reference(self, version: str) -> dict[str, np.ndarray] | None:
        if self.model == "simple":
            return ort_reference(ADD_SUB, self.feeds)
        model = OFFSET_MODELS.get(int(version)) if version.isdigit() else None
        return ort_reference(model, self.feeds) if model is not None else None


def make_case(rng: np.random.Generator, invalid_share: float = 0.15) -> Case:
    rows = int(rng.integers(1, 5))
    if rng.random() < 0.5:
        feeds = {n: rng.standard_normal((rows, 16)).astype(np.float32) for n in ("INPUT0", "INPUT1")}
        case = Case("simple", feeds)
    else:
        case = Case("swap", {"x": rng.standard_normal((rows, WIDTH)).astype(np.float32)})
    if rng.random() >= invalid_share:
        return case
    how = int(rng.integers(0, 4))
    if how == 0:  # a row width the model does not take
        return Case(
            "swap", {"x": np.zeros((rows, WIDTH + 1), np.float32)}, expect=grpc.StatusCode.INVALID_ARGUMENT
        )
    if how == 1:
        return Case("nope", case.feeds, expect=grpc.StatusCode.NOT_FOUND, http_expect=404)
    if how == 2:  # a datatype the model does not take
        feeds = {n: a.astype(np.float64) for n, a in case.feeds.items()}
        return Case(case.model, feeds, "FP64", expect=grpc.StatusCode.INVALID_ARGUMENT)
    return Case(
        "simple",
        {"INPUT0": case.feeds.get("INPUT0", np.zeros((rows, 16), np.float32))},
        expect=grpc.StatusCode.INVALID_ARGUMENT,
    )  # an input missing


def http_body(case: Case, binary: bool) -> tuple[bytes, dict[str, str]]:
    inputs: list[dict[str, Any]] = []
    payload = []
    for name, array in case.feeds.items():
        entry: dict[str, Any] = {"name": name, "datatype": case.datatype, "shape": list(array.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            payload.append(array.tobytes())
        else:
            entry["data"] = array.ravel().tolist()
        inputs.append(entry)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary}}).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(payload), {"Inference-Header-Content-Length": str(len(header))}


def grpc_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        o.name: np.frombuffer(raw, np.float32).reshape(o.shape)
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }


def http_outputs(content: bytes, header_length: str | None) -> tuple[str, dict[str, np.ndarray]]:
    end = int(header_length) if header_length is not None else len(content)
    header = json.loads(content[:end])
    outputs, offset = {}, end
    for o in header["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs[o["name"]] = np.array(o["data"], np.float32).reshape(o["shape"])
        else:
            outputs[o["name"]] = np.frombuffer(content[offset : offset + size], np.float32).reshape(
                o["shape"]
            )
            offset += size
    return header["model_version"], outputs


# ------------------------------------------------------------------------------------------------------------
# the clients


class Soak:
    def __init__(self, process: ServeProcess) -> None:
        self.address = f"127.0.0.1:{process.port}"
        assert process.http_port is not None
        self.http_port = process.http_port
        self.lock = threading.Lock()
        # requests by kind: valid and invalid (answered), cancelled (by the client), dropped (HTTP)
        self.sent: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()  # by status
        self.by_version: Counter[str] = Counter()
        self.problems: list[str] = []
        self.valid_ok = 0
        self.valid_cancelled = 0
        self.stop_at = 0.0

    def running(self, count: int) -> bool:
        return count < MAX_REQUESTS_PER_CLIENT and time.monotonic() < self.stop_at

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(text)

    def count(self, kind: str, status: str) -> None:
        with self.lock:
            self.sent[kind] += 1
            self.answers[status] += 1

    def check(self, case: Case, version: str, outputs: dict[str, np.ndarray], where: str) -> None:
        """A valid request's answer against ONNX Runtime in this process, for the version that answered."""
        reference = case.reference(version)
        if reference is None:
            self.problem(f"{where}: answered by unknown version {version!r}")
            return
        if sorted(outputs) != sorted(reference):
            self.problem(f"{where}: outputs {sorted(outputs)}, expected {sorted(reference)}")
            return
        for name, want in reference.items():
            if outputs[name].shape != want.shape or not np.allclose(
                outputs[name], want, rtol=1e-6, atol=1e-6
            ):
                self.problem(f"{where}: {case.model} version {version} output {name} differs from ORT's")
                return
        with self.lock:
            self.valid_ok += 1
            self.by_version[f"{case.model}:{version}"] += 1

    def grpc_answer(
        self, case: Case, where: str, response: Any = None, error: grpc.RpcError | None = None
    ) -> None:
        kind = "valid" if case.valid else "invalid"
        if error is not None:
            code = error.code()
            self.count(kind, code.name)
            if code != case.expect:
                self.problem(
                    f"{where}: {case.model}: {code.name} {error.details()!r}, expected {case.expect}"
                )
            return
        self.count(kind, "OK")
        if not case.valid:
            self.problem(f"{where}: an invalid {case.model} request was answered OK (expected {case.expect})")
            return
        self.check(case, response.model_version, grpc_outputs(response), where)

    def unary_client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            n = 0
            while self.running(n):
                n += 1
                case = make_case(rng)
                try:
                    response = stub.ModelInfer(case.grpc(), timeout=CALL_TIMEOUT_S)
                except grpc.RpcError as exc:
                    self.grpc_answer(case, "unary", error=exc)
                else:
                    self.grpc_answer(case, "unary", response)

    def future_client(self, seed: int) -> None:
        """Calls in flight eight at a time; about a quarter cancelled by this client before their answer."""
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            n = 0
            while self.running(n):
                batch = [make_case(rng, invalid_share=0.1) for _ in range(8)]
                n += len(batch)
                calls = [stub.ModelInfer.future(case.grpc(), timeout=CALL_TIMEOUT_S) for case in batch]
                cancelled = set()
                for i, call in enumerate(calls):
                    if rng.random() < 0.25:
                        if rng.random() < 0.5:
                            time.sleep(float(rng.uniform(0, 0.002)))
                        if call.cancel():  # False: already answered, and then the answer is checked
                            cancelled.add(i)
                for i, (case, call) in enumerate(zip(batch, calls)):
                    if i in cancelled:
                        self.count("cancelled", "CANCELLED (by the client)")
                        if case.valid:
                            with self.lock:
                                self.valid_cancelled += 1
                        continue
                    try:
                        response = call.result()
                    except grpc.RpcError as exc:
                        self.grpc_answer(case, "future", error=exc)
                    else:
                        self.grpc_answer(case, "future", response)

    def stream_client(self, seed: int) -> None:
        """Streams of 4..12 messages, valid and invalid (errors in-band); a quarter cancelled half-way."""
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            n = 0
            while self.running(n):
                cases = [make_case(rng) for _ in range(int(rng.integers(4, 13)))]
                n += len(cases)
                cancel_after = int(rng.integers(1, len(cases))) if rng.random() < 0.25 else None
                call = stub.ModelStreamInfer(iter([c.grpc() for c in cases]), timeout=CALL_TIMEOUT_S)
                answered = 0
                try:
                    for response in call:
                        case = cases[answered]
                        answered += 1
                        kind = "valid" if case.valid else "invalid"
                        if response.error_message:
                            self.count(kind, "stream error")
                            if case.valid:
                                self.problem(
                                    f"stream: a valid {case.model} message failed: {response.error_message}"
                                )
                        else:
                            self.count(kind, "stream OK")
                            if not case.valid:
                                self.problem(f"stream: an invalid {case.model} message was answered OK")
                            else:
                                answer = response.infer_response
                                self.check(case, answer.model_version, grpc_outputs(answer), "stream")
                        if answered == cancel_after:
                            call.cancel()
                            break
                except grpc.RpcError as exc:
                    if not (cancel_after is not None and exc.code() == grpc.StatusCode.CANCELLED):
                        self.problem(f"stream ended with {exc.code().name}: {exc.details()}")
                if cancel_after is None and answered != len(cases):
                    self.problem(f"stream: {answered} answers for {len(cases)} messages")
                for case in cases[answered:]:  # never answered: the client cancelled the stream
                    self.count("cancelled", "CANCELLED (stream, by the client)")
                    if case.valid:
                        with self.lock:
                            self.valid_cancelled += 1

    def http_client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=CALL_TIMEOUT_S)
        n = 0
        try:
            while self.running(n):
                n += 1
                if rng.random() < 0.05:
                    self.drop_mid_request(rng)
                    continue
                case = make_case(rng)
                body, headers = http_body(case, bool(rng.random() < 0.5))
                path = f"/v2/models/{case.model}/infer"
                try:
                    connection.request("POST", path, body=body, headers=headers)
                    answer = connection.getresponse()
                    content = answer.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.problem(f"http: {case.model}: {type(exc).__name__}: {exc}")
                    connection.close()
                    continue
                kind = "valid" if case.valid else "invalid"
                self.count(kind, f"HTTP {answer.status}")
                if not case.valid:
                    if answer.status != (case.http_expect or 400):
                        self.problem(
                            f"http: invalid {case.model}: {answer.status}, expected {case.http_expect or 400}"
                        )
                    continue
                if answer.status != 200:
                    self.problem(f"http: a valid {case.model} request got {answer.status}: {content[:300]!r}")
                    continue
                version, outputs = http_outputs(content, answer.getheader("Inference-Header-Content-Length"))
                self.check(case, version, outputs, "http")
        finally:
            connection.close()

    def drop_mid_request(self, rng: np.random.Generator) -> None:
        """A client that goes away: half its body sent, or the whole request and no reading of the answer."""
        body, _ = http_body(make_case(rng, invalid_share=0.0), False)
        cut = bool(rng.random() < 0.5)
        head = (
            f"POST /v2/models/simple/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=CALL_TIMEOUT_S) as sock:
            sock.sendall(head + (body[: len(body) // 2] if cut else body))
        self.count(
            "dropped", "dropped by the client (HTTP, mid-body)" if cut else "dropped by the client (HTTP)"
        )


# ------------------------------------------------------------------------------------------------------------
# the soak


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def swap_to(stub: pb_grpc.GRPCInferenceServiceStub, version: int) -> None:
    request = pb.RepositoryModelLoadRequest(model_name="swap")
    request.parameters["config"].string_param = SWAP_CONFIG
    request.parameters[f"file:{version}/model.onnx"].bytes_param = OFFSET_MODELS[version].SerializeToString()
    stub.RepositoryModelLoad(request, timeout=120)


def roll_back(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Back to the standby version: a flip, nothing loaded."""
    request = pb.RepositoryModelLoadRequest(model_name="swap")
    request.parameters["hotwire.rollback"].string_param = ""
    _, call = stub.RepositoryModelLoad.with_call(request, timeout=120)
    assert dict(call.trailing_metadata())["hotwire-action"] == "rollback:standby"


def run_clients(soak: Soak, seconds: float, seed: int, swap: Callable[[], None] | None) -> float:
    soak.stop_at = time.monotonic() + seconds
    clients: list[Callable[[int], None]] = [
        soak.unary_client,
        soak.unary_client,
        soak.future_client,
        soak.stream_client,
        soak.http_client,
        soak.http_client,
    ]
    threads = [
        threading.Thread(target=client, args=(seed + i,), name=f"soak-{i}", daemon=True)
        for i, client in enumerate(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while swap is not None and time.monotonic() + SWAP_EVERY_S < soak.stop_at:
        time.sleep(SWAP_EVERY_S)
        swap()
    for thread in threads:
        thread.join(seconds + 120)
        assert not thread.is_alive(), f"{thread.name} is stuck"
    return time.monotonic() - started


def test_soak_loses_no_valid_request_through_swaps_cancellations_and_drops(tmp_path, serve):
    write_model(tmp_path, "simple", ADD_SUB, SIMPLE_CONFIG)
    write_model(tmp_path, "swap", OFFSET_MODELS[1], "max_batch_size: 8\ndynamic_batching { }\n")
    for model in OFFSET_MODELS.values():  # every reference session built before the clients share them
        ort_reference(model, {"x": np.zeros((1, WIDTH), np.float32)})
    ort_reference(ADD_SUB, {n: np.zeros((1, 16), np.float32) for n in ("INPUT0", "INPUT1")})
    process = serve(
        *("--model-repository", str(tmp_path), "--host", "127.0.0.1", "--grpc-port", "0"),
        *("--metrics-port", "-1", "--model-control-mode", "explicit"),
        *("--load-model", "simple", "--load-model", "swap"),
    )
    process.wait_listening()
    channel = grpc.insecure_channel(f"127.0.0.1:{process.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    swaps: Counter[str] = Counter()

    def swap() -> None:
        """Two uploads of the next version, then a rollback to the standby one, and so on."""
        swaps["steps"] += 1
        if swaps["steps"] % 3 == 0:
            roll_back(stub)
            swaps["rollbacks"] += 1
        else:
            swaps["uploads"] += 1
            swap_to(stub, swaps["uploads"] + 1)

    try:
        swap_to(stub, 1)  # the same load path as every swap, once, before the RSS baseline
        warm_up = Soak(process)
        run_clients(warm_up, WARM_UP_S, 1000, None)
        time.sleep(0.5)
        rss_before = rss_of(process.proc.pid)
        soak = Soak(process)
        elapsed = run_clients(soak, SOAK_S, 2000, swap)
        time.sleep(0.5)
        rss_after = rss_of(process.proc.pid)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
        final = stub.ModelInfer(Case("swap", {"x": np.zeros((1, WIDTH), np.float32)}).grpc(), timeout=30)
    finally:
        channel.close()

    requests = sum(soak.sent.values())
    valid = soak.sent["valid"] + soak.valid_cancelled
    lines = [
        f"soak: {elapsed:.1f} s, {requests} requests ({requests / elapsed:.0f}/s) from 6 clients; "
        f"{swaps['uploads']} version uploads and {swaps['rollbacks']} rollbacks of 'swap' (now version "
        f"{final.model_version})",
        "  requests by kind: " + ", ".join(f"{kind} {count}" for kind, count in sorted(soak.sent.items())),
        "  answers: " + ", ".join(f"{status} {count}" for status, count in sorted(soak.answers.items())),
        f"  valid: {valid} sent, {soak.valid_ok} answered OK and right, {soak.valid_cancelled} cancelled by "
        f"the client; problems: {len(soak.problems)}",
        "  answered by: " + ", ".join(f"{key} {count}" for key, count in sorted(soak.by_version.items())),
        f"  server RSS: {rss_before / 2**20:.1f} MiB after warm-up, {rss_after / 2**20:.1f} MiB after the "
        f"soak ({(rss_after - rss_before) / 2**20:+.1f} MiB; bound {SOAK_RSS_BOUND / 2**20:.0f} MiB)",
    ]
    print("\n" + "\n".join(lines))
    assert warm_up.problems == [], "\n".join(warm_up.problems)
    assert soak.problems == [], "\n".join(soak.problems)
    assert soak.valid_ok + soak.valid_cancelled == valid  # every valid request answered right or cancelled
    assert soak.valid_ok > 1000 and soak.sent["invalid"] > 100 and soak.sent["cancelled"] > 10
    assert soak.sent["dropped"] > 5 and swaps["uploads"] >= 5 and swaps["rollbacks"] >= 2
    assert len({key for key in soak.by_version if key.startswith("swap:")}) >= 5
    assert "Traceback" not in process.log and "unexpected error" not in process.log, process.log[-5000:]
    assert rss_after - rss_before < SOAK_RSS_BOUND, (rss_before, rss_after)
