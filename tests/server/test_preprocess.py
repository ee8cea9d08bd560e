"""Preprocessing pipelines through the real server: results equal NumPy preprocessing then in-process ORT,
variable-size images batch together, metadata shows the client-facing inputs, malformed declarations fail that
model only, and kernels load from a warmed cache without compiling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hotwire.bench import models
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc as pb_grpc
from hotwire.proto import model_config_pb2 as mc
from hotwire.server import datatypes, preprocess
from hotwire.server.config import bundled_repository
from hotwire.server.model_config import Signature, TensorSpec
from onnx_models import write_model
from server_harness import ServeProcess

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def resize_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """OpenCV INTER_LINEAR (half-pixel centers, clamped), rounded half up; float64 NumPy."""
    height, width, _ = image.shape

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, size - 1), x - lo

    y0, y1, wy = axis(out_h, height)
    x0, x1, wx = axis(out_w, width)
    f = image.astype(np.float64)
    top = f[y0][:, x0] * (1 - wx)[None, :, None] + f[y0][:, x1] * wx[None, :, None]
    bottom = f[y1][:, x0] * (1 - wx)[None, :, None] + f[y1][:, x1] * wx[None, :, None]
    return np.clip(np.floor(top * (1 - wy)[:, None, None] + bottom * wy[:, None, None] + 0.5), 0, 255).astype(
        np.uint8
    )


def normalize_reference(images: np.ndarray) -> np.ndarray:
    return ((images / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def infer(stub, model: str, tensors: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name=model)
    for name, (datatype, array) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    response = stub.ModelInfer(request, timeout=30)
    return {
        o.name: np.frombuffer(raw, {"FP32": np.float32, "INT64": np.int64}[o.datatype]).reshape(
            tuple(o.shape)
        )
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }


def test_raw_images_of_any_size_equal_numpy_preprocessing_then_ort(running_server, stub_for):
    server = running_server(bundled_repository())
    stub = stub_for(server)
    session = ort.InferenceSession(
        models.serialize_model(models.image_classifier_nchw()), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(5)
    images = [
        rng.integers(0, 256, (1 + i % 2, h, w, 3), dtype=np.uint8)
        for i, (h, w) in enumerate([(48, 80), (64, 64), (100, 30), (7, 9), (64, 200), (33, 33)] * 4)
    ]
    version = server.app.registry.route("image_classifier")
    instance = version.instances[0]
    gate = threading.Event()
    run_sync = instance.run_sync

    # the first batch waits until others have queued: batches form whatever the timing
    def held(feeds, names):
        gate.wait(30)
        return run_sync(feeds, names)

    instance.run_sync = held
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(infer, stub, "image_classifier", {"image": ("UINT8", x)}) for x in images]
        for _ in range(1000):
            if version.batcher.queued >= 4:
                break
            time.sleep(0.01)
        gate.set()
        results = [future.result() for future in futures]
    for i, (x, result) in enumerate(zip(images, results)):
        resized = np.stack([resize_reference(image, 64, 64) for image in x])
        expected = session.run(None, {"input": normalize_reference(resized)})[0]
        np.testing.assert_allclose(
            result["probabilities"], expected, atol=2e-3, err_msg=f"image {i}, {x.shape}"
        )
    assert version.stats.execution_count < len(images)  # images of different sizes shared batches


def test_metadata_and_config_show_the_client_facing_input(running_server, stub_for):
    stub = stub_for(running_server(bundled_repository()))
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="image_classifier"))
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("image", "UINT8", [-1, -1, -1, 3])
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name="image_classifier")).config
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("image", "TYPE_UINT8", [-1, -1, 3])
    ]
    request = pb.ModelInferRequest(model_name="image_classifier")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 3])
    request.raw_input_contents.append(np.zeros((1, 8, 8, 3), np.float32).tobytes())
    with pytest.raises(Exception, match="datatype FP32 does not match the model's UINT8"):
        stub.ModelInfer(request)


def _linear(
    inputs: dict[str, tuple[int, list]],
    body: list,
    outputs: dict[str, tuple[int, list]],
    inits: list | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        body,
        "m",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        inits or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tabular_model() -> onnx.ModelProto:
    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    return _linear(
        {"features": (TensorProto.FLOAT, ["batch", 4])},
        [helper.make_node("MatMul", ["features", "w"], ["y"])],
        {"y": (TensorProto.FLOAT, ["batch", 3])},
        [weights],
    )


def sequence_model() -> onnx.ModelProto:
    """y = sum(ids * mask) per row, and the mask's length."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    body = [
        helper.make_node("Mul", ["ids", "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "axes"], ["length"], keepdims=0),
    ]
    return _linear(
        {"ids": (TensorProto.INT64, ["batch", 8]), "mask": (TensorProto.INT64, ["batch", 8])},
        body,
        {"total": (TensorProto.INT64, ["batch"]), "length": (TensorProto.INT64, ["batch"])},
        [axes],
    )


def test_tabular_and_sequence_pipelines_equal_numpy(tmp_path, running_server, stub_for):
    tabular = {
        "inputs": {
            "raw": {
                "datatype": "FP32",
                "dims": [4],
                "feeds": "features",
                "steps": [
                    {"op": "fill_nan", "fill": [0.0, 1.0, 2.0, 3.0]},
                    {"op": "standardize", "mean": [1.0, 2.0, 3.0, 4.0], "std": [2.0, 2.0, 0.5, 1.0]},
                ],
            }
        }
    }
    sequence = {
        "inputs": {
            "tokens": {
                "datatype": "INT64",
                "dims": [-1],
                "feeds": "ids",
                "steps": [{"op": "pad_truncate", "length": 8, "pad_id": 0, "mask_feeds": "mask"}],
            }
        }
    }
    write_model(tmp_path, "tabular", tabular_model(), "max_batch_size: 8\ndynamic_batching { }")
    (tmp_path / "tabular" / "preprocess.json").write_text(json.dumps(tabular))
    write_model(
        tmp_path,
        "sequence",
        sequence_model(),
        f'max_batch_size: 8\ndynamic_batching {{ }}\nparameters {{ key: "preprocess" value: '
        f"{{ string_value: {json.dumps(json.dumps(sequence))} }} }}",
    )
    stub = stub_for(running_server(tmp_path))
    x = np.array([[np.nan, 2.0, 3.5, -1.0], [1.0, np.nan, np.nan, 4.0]], np.float32)
    prepared = (np.where(np.isnan(x), [0.0, 1.0, 2.0, 3.0], x) - [1.0, 2.0, 3.0, 4.0]) / [2.0, 2.0, 0.5, 1.0]
    expected = prepared.astype(np.float32) @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    np.testing.assert_allclose(
        infer(stub, "tabular", {"raw": ("FP32", x)})["y"], expected, rtol=1e-5, atol=1e-6
    )
    tokens = [np.arange(1, n + 1, dtype=np.int64).reshape(1, n) for n in (3, 12, 8, 1)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: infer(stub, "sequence", {"tokens": ("INT64", t)}), tokens))
    for t, result in zip(tokens, results):
        kept = t[0, :8]  # truncated on the right to 8 tokens
        assert result["total"].tolist() == [int(kept.sum())] and result["length"].tolist() == [len(kept)]


@pytest.mark.parametrize(
    ("declaration", "reason"),
    [
        ("{not json", "not valid JSON"),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "UINT8",
                        "dims": [-1, -1, 3],
                        "feeds": "input",
                        "steps": [{"op": "sharpen"}],
                    }
                }
            },
            "unknown op 'sharpen'",
        ),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "UINT8",
                        "dims": [-1, -1, 3],
                        "feeds": "nope",
                        "steps": [{"op": "resize", "height": 64, "width": 64}],
                    }
                }
            },
            "feeds 'nope'",
        ),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "UINT8",
                        "dims": [-1, -1, 3],
                        "feeds": "input",
                        "steps": [{"op": "normalize", "mean": [0.5, 0.5, 0.5]}],
                    }
                }
            },
            "'std'",
        ),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "UINT8",
                        "dims": [-1, -1, 3],
                        "feeds": "input",
                        "steps": [
                            {"op": "resize", "height": 32, "width": 32},
                            {"op": "normalize", "mean": [0, 0, 0], "std": [1, 1, 1]},
                        ],
                    }
                }
            },
            "item shape [3, 32, 32], the model takes [3, 64, 64]",
        ),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "UINT8",
                        "dims": [-1, -1, 3],
                        "feeds": "input",
                        "steps": [{"op": "resize", "height": 64, "width": 64, "antialias": True}],
                    }
                }
            },
            "unknown arguments ['antialias']",
        ),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "UINT8",
                        "dims": [-1, -1, 3],
                        "feeds": "input",
                        "steps": [
                            {"op": "resize", "height": 48, "width": 48},
                            {"op": "center_crop", "height": 64, "width": 64},
                            {"op": "normalize", "mean": [0, 0, 0], "std": [1, 1, 1]},
                        ],
                    }
                }
            },
            "crop 64x64 is larger than the image 48x48",
        ),
        (
            {
                "inputs": {
                    "image": {
                        "datatype": "INT64",
                        "dims": [-1],
                        "feeds": "input",
                        "steps": [{"op": "pad_truncate", "length": 8}, {"op": "clip", "lo": 0, "hi": 1}],
                    }
                }
            },
            "step 1 (clip): 'pad_truncate' must be the only step",
        ),
    ],
)
def test_a_malformed_pipeline_is_a_clear_load_error_for_that_model_only(
    tmp_path, running_server, stub_for, declaration, reason
):
    write_model(
        tmp_path, "good", models.small_classifier(), models.CLASSIFIER_CONFIG.replace("classifier", "good")
    )
    write_model(
        tmp_path,
        "bad",
        models.image_classifier_nchw(),
        models.IMAGE_CLASSIFIER_CONFIG.replace("image_classifier", "bad"),
    )
    (tmp_path / "bad" / "preprocess.json").write_text(
        declaration if isinstance(declaration, str) else json.dumps(declaration)
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="good")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="bad")).ready
    assert reason in server.app.registry.entry("bad").reason()


def test_a_sequence_pipeline_is_its_pad_truncate_stage_alone():
    def spec(name: str) -> TensorSpec:
        return TensorSpec(name, datatypes.BY_NAME["INT64"], (-1,), (-1,))

    declared = {
        "inputs": {
            "tokens": {
                "datatype": "INT64",
                "dims": [-1],
                "feeds": "ids",
                "steps": [
                    {
                        "op": "pad_truncate",
                        "length": 4,
                        "pad_id": 9,
                        "padding_side": "left",
                        "mask_feeds": "mask",
                    }
                ],
            }
        }
    }
    preprocessor, _ = preprocess.build(declared, Signature((spec("ids"), spec("mask")), (spec("y"),), 8))
    pipeline = preprocessor.pipelines["tokens"]
    assert pipeline.pad_truncate == preprocess.PadTruncate(length=4, pad_id=9, padding_side="left")
    assert pipeline.per_request == [] and pipeline.per_batch == []
    fed = pipeline.run([np.array([[1, 2]]), np.array([[1, 2, 3, 4, 5, 6]])])
    assert fed["ids"].tolist() == [[9, 9, 1, 2], [1, 2, 3, 4]]
    assert fed["mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_kernels_load_from_a_warmed_cache_without_writing_to_it(tmp_path):
    cache = tmp_path / "kernel-cache"
    env = {**os.environ, "HOTWIRE_KERNEL_CACHE_DIR": str(cache)}
    script = (
        "import asyncio, sys\n"
        "from hotwire.server.config import ServerConfig, bundled_repository\n"
        "from hotwire.server.registry import Registry\n"
        "async def main():\n"
        "    registry = Registry(32)\n"
        "    await registry.load_repository(bundled_repository())\n"
        "    assert registry.all_ready(), [e.reason() for e in registry.models()]\n"
        "    await registry.close()\n"
        "asyncio.run(main())\n"
    )
    first = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "NUMBA_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    snapshot = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert snapshot, "the first run cached nothing"
    second = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "NUMBA_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert after == snapshot  # everything loaded, nothing compiled or written: a read-only cache works
    result = subprocess.run(
        [sys.executable, "-m", "hotwire.server", "serve", "--help"], capture_output=True, text=True
    )
    assert "--kernel-cache-dir" in result.stdout
    assert isinstance(Path(cache), Path)


# ------------------------------------------------------------------------------------------------------------
# what a request's image needs (center_crop): checked before queueing; a failure at batch time fails its
# request only


def crop_reference(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    top, left = (image.shape[0] - crop_h) // 2, (image.shape[1] - crop_w) // 2
    return image[top : top + crop_h, left : left + crop_w]


def pixel_model(height: int, width: int) -> onnx.ModelProto:
    """y = flatten(x) @ w for x FP32 [batch, 3, height, width]: every pixel (so any misplaced crop) shows in
    y."""
    weights = np.random.default_rng(11).standard_normal((3 * height * width, 5)).astype(np.float32) / height
    body = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    return _linear(
        {"input": (TensorProto.FLOAT, ["batch", 3, height, width])},
        body,
        {"y": (TensorProto.FLOAT, ["batch", 5])},
        [numpy_helper.from_array(weights, "w")],
    )


def crop_model(
    root: Path, name: str, steps: list, size: tuple[int, int], batching: str = "dynamic_batching { }"
) -> None:
    declared = {
        "inputs": {
            "image": {
                "datatype": "UINT8",
                "dims": [-1, -1, 3],
                "feeds": "input",
                "steps": [*steps, {"op": "normalize", "mean": MEAN.tolist(), "std": STD.tolist()}],
            }
        }
    }
    write_model(root, name, pixel_model(*size), f"max_batch_size: 8\n{batching}")
    (root / name / "preprocess.json").write_text(json.dumps(declared))


def crop_resize_reference(
    model: onnx.ModelProto, x: np.ndarray, crop: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Halving resizes only (each output pixel the mean of 2x2 pixels, exact in float32 and float64 alike), so
    the NumPy reference and the kernels agree to the last uint8 level."""
    prepared = np.stack([resize_reference(crop_reference(image, *crop), *size) for image in x])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": normalize_reference(prepared)})[0]


def infer_or_status(stub, model: str, x: np.ndarray) -> dict[str, np.ndarray] | tuple[grpc.StatusCode, str]:
    try:
        return infer(stub, model, {"image": ("UINT8", x)})
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def test_an_image_smaller_than_the_crop_is_invalid_argument_naming_the_input(
    tmp_path, running_server, stub_for
):
    crop_model(
        tmp_path,
        "crop_first",
        [{"op": "center_crop", "height": 32, "width": 32}, {"op": "resize", "height": 16, "width": 16}],
        (16, 16),
    )
    crop_model(tmp_path, "crop_only", [{"op": "center_crop", "height": 32, "width": 32}], (32, 32))
    server = running_server(tmp_path)
    stub = stub_for(server)
    for model in ("crop_first", "crop_only"):
        for h, w in [(20, 20), (31, 64), (64, 31)]:
            code, details = infer_or_status(stub, model, np.zeros((1, h, w, 3), np.uint8))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (model, h, w, code, details)
            assert (
                "input 'image'" in details and f"{h}x{w} images" in details and "at least 32x32" in details
            ), details
        # rejected before queueing: never ran
        assert server.app.registry.route(model).stats.execution_count == 0
        ok = infer_or_status(stub, model, np.zeros((2, 32, 32, 3), np.uint8))  # exactly the crop: fine
        assert isinstance(ok, dict) and ok["y"].shape == (2, 5)


def test_a_too_small_image_fails_alone_and_the_rest_of_its_batch_equals_the_reference(
    tmp_path, running_server, stub_for
):
    crop_model(
        tmp_path,
        "crop",
        [{"op": "center_crop", "height": 32, "width": 32}, {"op": "resize", "height": 16, "width": 16}],
        (16, 16),
        "dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 5000000 }",
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    rng = np.random.default_rng(7)
    images = [
        rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        for h, w in [(100, 120), (20, 20), (33, 64), (48, 40)]
    ]
    with ThreadPoolExecutor(len(images)) as pool:
        results = list(pool.map(lambda x: infer_or_status(stub, "crop", x), images))
    code, details = results[1]
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and "input 'image'" in details
        and "at least 32x32" in details
    )
    for x, result in zip(images[:1] + images[2:], results[:1] + results[2:]):
        assert isinstance(result, dict), result
        expected = crop_resize_reference(pixel_model(16, 16), x, (32, 32), (16, 16))
        np.testing.assert_allclose(result["y"], expected, rtol=1e-4, atol=1e-4)
    stats = server.app.registry.route("crop").stats
    # the good three batched (preferred size 3)
    assert (stats.execution_count, stats.inference_count) == (1, 3)


def test_a_failure_at_batch_time_fails_only_its_request(tmp_path, running_server, stub_for, monkeypatch):
    """Defence in depth: with the check before queueing switched off, the too-small image reaches a batch of
    four (preferred size 4) and fails there alone; the other three run as a batch and equal the reference.
    Alone (run at once on the request's own handler: no queue delay) it gets the same error."""
    monkeypatch.setattr(preprocess.InputPipeline, "check", lambda self, shape, batched: None)
    steps = [{"op": "center_crop", "height": 32, "width": 32}, {"op": "resize", "height": 16, "width": 16}]
    crop_model(
        tmp_path,
        "crop",
        steps,
        (16, 16),
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }",
    )
    crop_model(tmp_path, "solo", steps, (16, 16))
    server = running_server(tmp_path)
    stub = stub_for(server)
    code, details = infer_or_status(stub, "solo", np.zeros((1, 20, 20, 3), np.uint8))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT and "crop 32x32 is larger than the image 20x20" in details
    ), details
    rng = np.random.default_rng(8)
    images = [
        rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        for h, w in [(100, 120), (20, 20), (33, 64), (48, 40)]
    ]
    with ThreadPoolExecutor(len(images)) as pool:
        results = list(pool.map(lambda x: infer_or_status(stub, "crop", x), images))
    code, details = results[1]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, results[1]
    assert "input 'image'" in details and "crop 32x32 is larger than the image 20x20" in details, details
    for x, result in zip(images[:1] + images[2:], results[:1] + results[2:]):
        assert isinstance(result, dict), result
        expected = crop_resize_reference(pixel_model(16, 16), x, (32, 32), (16, 16))
        np.testing.assert_allclose(result["y"], expected, rtol=1e-4, atol=1e-4)
    stats = server.app.registry.route("crop").stats
    # the three ran together, without the fourth
    assert (stats.execution_count, stats.inference_count) == (1, 3)


def test_a_crop_larger_than_the_synthetic_image_loads_and_serves(tmp_path, running_server, stub_for):
    crop_model(
        tmp_path,
        "big_crop",
        [{"op": "center_crop", "height": 48, "width": 40}, {"op": "resize", "height": 24, "width": 20}],
        (24, 20),
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="big_crop")).ready, server.app.registry.entry(
        "big_crop"
    ).reason()
    rng = np.random.default_rng(9)
    for h, w in [(48, 40), (61, 90), (200, 41)]:
        x = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        expected = crop_resize_reference(pixel_model(24, 20), x, (48, 40), (24, 20))
        result = infer(stub, "big_crop", {"image": ("UINT8", x)})
        np.testing.assert_allclose(result["y"], expected, rtol=1e-4, atol=1e-4)


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_numba_is_loaded_only_by_a_model_that_declares_preprocessing(tmp_path):
    """A served repository without preprocessing never maps numba's compiler (llvmlite), batched requests
    included (batch assembly needs no kernel); loading a model with an image pipeline maps it then."""
    repository = tmp_path / "models"
    for name in ("classifier", "image_classifier"):
        shutil.copytree(bundled_repository() / name, repository / name)
    process = ServeProcess(
        [
            "--model-repository",
            str(repository),
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--metrics-port",
            "-1",
        ]
        + ["--host", "127.0.0.1", "--model-control-mode", "explicit", "--load-model", "classifier"]
    )
    try:
        port = process.wait_listening()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            rows = np.random.default_rng(3).random((5, 16), dtype=np.float32)
            with ThreadPoolExecutor(5) as pool:
                answers = list(
                    pool.map(lambda r: infer(stub, "classifier", {"input": ("FP32", rows[r:])}), range(5))
                )
            session = ort.InferenceSession(str(bundled_repository() / "classifier" / "1" / "model.onnx"))
            for start, answer in enumerate(answers):
                (expected,) = session.run(None, {"input": rows[start:]})
                np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5)
            assert "llvmlite" not in _mapped_libraries(process.proc.pid)

            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="image_classifier"), timeout=120
            )
            assert "llvmlite" in _mapped_libraries(process.proc.pid)
    finally:
        process.close()
