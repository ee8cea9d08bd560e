"""The committed stubs in ``proto/`` match their .proto sources and speak tritonclient's wire format."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from packaging.requirements import Requirement
from packaging.version import Version

from hotwire.proto import _pool, grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2
from hotwire.proto.generate import GRPCIO_TOOLS, OUTPUTS, generate, installed_grpcio_tools

tc_service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
tc_service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
tc_model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
SERVICE = "inference.GRPCInferenceService"
_GRPC_GENERATED = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'$", re.MULTILINE)
_PROTOBUF_GENCODE = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)
_RUNTIME_CHECK = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),"
)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (it is in the test extra)")
    out = tmp_path_factory.mktemp("stubs")
    written = generate(out)
    assert sorted(p.name for p in written) == sorted(OUTPUTS)
    return out


# --------------------------------------------------------------------------- generation


def test_committed_stubs_exist() -> None:
    for name in OUTPUTS:
        assert (PROTO_DIR / name).is_file(), f"missing {name}; run python -m hotwire.proto.generate"
    assert not (PROTO_DIR / "model_config_pb2_grpc.py").exists()


def test_committed_stubs_are_byte_identical_to_regenerated(regenerated: pathlib.Path) -> None:
    tools = installed_grpcio_tools()
    if tools != GRPCIO_TOOLS:
        pytest.skip(f"needs grpcio-tools=={GRPCIO_TOOLS} (the test extra pins it), found {tools}")
    committed = {name: (PROTO_DIR / name).read_bytes() for name in OUTPUTS}
    fresh = {name: (regenerated / name).read_bytes() for name in OUTPUTS}
    stale = [name for name in OUTPUTS if committed[name] != fresh[name]]
    assert not stale, f"stale generated stubs {stale}: run python -m hotwire.proto.generate"


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _requirement(requirements: list[str], name: str) -> Requirement:
    (found,) = [r for r in map(Requirement, requirements) if r.name == name]
    return found


def _floor(requirement: Requirement) -> Version:
    (floor,) = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return floor


def test_committed_stubs_come_from_the_pinned_grpcio_tools() -> None:
    """The stubs' toolchain fits the declared ranges, so every environment pip resolves can import them."""
    project = _pyproject()["project"]
    dependencies = project["dependencies"]
    grpc_stub = (PROTO_DIR / "grpc_service_pb2_grpc.py").read_text()
    (generated,) = _GRPC_GENERATED.findall(grpc_stub)
    assert generated == GRPCIO_TOOLS
    # The generated servicer raises on import under an older grpcio than the one that generated it.
    assert _floor(_requirement(dependencies, "grpcio")) >= Version(generated)
    assert f"grpcio-tools=={GRPCIO_TOOLS}" in project["optional-dependencies"]["test"]

    protobuf = _requirement(dependencies, "protobuf")
    for name in ("grpc_service_pb2.py", "model_config_pb2.py"):
        text = (PROTO_DIR / name).read_text()
        (gencode,) = _PROTOBUF_GENCODE.findall(text)
        (checked,) = _RUNTIME_CHECK.findall(text)
        assert ".".join(checked) == gencode, name
        # A runtime older than the gencode refuses it; a runtime one major newer still accepts it.
        assert _floor(protobuf) >= Version(gencode), name
        assert f"<{Version(gencode).major + 2}" in str(protobuf.specifier), name
        assert gencode.startswith("6."), (
            f"{name}: gencode {gencode} would not run on protobuf 6 (tritonclient)"
        )


def test_generation_is_deterministic(regenerated: pathlib.Path, tmp_path: pathlib.Path) -> None:
    generate(tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (regenerated / name).read_bytes(), name


def test_committed_descriptors_match_proto_sources(regenerated: pathlib.Path) -> None:
    """Toolchain-independent check: the descriptors embedded in the stubs match the .proto files."""
    pattern = re.compile(rb"AddSerializedFile\((b'.*?')\)\n", re.DOTALL)
    for name in ("grpc_service_pb2.py", "model_config_pb2.py"):
        committed = pattern.search((PROTO_DIR / name).read_bytes())
        fresh = pattern.search((regenerated / name).read_bytes())
        assert committed and fresh
        assert committed.group(1) == fresh.group(1), f"{name} is stale: run python -m hotwire.proto.generate"


def test_stubs_live_in_private_pool() -> None:
    assert grpc_service_pb2.DESCRIPTOR.pool is _pool.POOL
    assert model_config_pb2.DESCRIPTOR.pool is _pool.POOL
    assert _pool.POOL is not descriptor_pool.Default()
    # tritonclient's own stubs own the default pool's "inference" package; both coexist.
    assert tc_service_pb2.DESCRIPTOR.pool is descriptor_pool.Default()
    assert grpc_service_pb2.ModelInferRequest is not tc_service_pb2.ModelInferRequest
    find = _pool.POOL.FindMessageTypeByName
    assert find("inference.ModelInferRequest") is grpc_service_pb2.ModelInferRequest.DESCRIPTOR
    assert find("inference.ModelConfig") is model_config_pb2.ModelConfig.DESCRIPTOR


# ------------------------------------------------------------------ wire compatibility


def _as_proto(descriptor) -> descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto:
    proto = (
        descriptor_pb2.EnumDescriptorProto()
        if hasattr(descriptor, "values_by_name")
        else descriptor_pb2.DescriptorProto()
    )
    descriptor.CopyToProto(proto)
    return proto


def _walk(file_descriptor):
    """Yield (full name, kind, descriptor) for every message and enum of a file, nested ones included."""
    for enum in file_descriptor.enum_types_by_name.values():
        yield enum.full_name, "enum", enum
    for message in file_descriptor.message_types_by_name.values():
        yield message.full_name, "message", message
        yield from _walk_message(message)


def _walk_message(message):
    for enum in message.enum_types:
        yield enum.full_name, "enum", enum
    for nested in message.nested_types:
        yield nested.full_name, "message", nested
        yield from _walk_message(nested)


def _triton_types():
    for module in (tc_model_config_pb2, tc_service_pb2):
        yield from _walk(module.DESCRIPTOR)


TRITON_TYPES = sorted((name, kind) for name, kind, _ in _triton_types())


def test_triton_type_inventory_is_complete() -> None:
    names = {name for name, _ in TRITON_TYPES}
    # A few anchors, so an accidentally empty walk cannot pass the parametrized tests vacuously.
    for expected in (
        "inference.ModelInferRequest.InferInputTensor",
        "inference.ModelInferRequest.ParametersEntry",
        "inference.ModelConfig",
        "inference.ModelInput.Format",
        "inference.ModelOptimizationPolicy.Cuda.GraphSpec.LowerBound",
        "inference.DataType",
        "inference.LogSettingsRequest.SettingValue",
    ):
        assert expected in names


@pytest.mark.parametrize(("full_name", "kind"), TRITON_TYPES)
def test_type_matches_tritonclient(full_name: str, kind: str) -> None:
    if kind == "enum":
        theirs = _as_proto(descriptor_pool.Default().FindEnumTypeByName(full_name))
        ours = _as_proto(_pool.POOL.FindEnumTypeByName(full_name))
        assert {v.name: v.number for v in ours.value} == {v.name: v.number for v in theirs.value}
        return

    theirs = _as_proto(descriptor_pool.Default().FindMessageTypeByName(full_name))
    ours = _as_proto(_pool.POOL.FindMessageTypeByName(full_name))
    assert ours.options.map_entry == theirs.options.map_entry
    our_fields = {f.name: f for f in ours.field}
    for field in theirs.field:
        assert field.name in our_fields, f"{full_name}.{field.name} missing"
        mine = our_fields[field.name]
        where = f"{full_name}.{field.name}"
        assert mine.number == field.number, where
        assert mine.type == field.type, where
        assert mine.label == field.label, where
        assert mine.type_name == field.type_name, where
        assert mine.HasField("oneof_index") == field.HasField("oneof_index"), where
        if field.HasField("oneof_index"):
            assert ours.oneof_decl[mine.oneof_index].name == theirs.oneof_decl[field.oneof_index].name, where
    # Field numbers we add on top of tritonclient's must not collide with theirs.
    their_numbers = {f.number: f.name for f in theirs.field}
    for field in ours.field:
        if field.number in their_numbers:
            assert their_numbers[field.number] == field.name, f"{full_name}: number {field.number} reused"


def _methods(file_descriptor):
    service = file_descriptor.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    return {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
        for m in service.methods
    }


def test_service_has_every_tritonclient_method() -> None:
    ours = _methods(grpc_service_pb2.DESCRIPTOR)
    theirs = _methods(tc_service_pb2.DESCRIPTOR)
    for name, signature in theirs.items():
        assert ours.get(name) == signature, name
    assert ours["ModelStreamInfer"] == (
        "inference.ModelInferRequest",
        "inference.ModelStreamInferResponse",
        True,
        True,
    )
    for name in ("TraceSetting", "LogSettings", "CudaSharedMemoryRegister", "RepositoryModelLoad"):
        assert name in ours


class _RecordingChannel:
    """Stands in for a grpc.Channel: records the method paths a generated stub registers."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _record(self, kind: str):
        def register(path: str, *args, **kwargs):
            self.paths[path] = kind
            return object()

        return register

    def __getattr__(self, kind: str):
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(kind)
        raise AttributeError(kind)


def test_grpc_stub_paths_match_tritonclient() -> None:
    ours, theirs = _RecordingChannel(), _RecordingChannel()
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(ours)
    tc_service_pb2_grpc.GRPCInferenceServiceStub(theirs)
    for path, kind in theirs.paths.items():
        assert ours.paths.get(path) == kind, path
    assert ours.paths[f"/{SERVICE}/ModelStreamInfer"] == "stream_stream"
    assert ours.paths[f"/{SERVICE}/ModelInfer"] == "unary_unary"


# -------------------------------------------------------------------------- round trips


def _fill_request(pb, raw: list[bytes]):
    request = pb.ModelInferRequest(model_name="classifier", model_version="3", id="req-42")
    request.parameters["priority"].int64_param = 7
    request.parameters["sequence_start"].bool_param = True
    request.parameters["tag"].string_param = "a/b"
    first = request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 3])
    first.parameters["shared_memory_region"].string_param = "none"
    request.inputs.add(name="INPUT1", datatype="BYTES", shape=[1])
    requested = request.outputs.add(name="OUTPUT0")
    requested.parameters["classification"].int64_param = 2
    request.raw_input_contents.extend(raw)
    return request


RAW = [np.arange(6, dtype=np.float32).tobytes(), b"\x05\x00\x00\x00hello"]


def _check_request(request) -> None:
    assert request.model_name == "classifier"
    assert request.model_version == "3"
    assert request.id == "req-42"
    assert request.parameters["priority"].int64_param == 7
    assert request.parameters["sequence_start"].bool_param is True
    assert request.parameters["tag"].string_param == "a/b"
    assert request.parameters["tag"].WhichOneof("parameter_choice") == "string_param"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("INPUT0", "FP32", [2, 3]),
        ("INPUT1", "BYTES", [1]),
    ]
    assert request.inputs[0].parameters["shared_memory_region"].string_param == "none"
    assert request.outputs[0].name == "OUTPUT0"
    assert request.outputs[0].parameters["classification"].int64_param == 2
    assert list(request.raw_input_contents) == RAW
    np.testing.assert_array_equal(
        np.frombuffer(request.raw_input_contents[0], dtype=np.float32), np.arange(6, dtype=np.float32)
    )


def test_infer_request_ours_to_tritonclient() -> None:
    wire = _fill_request(grpc_service_pb2, RAW).SerializeToString()
    theirs = tc_service_pb2.ModelInferRequest.FromString(wire)
    _check_request(theirs)
    expected = _fill_request(tc_service_pb2, RAW)
    assert theirs == expected
    # Equal bytes also rule out anything tritonclient kept only as unknown fields.
    assert theirs.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_infer_request_tritonclient_to_ours() -> None:
    wire = _fill_request(tc_service_pb2, RAW).SerializeToString()
    ours = grpc_service_pb2.ModelInferRequest.FromString(wire)
    _check_request(ours)
    assert ours == _fill_request(grpc_service_pb2, RAW)
    assert ours.SerializeToString(deterministic=True) == tc_service_pb2.ModelInferRequest.FromString(
        wire
    ).SerializeToString(deterministic=True)


def test_infer_response_and_stream_response_round_trip() -> None:
    response = grpc_service_pb2.ModelInferResponse(model_name="classifier", model_version="1", id="r")
    response.outputs.add(name="OUTPUT0", datatype="INT64", shape=[1, 2])
    response.outputs[0].parameters["binary_data_size"].int64_param = 16
    response.raw_output_contents.append(np.array([1, -2], dtype=np.int64).tobytes())
    stream = grpc_service_pb2.ModelStreamInferResponse(infer_response=response)
    theirs = tc_service_pb2.ModelStreamInferResponse.FromString(stream.SerializeToString())
    assert theirs.error_message == ""
    out = theirs.infer_response
    assert (out.model_name, out.model_version, out.id) == ("classifier", "1", "r")
    assert list(out.outputs[0].shape) == [1, 2]
    assert out.outputs[0].parameters["binary_data_size"].int64_param == 16
    np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[0], dtype=np.int64), [1, -2])
    back = grpc_service_pb2.ModelStreamInferResponse.FromString(theirs.SerializeToString())
    assert back == stream


def test_statistics_and_metadata_round_trip() -> None:
    stats = grpc_service_pb2.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", inference_count=10, execution_count=4)
    model.inference_stats.success.count = 10
    model.inference_stats.success.ns = 12345
    model.batch_stats.add(batch_size=8).compute_infer.ns = 99
    model.memory_usage.add(type="GPU", id=0, byte_size=1 << 20)
    theirs = tc_service_pb2.ModelStatisticsResponse.FromString(stats.SerializeToString())
    assert theirs.model_stats[0].inference_stats.success.ns == 12345
    assert theirs.model_stats[0].batch_stats[0].compute_infer.ns == 99
    assert theirs.model_stats[0].memory_usage[0].byte_size == 1 << 20

    metadata = tc_service_pb2.ModelMetadataResponse(name="m", versions=["1"], platform="onnxruntime_onnx")
    metadata.inputs.add(name="x", datatype="FP32", shape=[-1, 16])
    ours = grpc_service_pb2.ModelMetadataResponse.FromString(metadata.SerializeToString())
    assert (ours.inputs[0].name, list(ours.inputs[0].shape)) == ("x", [-1, 16])
