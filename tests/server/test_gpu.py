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


# -- the CUDA and TensorRT providers' options, and no silent CPU fallback (all on CPU)
# ---------------------------------------------------------------------------------------

GPU_CONFIG = """
name: "m" max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 1 ] } ]
parameters { key: "gpu_mem_limit" value: { string_value: "2147483648" } }
parameters { key: "arena_extend_strategy" value: { string_value: "1" } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "heuristic" } }
optimization {
  cuda { graphs: true }
  execution_accelerators { gpu_execution_accelerator [
    { name: "cuda" parameters { key: "use_tf32" value: "0" } },
    { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" }
                       parameters { key: "max_workspace_size_bytes" value: "1073741824" }
                       parameters { key: "trt_engine_cache_path" value: "engines" } } ] }
}
"""


def pretend_providers(monkeypatch, *names: str) -> None:
    """What onnxruntime-gpu lists; this machine's onnxruntime cannot actually start them."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*names, "CPUExecutionProvider"])


def test_config_parameters_and_accelerators_become_the_gpu_providers_options(monkeypatch, tmp_path):
    from google.protobuf import text_format

    from hotwire.proto import model_config_pb2 as mc
    from hotwire.server.model_config import model_parameters
    from hotwire.server.runner import placements

    pretend_providers(monkeypatch, "TensorrtExecutionProvider", "CUDAExecutionProvider")
    config = text_format.Parse(GPU_CONFIG, mc.ModelConfig())
    where = placements(config.instance_group[0], model_parameters(config).gpu, tmp_path, config)
    assert [p.label for p in where] == ["gpu:1", "gpu:1"]
    providers = dict(where[0].providers)
    assert list(providers) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers["CUDAExecutionProvider"] == {
        "device_id": "1",
        "gpu_mem_limit": "2147483648",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
        "enable_cuda_graph": "1",
    }
    assert providers["TensorrtExecutionProvider"] == {
        "device_id": "1",
        "trt_fp16_enable": "1",
        "trt_max_workspace_size": "1073741824",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / "engines"),
        # one profile covering every batch bucket, 1 to max_batch_size
        "trt_profile_min_shapes": "INPUT0:1x16,INPUT1:1x16",
        "trt_profile_opt_shapes": "INPUT0:8x16,INPUT1:8x16",
        "trt_profile_max_shapes": "INPUT0:8x16,INPUT1:8x16",
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('parameters { key: "gpu_mem_limit" value: { string_value: "lots" } }', "'gpu_mem_limit': expected"),
        (
            'parameters { key: "arena_extend_strategy" value: { string_value: "2" } }',
            "'arena_extend_strategy': expected one of ['0 or kNextPowerOfTwo', '1 or kSameAsRequested']",
        ),
        (
            'parameters { key: "cudnn_conv_algo_search" value: { string_value: "fast" } }',
            "'cudnn_conv_algo_search': expected one of",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" '
            'parameters { key: "gpu_mem_limt" value: "1" } } ] } }',
            "(cuda): unknown parameters ['gpu_mem_limt']",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "openvino" } ] } }',
            "accelerator 'openvino' is not supported",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
            'parameters { key: "precision_mode" value: "INT8" } } ] } }',
            "precision_mode expected FP32 or FP16, got 'INT8'",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
            'parameters { key: "trt_engine_cache_path" value: "../../outside" } } ] } }',
            "trt_engine_cache_path: expected a path relative to the model's directory, without '..'",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
            'parameters { key: "trt_engine_cache_path" value: "/etc/hotwire" } } ] } }',
            "got '/etc/hotwire'",
        ),
        (
            "optimization { cuda { graph_spec [ { batch_size: 8 } ] } }",
            "graph_spec is set but graphs is false",
        ),
        ("optimization { cuda { graphs: true } }", "asks for CUDA graphs (optimization.cuda.graphs)"),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }',
            "asks for TensorRT, which need KIND_GPU",
        ),
    ],
)
def test_a_malformed_or_unplaceable_gpu_setting_fails_that_models_load_naming_it(
    tmp_path, running_server, stub_for, setting, message
):
    """Read on every machine, whatever the instance kind: a typo is found on the CPU box too."""
    write_model(
        tmp_path, "bad", add_sub(), f"max_batch_size: 8\ninstance_group [ {{ kind: KIND_CPU }} ]\n{setting}"
    )
    write_model(tmp_path, "good", add_sub(), "max_batch_size: 8")
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="good")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="bad")).ready
    assert message in server.app.registry.entry("bad").reason()


@pytest.mark.skipif(HAS_CUDA, reason="this machine's CUDA provider starts")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_cuda_provider_that_cannot_start_fails_kind_gpu_and_kind_auto_says_it_runs_on_the_cpu(
    tmp_path, running_server, stub_for, monkeypatch, caplog
):
    """onnxruntime, asked for a provider it cannot start, warns and runs on the CPU: KIND_GPU must not."""
    pretend_providers(monkeypatch, "CUDAExecutionProvider")
    write_model(tmp_path, "on_gpu", add_sub(), "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU } ]")
    write_model(tmp_path, "auto", add_sub(), "max_batch_size: 8\ninstance_group [ { kind: KIND_AUTO } ]")
    write_model(
        tmp_path,
        "trt",
        add_sub(),
        "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU } ]\noptimization { execution_accelerators "
        '{ gpu_execution_accelerator [ { name: "tensorrt" } ] } }',
    )
    with caplog.at_level("INFO", logger="hotwire.server.runner"):
        server = running_server(tmp_path)
    stub = stub_for(server)
    reason = server.app.registry.entry("on_gpu").reason()
    assert "could not start CUDAExecutionProvider on device 0" in reason and "does not fall back" in reason
    assert "has no TensorrtExecutionProvider" in server.app.registry.entry("trt").reason()
    assert stub.ModelReady(pb.ModelReadyRequest(name="auto")).ready
    assert server.app.registry.route("auto").instances[0].placement.label == "cpu"
    choices = [r for r in caplog.records if getattr(r, "event", None) == "kind_auto_placement"]
    assert [r.placement for r in choices] == ["cpu"], caplog.text
    response = stub.ModelInfer(simple_request("auto"))
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], np.float32), 3.0)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu with the CUDA provider and a GPU")
def test_cuda_graph_buckets_give_cpu_onnxruntimes_results_at_every_batch_size(
    tmp_path, running_server, stub_for
):
    from onnx_models import ort_reference, simple_inputs

    write_model(
        tmp_path,
        "graphs",
        add_sub(),
        "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU } ]\n"
        "dynamic_batching { preferred_batch_size: [ 4 ] }\noptimization { cuda { graphs: true } }",
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert server.app.registry.route("graphs").instances[0].graphs is not None
    for rows in range(1, 9):
        feeds = simple_inputs(rows, seed=rows)
        request = pb.ModelInferRequest(model_name="graphs")
        for name, value in feeds.items():
            request.inputs.add(name=name, datatype="FP32", shape=value.shape)
            request.raw_input_contents.append(value.tobytes())
        response = stub.ModelInfer(request)
        expected = ort_reference(add_sub(), feeds)
        for output, raw in zip(response.outputs, response.raw_output_contents):
            got = np.frombuffer(raw, np.float32).reshape(output.shape)
            np.testing.assert_allclose(got, expected[output.name], rtol=1e-6)


def test_an_instance_group_without_a_count_has_one_instance_and_a_negative_count_is_refused(
    tmp_path, running_server, stub_for
):
    write_model(tmp_path, "unset", add_sub(), "max_batch_size: 8\ninstance_group [ { kind: KIND_CPU } ]")
    write_model(tmp_path, "negative", add_sub(), "max_batch_size: 8\ninstance_group [ { count: -2 } ]")
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert len(server.app.registry.route("unset").instances) == 1
    config = stub.ModelConfig(pb.ModelConfigRequest(name="unset")).config
    assert [group.count for group in config.instance_group] == [1]
    assert "count -2 must be >= 1" in server.app.registry.entry("negative").reason()
