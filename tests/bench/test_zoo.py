"""The benchmark model zoo (`hotwire.bench.zoo`): written to disk, served by the real server, answering as
in-process ONNX Runtime does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hotwire.bench import models, zoo  # noqa: E402
from hotwire.clients import Client  # noqa: E402
from server_harness import ServerThread  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_REPOSITORY = REPO_ROOT / "server" / "example_repository"

# What clients see (ModelMetadata: the batch dimension first), independent of how the zoo declares it.
CLIENT_INPUTS = {
    "classifier": [("input", "FP32", (-1, 16))],
    "wide_mlp": [("input", "FP32", (-1, 512))],
    "convnet": [("input", "FP32", (-1, 3, 224, 224))],
    "convnet_uint8": [("image", "UINT8", (-1, -1, -1, 3))],
    "transformer": [("tokens", "INT64", (-1, -1))],
}
OUTPUTS = {
    "classifier": [("probabilities", "FP32", (-1, 4))],
    "wide_mlp": [("logits", "FP32", (-1, 10))],
    "convnet": [("logits", "FP32", (-1, 1000))],
    "convnet_uint8": [("logits", "FP32", (-1, 1000))],
    "transformer": [("logits", "FP32", (-1, 4))],
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    assert zoo.write_zoo(root) == list(zoo.ZOO)
    return root


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[Client]:
    # One server for the module: loading compiles the preprocessing kernels and warms the 224x224 convnets.
    server = ServerThread(repository).start()
    try:
        with Client(server.address) as connected:
            yield connected
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sessions(repository: Path) -> dict[str, ort.InferenceSession]:
    """In-process ONNX Runtime on the served bytes, with the options the zoo's configs give the server (one
    intra-op thread, all graph optimizations): the same computation, so its answers are the server's bit for
    bit."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return {
        name: ort.InferenceSession(
            str(repository / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for name in zoo.ZOO
    }


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


# ------------------------------------------------------------------------------------------------------------
# the repository on disk


def test_the_zoo_is_a_triton_repository_of_checked_models(repository: Path) -> None:
    for name, model in zoo.ZOO.items():
        model_dir = repository / name
        files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
        assert files == sorted(model.files()), name
        graph = onnx.load(str(repository / name / "1" / "model.onnx"))
        onnx.checker.check_model(graph, full_check=True)
        assert graph.ir_version == 8 and [(o.domain, o.version) for o in graph.opset_import] == [("", 17)]
        if model.pipeline is not None:
            assert json.loads((repository / name / "preprocess.json").read_text())["inputs"]
        if name != "classifier":
            config = (repository / name / "config.pbtxt").read_text()
            assert f"max_queue_delay_microseconds: {zoo.QUEUE_DELAY_US}" in config
            assert "kind: KIND_CPU" in config and "count: 1" in config
            assert 'key: "intra_op_thread_count" value: { string_value: "1" }' in config
    # the bundled example, byte for byte
    for file in ("config.pbtxt", "1/model.onnx"):
        assert (repository / "classifier" / file).read_bytes() == (
            EXAMPLE_REPOSITORY / "classifier" / file
        ).read_bytes()
    assert (repository / "convnet_uint8" / "1" / "model.onnx").read_bytes() == models.serialize_model(
        models.convnet()
    )


def test_writing_twice_gives_the_same_bytes(repository: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert zoo.write_zoo(again) == list(zoo.ZOO)
    first = {p.relative_to(repository): p.read_bytes() for p in repository.rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first == second
    # over a zoo written before: allowed, and the same bytes again
    assert zoo.write_zoo(again, ["transformer", "classifier", "transformer"]) == ["transformer", "classifier"]
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()} == first


def test_it_refuses_a_directory_that_is_not_a_zoo(tmp_path: Path) -> None:
    (tmp_path / "mine" / "1").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="mine"):
        zoo.write_zoo(tmp_path, ["classifier"])
    assert not (tmp_path / "classifier").exists()  # refused before writing anything
    partial = tmp_path / "partial"
    zoo.write_zoo(partial, ["classifier"])
    (partial / "classifier" / "2").mkdir()  # a version the zoo does not write
    with pytest.raises(FileExistsError, match="classifier/2"):
        zoo.write_zoo(partial)
    with pytest.raises(KeyError, match="no zoo model 'resnet'"):
        zoo.write_zoo(tmp_path / "new", ["resnet"])


def test_main_writes_the_repository_and_rejects_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert zoo.main(["--out", str(out), "--model", "classifier", "--model", "transformer"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["classifier", "transformer"]
    assert (out / "transformer" / "preprocess.json").read_text() == zoo.TRANSFORMER_PIPELINE
    assert "classifier, transformer" in capsys.readouterr().out
    (tmp_path / "stray.txt").write_text("not a model")
    for argv in (
        [],  # no --out
        ["--out", str(out), "--model", "resnet"],  # unknown model
        ["--out", str(tmp_path)],  # not empty, not a zoo
        ["--out", str(out), "--frobnicate"],
    ):
        with pytest.raises(SystemExit) as exited:
            zoo.main(argv)
        assert exited.value.code == 2, argv
    assert zoo.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}: {model.description}" in listed for name, model in zoo.ZOO.items())


def test_floor_inputs_are_what_the_graphs_take(sessions: dict[str, ort.InferenceSession]) -> None:
    rng = np.random.default_rng(0)
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
    for name, session in sessions.items():
        feeds = zoo.floor_inputs(name, 2, rng)
        assert sorted(feeds) == sorted(i.name for i in session.get_inputs()), name
        for spec in session.get_inputs():
            assert feeds[spec.name].dtype == dtypes[spec.type], (name, spec.name)
            assert list(feeds[spec.name].shape) == [2, *spec.shape[1:]], (name, spec.name)
        assert all(np.isfinite(v).all() for v in _run(session, feeds).values()), name
    padded = zoo.floor_inputs("transformer", 8, rng)
    assert ((padded["attention_mask"] == 0) <= (padded["input_ids"] == zoo.PAD_ID)).all()
    with pytest.raises(ValueError):
        zoo.floor_inputs("wide_mlp", 0, rng)
    with pytest.raises(KeyError):
        zoo.floor_inputs("resnet", 1, rng)


# ------------------------------------------------------------------------------------------------------------
# served


def test_every_model_is_ready_and_shows_its_client_inputs(client: Client) -> None:
    assert {(m.name, m.version, m.state) for m in client.repository_index()} == {
        (name, "1", "READY") for name in zoo.ZOO
    }
    assert client.server_ready()
    for name in zoo.ZOO:
        assert client.model_ready(name), name
        metadata = client.model_metadata(name)
        assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == CLIENT_INPUTS[name], name
        assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == OUTPUTS[name], name


@pytest.mark.parametrize(("name", "batch"), [("classifier", 3), ("wide_mlp", 4), ("convnet", 2)])
def test_plain_models_answer_as_onnxruntime(
    client: Client, sessions: dict[str, ort.InferenceSession], name: str, batch: int
) -> None:
    feeds = zoo.floor_inputs(name, batch, np.random.default_rng(1))
    result = client.infer(name, feeds)
    expected = _run(sessions[name], feeds)
    assert list(result) == list(expected)
    for output, array in expected.items():
        np.testing.assert_array_equal(result[output], array)


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HWC bilinear resize, half-pixel centres clamped at the borders, float32 weights and blends,
    rounded half up: the preprocessing kernel's convention, step by step in NumPy."""

    def taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0, size_in - 1)
        low = np.floor(source).astype(np.int64)
        return low, np.minimum(low + 1, size_in - 1), (source - low).astype(np.float32)

    y0, y1, wy = taps(image.shape[0], height)
    x0, x1, wx = taps(image.shape[1], width)
    pixels = image.astype(np.float32)
    one = np.float32(1.0)
    wx, wx0 = wx[None, :, None], one - wx[None, :, None]
    top = pixels[y0][:, x0] * wx0 + pixels[y0][:, x1] * wx
    bottom = pixels[y1][:, x0] * wx0 + pixels[y1][:, x1] * wx
    blended = top * (one - wy)[:, None, None] + bottom * wy[:, None, None] + np.float32(0.5)
    return np.minimum(np.floor(blended), 255).astype(np.uint8)


def _normalize(images: np.ndarray, fused: bool) -> np.ndarray:
    """uint8 NHWC -> FP32 NCHW (x / 255 - mean) / std as the kernel computes it: x * m + a with m and a
    rounded to float32, and the result rounded once (`fused`: the CPU's fused multiply-add, which numba's
    fastmath "contract" lets the kernel use; the product formed in float64 is exact) or twice (no FMA)."""
    mean = np.asarray(zoo.IMAGE_MEAN, np.float32).astype(np.float64)
    std = np.asarray(zoo.IMAGE_STD, np.float32).astype(np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    shift = (-mean / std).astype(np.float32)
    if fused:
        normalized = (images.astype(np.float64) * scale + shift).astype(np.float32)
    else:
        normalized = images.astype(np.float32) * scale + shift
    return normalized.transpose(0, 3, 1, 2).copy()


def test_convnet_uint8_preprocesses_as_numpy_then_answers_as_onnxruntime(
    client: Client, sessions: dict[str, ort.InferenceSession]
) -> None:
    rng = np.random.default_rng(2)
    size = zoo.IMAGE_SIZE
    for shape in [(1, 97, 131, 3), (2, 300, 260, 3)]:  # upscaled, and a batch of two downscaled
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        resized = np.stack([_resize_bilinear(image, size, size) for image in images])
        served = client.infer("convnet_uint8", {"image": images})["logits"]
        assert served.shape == (shape[0], 1000)
        # Bit for bit, against whichever rounding of the normalize this CPU does (both are exact models of
        # the kernel); a resize off by one uint8 level anywhere would already change the logits.
        candidates = [
            _run(sessions["convnet_uint8"], {"input": _normalize(resized, fused)})["logits"]
            for fused in (True, False)
        ]
        assert any(np.array_equal(served, expected) for expected in candidates), [
            float(np.abs(served - expected).max()) for expected in candidates
        ]


def _padded(tokens: list[np.ndarray]) -> dict[str, np.ndarray]:
    """pad_truncate by hand: the first SEQUENCE_LENGTH ids of each sequence, PAD_ID after them, and the mask
    (1 on the sequence's ids, 0 on the padding)."""
    length = zoo.SEQUENCE_LENGTH
    ids = np.full((len(tokens), length), zoo.PAD_ID, np.int64)
    mask = np.zeros((len(tokens), length), np.int64)
    for row, sequence in enumerate(tokens):
        kept = sequence[:length]
        ids[row, : len(kept)] = kept
        mask[row, : len(kept)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_transformer_answers_do_not_depend_on_what_they_are_batched_with(
    client: Client, sessions: dict[str, ort.InferenceSession]
) -> None:
    rng = np.random.default_rng(3)
    lengths = [1, 9, 64, 127, 128, 129, 200, 500]  # shorter, as long as and longer than 128
    tokens = [rng.integers(0, zoo.VOCABULARY, n, dtype=np.int64) for n in lengths]
    alone = [client.infer("transformer", {"tokens": t[None]})["logits"][0] for t in tokens]

    def executions() -> int:
        return client.statistics("transformer").model_stats[0].execution_count

    # The same sequences sent at once, until the batcher has put some of them in one batch (the first round
    # does, nearly always: the others queue while the instance computes one).
    for _ in range(5):
        before = executions()
        with ThreadPoolExecutor(len(tokens)) as pool:
            together = list(pool.map(lambda t: client.infer("transformer", {"tokens": t[None]}), tokens))
        for sequence, result, single in zip(tokens, together, alone):
            np.testing.assert_array_equal(result["logits"][0], single, err_msg=f"length {len(sequence)}")
        if executions() - before < len(tokens):
            break
    else:
        pytest.fail("the batcher never batched concurrent requests together")

    # one request of two rows (rows of one request share a length)
    pair = rng.integers(0, zoo.VOCABULARY, (2, 40), dtype=np.int64)
    served_pair = client.infer("transformer", {"tokens": pair})["logits"]

    # in-process ORT on what pad_truncate produces: per sequence and as one batch, the same answers
    reference = _run(sessions["transformer"], _padded(tokens))["logits"]
    np.testing.assert_array_equal(np.stack(alone), reference)
    for row, sequence in enumerate(tokens):
        single = _run(sessions["transformer"], _padded([sequence]))["logits"][0]
        np.testing.assert_array_equal(single, reference[row])
    np.testing.assert_array_equal(served_pair, _run(sessions["transformer"], _padded(list(pair)))["logits"])
    # truncation keeps the first SEQUENCE_LENGTH ids: what follows them changes nothing
    first = tokens[-1][: zoo.SEQUENCE_LENGTH]
    np.testing.assert_array_equal(
        client.infer("transformer", {"tokens": first[None]})["logits"][0], alone[-1]
    )


def test_transformer_ignores_what_the_padding_holds(sessions: dict[str, ort.InferenceSession]) -> None:
    rng = np.random.default_rng(4)
    feeds = zoo.floor_inputs("transformer", 8, rng)
    noisy = dict(feeds)
    padding = feeds["attention_mask"] == 0
    noisy["input_ids"] = np.where(padding, rng.integers(0, zoo.VOCABULARY, padding.shape), feeds["input_ids"])
    assert (noisy["input_ids"] != feeds["input_ids"]).any()
    session = sessions["transformer"]
    # masked keys score -1e4 below the rest, whose exponent is exactly 0 in float32: an exact match
    np.testing.assert_array_equal(_run(session, noisy)["logits"], _run(session, feeds)["logits"])
    # ids outside the vocabulary are clamped into it rather than failing the batch
    for outside, inside in ((zoo.VOCABULARY + 7, zoo.VOCABULARY - 1), (-3, 0)):
        clamped, valid = (
            _run(session, dict(feeds, input_ids=np.where(padding, feeds["input_ids"], value)))["logits"]
            for value in (outside, inside)
        )
        np.testing.assert_array_equal(clamped, valid)
