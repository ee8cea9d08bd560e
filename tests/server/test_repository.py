"""Model repository: Triton's layout and config.pbtxt load unchanged, partial configs are completed from the
ONNX graph, version policies select versions, and a broken model never stops the others."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2 as mc
from hotwire.server import repository
from onnx_models import add_sub, identity_all_types, write_model

TRITON_STYLE_CONFIG = """
# Written the way Triton users write it.
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
optimization { graph { level: 1 } }
model_warmup [ {
  name: "zeros" batch_size: 1
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
  inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
} ]
"""


def infer_simple(stub, version: str = "") -> tuple[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name="simple", model_version=version)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    response = stub.ModelInfer(request, timeout=10)
    return response.model_version, np.frombuffer(response.raw_output_contents[0], np.float32)


def test_triton_style_repository_loads_with_specific_versions(tmp_path, running_server, stub_for):
    for version in (1, 2, 3):
        write_model(tmp_path, "simple", add_sub(offset=float(version)), TRITON_STYLE_CONFIG, version=version)
    server = running_server(tmp_path)
    stub = stub_for(server)
    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple")).config
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert (
        config.instance_group[0].count == 2
        and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    )
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="simple")).versions == ["1", "3"]
    assert infer_simple(stub) == ("3", pytest.approx(np.full(16, 2.0 + 3)))
    version, out = infer_simple(stub, "1")
    assert version == "1" and np.all(out == 3.0)
    with pytest.raises(grpc.RpcError) as caught:
        infer_simple(stub, "2")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    instances = server.app.registry.route("simple").instances
    assert len(instances) == 2
    assert instances[0].session.get_session_options().intra_op_num_threads == 1


def test_config_less_model_is_completed_from_the_onnx_graph(tmp_path, running_server, stub_for):
    write_model(tmp_path, "identity", identity_all_types(dims=(3,)))
    stub = stub_for(running_server(tmp_path))
    config = stub.ModelConfig(pb.ModelConfigRequest(name="identity")).config
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32  # dynamic first dimension: batching enabled with the default size
    assert config.HasField("dynamic_batching")
    by_name = {t.name: t for t in config.input}
    assert mc.DataType.Name(by_name["in_FP16"].data_type) == "TYPE_FP16"
    assert mc.DataType.Name(by_name["in_BYTES"].data_type) == "TYPE_STRING"
    assert list(by_name["in_INT64"].dims) == [3]
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="identity"))
    assert [t.name for t in metadata.inputs][:2] == ["in_BOOL", "in_UINT8"]
    assert list(metadata.inputs[0].shape) == [-1, 3]


def test_partial_config_is_completed_and_kept(tmp_path, running_server, stub_for):
    write_model(
        tmp_path, "simple", add_sub(), 'max_batch_size: 2\ninput [ { name: "INPUT1" dims: [ 16 ] } ]\n'
    )
    stub = stub_for(running_server(tmp_path))
    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple")).config
    assert config.max_batch_size == 2
    assert sorted(t.name for t in config.input) == ["INPUT0", "INPUT1"]
    assert all(t.data_type == mc.TYPE_FP32 for t in config.input)
    assert not config.HasField("dynamic_batching")  # given max_batch_size: batching stays as configured


def test_explicit_max_batch_size_zero_takes_no_batch_dimension(tmp_path, running_server, stub_for):
    write_model(tmp_path, "fixed", add_sub(batched=False), "max_batch_size: 0")
    stub = stub_for(running_server(tmp_path))
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="fixed"))
    assert list(metadata.inputs[0].shape) == [16]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", ["3"]),
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { all: {} }", ["1", "2", "3"]),
        ("version_policy: { specific: { versions: [2] } }", ["2"]),
    ],
)
def test_version_policy_selects_versions(tmp_path, running_server, stub_for, policy, expected):
    for version in (1, 2, 3):
        write_model(tmp_path, "simple", add_sub(offset=float(version)), policy, version=version)
    stub = stub_for(running_server(tmp_path))
    assert list(stub.ModelMetadata(pb.ModelMetadataRequest(name="simple")).versions) == expected
    assert infer_simple(stub)[0] == expected[-1]


def test_non_integer_version_directories_are_skipped_with_a_warning(tmp_path, caplog):
    write_model(tmp_path, "simple", add_sub(), version=1)
    (tmp_path / "simple" / "backup").mkdir()
    (tmp_path / "simple" / "2-old").mkdir()
    with caplog.at_level(logging.WARNING, logger="hotwire.server.repository"):
        sources = repository.scan(tmp_path)
    assert list(sources["simple"].versions) == [1]
    assert "'backup'" in caplog.text and "'2-old'" in caplog.text


def test_broken_models_are_reported_and_never_stop_the_others(tmp_path, running_server, stub_for, caplog):
    write_model(tmp_path, "good", add_sub())
    write_model(tmp_path, "corrupt", b"\x08\x01garbage")
    write_model(tmp_path, "bad_config", add_sub(), "max_batch_size: [not a number")
    write_model(
        tmp_path, "wrong_dims", add_sub(), 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 7 ] } ]'
    )
    write_model(
        tmp_path, "wrong_type", add_sub(), 'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]'
    )
    write_model(tmp_path, "not_onnx", add_sub(), 'platform: "tensorrt_plan"')
    write_model(tmp_path, "stateful", add_sub(), "max_batch_size: 8\nsequence_batching { }")
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.ERROR):
        server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="good")).ready
    assert not stub.ServerReady(pb.ServerReadyRequest()).ready  # strict readiness: every model must be ready
    expected_reasons = {
        "corrupt": "could not load",
        "bad_config": "config.pbtxt",
        "wrong_dims": "dims [7]",
        "wrong_type": "TYPE_INT32",
        "not_onnx": "tensorrt_plan",
        "stateful": "sequence_batching is not supported",
        "empty": "no loadable version",
    }
    for name, reason in expected_reasons.items():
        assert not stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
        assert name in caplog.text
        request = pb.ModelInferRequest(model_name=name)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason in caught.value.details(), caught.value.details()
    request = pb.ModelInferRequest(model_name="good")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    assert np.all(np.frombuffer(stub.ModelInfer(request).raw_output_contents[1], np.float32) == 0.0)


def test_an_unexpected_failure_while_loading_fails_that_model_only(
    tmp_path, running_server, stub_for, monkeypatch
):
    from hotwire.server import registry

    real_load_version = registry.load_version

    async def failing_for_boom(source, *args, **kwargs):  # e.g. a MemoryError deep inside a kernel
        if source.name == "boom":
            raise MemoryError("cannot allocate 122 TiB")
        return await real_load_version(source, *args, **kwargs)

    monkeypatch.setattr(registry, "load_version", failing_for_boom)
    for name in ("a", "boom", "z"):  # loaded in name order: one before and one after the failure
        write_model(tmp_path, name, add_sub())
    stub = stub_for(running_server(tmp_path))
    assert stub.ModelReady(pb.ModelReadyRequest(name="a")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="z")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="boom")).ready
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="boom"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "MemoryError: cannot allocate" in caught.value.details()


def test_select_versions_policies_directly():
    policy = mc.ModelVersionPolicy()
    assert repository.select_versions(policy, [1, 5, 3]) == [5]
    policy.latest.num_versions = 2
    assert repository.select_versions(policy, [1, 3, 5]) == [3, 5]
    policy.specific.versions.extend([1, 4])
    assert repository.select_versions(policy, [1, 3, 5]) == [1]
    policy.all.SetInParent()
    assert repository.select_versions(policy, [1, 3, 5]) == [1, 3, 5]


def _unreadable_configs(root) -> None:
    write_model(root, "good", add_sub())
    write_model(root, "latin1", add_sub())
    (root / "latin1" / "config.pbtxt").write_bytes(b'name: "latin1" # caf\xe9\n')
    write_model(root, "dir_config", add_sub())
    (root / "dir_config" / "config.pbtxt").mkdir()


@pytest.mark.parametrize("mode", ["none", "poll", "explicit"])
def test_an_unreadable_config_fails_only_its_model_in_every_mode(tmp_path, running_server, stub_for, mode):
    """A non-UTF-8 config.pbtxt, or a directory named config.pbtxt, used to stop the whole server at start
    (and every later poll); now each fails its own model with the reason, and the rest serve."""
    _unreadable_configs(tmp_path)
    extra = {"load_model": ("good", "latin1", "dir_config")} if mode == "explicit" else {}
    server = running_server(tmp_path, model_control_mode=mode, repository_poll_secs=0.2, **extra)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="good")).ready
    rows = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert rows["good"].state == "READY"
    assert rows["latin1"].state == "UNAVAILABLE" and "not UTF-8" in rows["latin1"].reason, rows["latin1"]
    assert rows["dir_config"].state == "UNAVAILABLE" and "cannot be read" in rows["dir_config"].reason
    if mode == "poll":  # polling goes on: a model added later loads
        write_model(tmp_path, "later", add_sub())
        deadline = time.monotonic() + 30
        while not stub.ModelReady(pb.ModelReadyRequest(name="later")).ready:
            assert time.monotonic() < deadline, "the poll never loaded the model added later"
            time.sleep(0.05)
