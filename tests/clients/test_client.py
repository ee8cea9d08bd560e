"""hotwire.clients.Client and AsyncClient through a real server on 127.0.0.1: every datatype equal to
in-process onnxruntime, views over the received bytes, errors by family, multiplexed calls from many threads,
in-band stream errors, deadlines, the protocol's other calls, and imports that stay off the server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hotwire.clients import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    StreamRequest,
)
from onnx_models import ONNX_TYPES, add_sub, identity_all_types, matmul_chain, ort_reference, write_model
from server_harness import ServerThread

ALL_TYPES = identity_all_types()
SIMPLE = add_sub(offset=1.0)
SLOW = matmul_chain(layers=40, width=512)


def sample(datatype: str, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        return np.array([[f"w{seed}-{r}-{c}".encode() for c in range(3)] for r in range(rows)], dtype=object)
    if datatype == "BOOL":
        return rng.random((rows, 3)) < 0.5
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.standard_normal((rows, 3)).astype(dtype)
    return rng.integers(0, 100, (rows, 3)).astype(
        datatype.lower().replace("uint", "uint").replace("int", "int")
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("repo")
    write_model(root, "types", ALL_TYPES)
    write_model(root, "simple", SIMPLE)
    write_model(root, "slow", SLOW)
    server = ServerThread(root).start()
    yield server
    server.stop()


@pytest.fixture(params=[True, False], ids=["multiplexed", "unary"])
def client(request: pytest.FixtureRequest, server: ServerThread) -> Iterator[Client]:
    with Client(server.address, multiplex=request.param) as client:
        yield client


def test_every_datatype_round_trips_equal_to_onnxruntime(client):
    feeds = {f"in_{d}": sample(d, 2, i) for i, d in enumerate(ONNX_TYPES)}
    feeds["in_BYTES"] = np.array([["a", "bé", ""], ["x", "y", "z"]], dtype=object)  # str elements go as UTF-8
    result = client.infer("types", feeds)
    expected = ort_reference(
        ALL_TYPES, {**feeds, "in_BYTES": np.vectorize(str.encode, otypes=[object])(feeds["in_BYTES"])}
    )
    for datatype in ONNX_TYPES:
        name = f"out_{datatype}"
        assert result.datatypes[name] == datatype
        assert result[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(result[name], expected[name])
    numeric = result["out_FP32"]
    assert not numeric.flags.owndata and not numeric.flags.writeable, (
        "outputs are views of the received bytes"
    )


def test_outputs_version_id_and_parameters(client):
    x = {n: np.ones((1, 16), np.float32) for n in ("INPUT0", "INPUT1")}
    result = client.infer("simple", x, outputs=["OUTPUT1"], version="1", request_id="my-id")
    assert list(result) == ["OUTPUT1"]
    assert (result.model_name, result.model_version, result.id) == ("simple", "1", "my-id")
    np.testing.assert_array_equal(result["OUTPUT1"], np.zeros((1, 16), np.float32))


def test_errors_come_by_family_with_the_servers_message(client):
    x = {n: np.ones((1, 16), np.float32) for n in ("INPUT0", "INPUT1")}
    with pytest.raises(NotFound, match="nosuch"):
        client.infer("nosuch", x)
    with pytest.raises(InvalidInput, match="INPUT0"):
        client.infer("simple", {"INPUT0": np.ones((1, 3), np.float32), "INPUT1": x["INPUT1"]})
    with pytest.raises(InvalidInput, match="INPUT1"):
        client.infer("simple", {"INPUT0": x["INPUT0"], "INPUT1": np.ones((1, 16), np.int32)})
    assert client.infer("simple", x)["OUTPUT0"][0, 0] == 3.0  # and the client goes on


def test_concurrent_calls_from_16_threads_each_get_their_own_answer(client):
    def call(i: int) -> None:
        x = np.full((1, 16), float(i), np.float32)
        inputs = {"INPUT0": x, "INPUT1": x if i % 7 else np.ones((1, 2), np.float32)}
        if i % 7 == 0:  # a bad request among good ones fails only itself
            with pytest.raises(InvalidInput):
                client.infer("simple", inputs)
            return
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result["OUTPUT0"], 2 * x + 1)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(400)))


def test_a_deadline_passes_as_deadline_exceeded_and_the_client_goes_on(client):
    x = np.ones((32, 512), np.float32)
    with pytest.raises(DeadlineExceeded):
        client.infer("slow", {"x": x}, timeout=0.001)
    np.testing.assert_allclose(
        client.infer("slow", {"x": x[:1]})["y"], ort_reference(SLOW, {"x": x[:1]})["y"], rtol=1e-5
    )


def test_stream_answers_each_request_and_an_error_raises_on_its_own_item(server):
    good = {n: np.ones((1, 16), np.float32) for n in ("INPUT0", "INPUT1")}
    requests = [
        StreamRequest("simple", good if i % 3 else {"INPUT0": good["INPUT0"]}, request_id=f"r{i}")
        for i in range(9)
    ]
    with Client(server.address) as client:
        items = list(client.stream(iter(requests)))
    assert sorted(item.request.request_id for item in items) == sorted(r.request_id for r in requests)
    for item in items:
        if int(item.request.request_id[1:]) % 3:
            np.testing.assert_array_equal(item.result()["OUTPUT0"], np.full((1, 16), 3.0, np.float32))
        else:
            with pytest.raises(InvalidInput, match="INPUT1"):
                item.result()


def test_the_protocols_other_calls(client):
    assert client.server_live() and client.server_ready() and client.model_ready("simple")
    assert client.server_metadata().name == "hotwire"
    metadata = client.model_metadata("simple")
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
        ("INPUT0", "FP32", (-1, 16)),
        ("INPUT1", "FP32", (-1, 16)),
    ]
    assert client.model_config("simple").name == "simple"
    rows = {(r.name, r.state) for r in client.repository_index()}
    assert {("simple", "READY"), ("types", "READY"), ("slow", "READY")} <= rows
    assert client.health() == "SERVING" and client.health("simple") == "SERVING"
    before = client.statistics("simple").model_stats[0].inference_count
    client.infer("simple", {n: np.ones((2, 16), np.float32) for n in ("INPUT0", "INPUT1")})
    assert client.statistics("simple").model_stats[0].inference_count == before + 2
    with pytest.raises(NotFound):
        client.model_metadata("nosuch")


def test_load_with_config_and_files_then_unload(running_server, tmp_path):
    server = running_server(tmp_path, model_control_mode="explicit")
    with Client(server.address) as client:
        client.load_model(
            "uploaded", config={"max_batch_size": 8}, files={"1/model.onnx": SIMPLE.SerializeToString()}
        )
        assert client.model_ready("uploaded")
        x = {n: np.ones((1, 16), np.float32) for n in ("INPUT0", "INPUT1")}
        assert client.infer("uploaded", x)["OUTPUT0"][0, 0] == 3.0
        client.unload_model("uploaded")
        assert not client.model_ready("uploaded")
        with pytest.raises(InvalidInput, match="relative"):
            client.load_model("bad", config="{}", files={"../escape": b""})


def test_async_client_infers_concurrently_and_streams(server):
    async def main() -> None:
        async with AsyncClient(server.address) as client:
            xs = [np.full((1, 16), float(i), np.float32) for i in range(64)]
            results = await asyncio.gather(*(client.infer("simple", {"INPUT0": x, "INPUT1": x}) for x in xs))
            for x, result in zip(xs, results):
                np.testing.assert_array_equal(result["OUTPUT0"], 2 * x + 1)
            with pytest.raises(InvalidInput):
                await client.infer("simple", {"INPUT0": xs[0]})
            with pytest.raises(DeadlineExceeded):
                await client.infer("slow", {"x": np.ones((32, 512), np.float32)}, timeout=0.001)
            assert await client.server_ready() and (await client.model_metadata("simple")).name == "simple"

            async def requests():
                yield StreamRequest("simple", {"INPUT0": xs[1], "INPUT1": xs[1]})
                yield StreamRequest("simple", {"INPUT0": xs[1]})
                yield StreamRequest("simple", {"INPUT0": xs[2], "INPUT1": xs[2]})

            items = [item async for item in client.stream(requests())]
            assert [item.error is None for item in items] == [True, False, True]
            np.testing.assert_array_equal(items[2].result()["OUTPUT0"], 2 * xs[2] + 1)

    asyncio.run(main())


def test_importing_the_client_imports_no_server_onnxruntime_or_numba():
    code = (
        "import sys, hotwire.clients, hotwire.clients.cli\n"
        "bad = [m for m in ('hotwire.server', 'onnxruntime', 'numba') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
