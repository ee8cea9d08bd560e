"""Tests for the deterministic ONNX model builders in ``hotwire.bench.models``."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hotwire.bench import models  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_REPOSITORY = REPO_ROOT / "server" / "example_repository"

# builder, input name, input dtype, per-item input shape, output name, per-item output shape, softmax?
Case = tuple[Callable[[], "onnx.ModelProto"], str, type, tuple[int, ...], str, tuple[int, ...], bool]
CASES: dict[str, Case] = {
    "small_classifier": (models.small_classifier, "input", np.float32, (16,), "probabilities", (4,), True),
    "image_classifier_uint8": (
        models.image_classifier_uint8,
        "image",
        np.uint8,
        (64, 64, 3),
        "probabilities",
        (10,),
        True,
    ),
    "image_classifier_nchw": (
        models.image_classifier_nchw,
        "input",
        np.float32,
        (3, 64, 64),
        "probabilities",
        (10,),
        True,
    ),
    "wide_mlp": (models.wide_mlp, "input", np.float32, (512,), "logits", (10,), False),
    "small_mlp": (models.small_mlp, "input", np.float32, (64,), "logits", (10,), False),
    "convnet": (models.convnet, "input", np.float32, (3, 224, 224), "logits", (1000,), False),
}


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: case[0]() for name, case in CASES.items()}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(models.serialize_model(model), options, providers=["CPUExecutionProvider"])


def _random_input(dtype: type, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_builder_passes_checker_and_metadata(name: str, built: dict[str, onnx.ModelProto]) -> None:
    model = built[name]
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == models.IR_VERSION == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", models.OPSET)]
    assert models.OPSET == 17
    assert model.producer_name == "hotwire"

    _, in_name, in_dtype, in_shape, out_name, out_shape, _ = CASES[name]
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == in_name
    assert graph_output.name == out_name
    expected_elem = onnx.TensorProto.UINT8 if in_dtype == np.uint8 else onnx.TensorProto.FLOAT
    assert graph_input.type.tensor_type.elem_type == expected_elem
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and out_dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in in_dims[1:]) == in_shape
    assert tuple(d.dim_value for d in out_dims[1:]) == out_shape


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_builder_runs_in_onnxruntime(name: str, batch: int, built: dict[str, onnx.ModelProto]) -> None:
    _, in_name, in_dtype, in_shape, out_name, out_shape, is_softmax = CASES[name]
    session = _session(built[name])
    assert [i.name for i in session.get_inputs()] == [in_name]
    assert [o.name for o in session.get_outputs()] == [out_name]

    x = _random_input(in_dtype, (batch, *in_shape), seed=batch)
    (y,) = session.run([out_name], {in_name: x})
    assert y.dtype == np.float32
    assert y.shape == (batch, *out_shape)
    assert np.isfinite(y).all()
    if is_softmax:
        assert (y >= 0).all()
        np.testing.assert_allclose(y.sum(axis=-1), np.ones(batch), rtol=1e-5, atol=1e-5)
    # Rows are computed independently: batching must not change the per-item result.
    (first,) = session.run([out_name], {in_name: x[:1]})
    np.testing.assert_allclose(y[:1], first, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["small_classifier", "image_classifier_uint8"])
def test_builders_are_deterministic(name: str, built: dict[str, onnx.ModelProto]) -> None:
    assert models.serialize_model(CASES[name][0]()) == models.serialize_model(built[name])


def test_write_model_repository_layout(tmp_path: pathlib.Path, built: dict[str, onnx.ModelProto]) -> None:
    config = 'name: "tiny"\nplatform: "onnxruntime_onnx"\n'
    models.write_model_repository(tmp_path, {"tiny": (built["small_classifier"], config)})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "tiny/1/model.onnx",
        "tiny/config.pbtxt",
    ]
    assert (tmp_path / "tiny" / "config.pbtxt").read_text() == config
    loaded = onnx.load(str(tmp_path / "tiny" / "1" / "model.onnx"))
    assert models.serialize_model(loaded) == models.serialize_model(built["small_classifier"])


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_example_repository_is_up_to_date(tmp_path: pathlib.Path) -> None:
    models.write_example_repository(tmp_path)
    generated = _files(tmp_path)
    assert sorted(generated) == [
        "classifier/1/model.onnx",
        "classifier/config.pbtxt",
        "image_classifier/1/model.onnx",
        "image_classifier/config.pbtxt",
        "image_classifier/preprocess.json",
    ]
    committed = _files(EXAMPLE_REPOSITORY)
    for rel, data in generated.items():
        assert rel in committed, f"{rel} missing from {EXAMPLE_REPOSITORY}"
        assert committed[rel] == data, (
            f"{EXAMPLE_REPOSITORY / rel} is stale; regenerate with "
            "`python -m hotwire.bench.models --example-repository server/example_repository`"
        )
    for rel, data in generated.items():
        if rel.endswith("model.onnx"):
            assert len(data) < 50 * 1024


def test_main_writes_example_repository(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "repo"
    assert models.main(["--example-repository", str(target)]) == 0
    assert _files(target) == _files(EXAMPLE_REPOSITORY)
    assert str(target) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "max_batch", "input_name", "input_type", "input_dims", "output_dims"),
    [
        ("classifier", 64, "input", "TYPE_FP32", [16], [4]),
        ("image_classifier", 32, "input", "TYPE_FP32", [3, 64, 64], [10]),
    ],
)
def test_example_configs_parse_as_triton_model_config(
    name: str, max_batch: int, input_name: str, input_type: str, input_dims: list[int], output_dims: list[int]
) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    text = (EXAMPLE_REPOSITORY / name / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == max_batch
    (inp,) = config.input
    assert inp.name == input_name
    assert model_config_pb2.DataType.Name(inp.data_type) == input_type
    assert list(inp.dims) == input_dims
    (out,) = config.output
    assert out.name == "probabilities"
    assert model_config_pb2.DataType.Name(out.data_type) == "TYPE_FP32"
    assert list(out.dims) == output_dims
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    (group,) = config.instance_group
    assert group.count == 1
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU"


def test_server_package_does_not_import_bench_models() -> None:
    """onnx is a test and bench dependency: no server module imports the model builders, and the `hotwire`
    command (which offers `hotwire bench`) loads neither them nor onnx when it starts."""
    for path in (REPO_ROOT / "server").rglob("*.py"):
        assert "bench.models" not in path.read_text(encoding="utf-8"), f"{path} imports hotwire.bench.models"
    probe = (
        "import sys; from hotwire.server.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('onnx', 'hotwire.bench.models', 'hotwire.bench.zoo') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
