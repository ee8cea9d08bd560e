"""GPU placement. Without onnxruntime-gpu and a CUDA device the `gpu` tests skip; KIND_GPU on such a machine
is a clear load error for that model only (checked everywhere)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from hotwire.bench import models
from hotwire.proto import grpc_service_pb2 as pb
from onnx_models import add_sub, write_model

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
gpu = pytest.mark.gpu


def simple_request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[2, 16])
        request.raw_input_contents.append(np.full((2, 16), 1.5, np.float32).tobytes())
    return request


@pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA provider: KIND_GPU loads")
def test_kind_gpu_without_cuda_is_a_clear_load_error_for_that_model_only(tmp_path, running_server, stub_for):
    write_model(
        tmp_path, "on_gpu", add_sub(), "max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_GPU } ]"
    )
    write_model(
        tmp_path, "on_cpu", add_sub(), "max_batch_size: 8\ninstance_group [ { count: 1 kind: KIND_AUTO } ]"
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="on_cpu")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="on_gpu")).ready
    assert "CUDAExecutionProvider" in server.app.registry.entry("on_gpu").reason()
    assert server.app.registry.route("on_cpu").instances[0].placement.kind == "cpu"  # KIND_AUTO falls back


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with the CUDA provider and a GPU")
def test_kind_gpu_results_equal_cpu_onnxruntime(tmp_path, running_server, stub_for):
    write_model(
        tmp_path,
        "on_gpu",
        add_sub(),
        "max_batch_size: 8\ninstance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]",
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    response = stub.ModelInfer(simple_request("on_gpu"))
    assert server.app.registry.route("on_gpu").instances[0].placement.label == "gpu:0"
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], np.float32), 3.0)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with the CUDA provider and a GPU")
def test_gpu_preprocessing_feeds_onnxruntime_on_the_device(tmp_path, running_server, stub_for):
    from hotwire.kernels import cuda_image

    if not cuda_image.available():
        pytest.skip("numba.cuda cannot use the GPU here")
    write_model(
        tmp_path,
        "image",
        models.image_classifier_nchw(),
        models.IMAGE_CLASSIFIER_CONFIG.replace("image_classifier", "image").replace("KIND_CPU", "KIND_GPU"),
    )
    (tmp_path / "image" / "preprocess.json").write_text(models.IMAGE_CLASSIFIER_PIPELINE)
    write_model(
        tmp_path,
        "image_cpu",
        models.image_classifier_nchw(),
        models.IMAGE_CLASSIFIER_CONFIG.replace("image_classifier", "image_cpu"),
    )
    (tmp_path / "image_cpu" / "preprocess.json").write_text(models.IMAGE_CLASSIFIER_PIPELINE)
    stub = stub_for(running_server(tmp_path))
    image = np.random.default_rng(0).integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    outputs = {}
    for name in ("image", "image_cpu"):
        request = pb.ModelInferRequest(model_name=name)
        request.inputs.add(name="image", datatype="UINT8", shape=image.shape)
        request.raw_input_contents.append(image.tobytes())
        outputs[name] = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], np.float32)
    np.testing.assert_allclose(outputs["image"], outputs["image_cpu"], atol=1e-4)
