"""config.pbtxt files written for Triton parse into our ModelConfig, and tritonclient reads the result."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from hotwire.proto import grpc_service_pb2
from hotwire.proto import model_config_pb2 as mc

tc_service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
tc_model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

RESNET = """
name: "resnet50"
platform: "onnxruntime_onnx"
max_batch_size: 32
version_policy: { specific: { versions: [1, 3] } }
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape: { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 5000
    allow_timeout_override: true
    max_queue_size: 64
  }
  priority_queue_policy {
    key: 2
    value: { timeout_action: REJECT max_queue_size: 8 }
  }
}
instance_group [
  {
    name: "gpu_group"
    count: 2
    kind: KIND_GPU
    gpus: [ 0, 1 ]
    rate_limiter { resources [ { name: "R1" count: 4 } ] priority: 2 }
  },
  {
    count: 1
    kind: KIND_CPU
  }
]
optimization {
  graph { level: 1 }
  priority: PRIORITY_MAX
  cuda {
    graphs: true
    graph_spec [
      {
        batch_size: 8
        input { key: "INPUT0" value: { dim: [ 3, 224, 224 ] } }
      }
    ]
  }
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
  }
  input_pinned_memory { enable: false }
  output_pinned_memory { enable: true }
  gather_kernel_buffer_threshold: 2
  eager_batching: true
}
parameters { key: "x" value: { string_value: "y" } }
parameters: { key: "intra_op_thread_count" value: { string_value: "4" } }
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 2
    inputs {
      key: "INPUT0"
      value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true }
    }
  }
]
response_cache { enable: true }
model_transaction_policy { decoupled: false }
model_repository_agents {
  agents [ { name: "checksum" parameters { key: "MD5:1/model.onnx" value: "abc" } } ]
}
default_model_filename: "model.onnx"
cc_model_filenames { key: "8.6" value: "model_sm86.onnx" }
metric_tags { key: "team" value: "vision" }
backend: "onnxruntime"
"""

SEQUENCE = """
name: "stateful"
backend: "onnxruntime"
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 100 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [
    {
      input_name: "INPUT_STATE"
      output_name: "OUTPUT_STATE"
      data_type: TYPE_INT32
      dims: [ -1 ]
      initial_state: { name: "init" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }
      use_same_buffer_for_input_output: true
    }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] allow_ragged_batch: true optional: false } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
batch_input [
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "ACC" data_type: TYPE_FP32 source_input: "INPUT" }
]
batch_output [ { target_name: "OUTPUT" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" } ]
version_policy: { latest: { num_versions: 2 } }
"""

ENSEMBLE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 0
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "SCORES" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "tokenizer"
      model_version: -1
      input_map { key: "TEXT" value: "TEXT" }
      output_map { key: "IDS" value: "ids" }
    },
    {
      model_name: "classifier"
      model_version: 2
      input_map { key: "IDS" value: "ids" }
      output_map { key: "SCORES" value: "SCORES" }
    }
  ]
}
version_policy: { all {} }
"""

# Fields newer than tritonclient 2.41.0's stubs (in current tritonclient and Triton's public
# model_config.proto).
RECENT = """
name: "recent"
backend: "python"
runtime: "model.py"
input [ { name: "I" data_type: TYPE_BF16 dims: [ 2 ] is_non_linear_format_io: true } ]
output [ { name: "O" data_type: TYPE_BF16 dims: [ 2 ] is_non_linear_format_io: true } ]
model_metrics {
  metric_control [
    {
      metric_identifier { family: "nv_inference_first_response_histogram_ms" }
      histogram_options { buckets: [ -5.0, -2, 0, 3.5, 5 ] }
    }
  ]
}
"""


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_realistic_config_parses() -> None:
    config = parse(RESNET)
    assert config.name == "resnet50"
    assert config.max_batch_size == 32
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    db = config.dynamic_batching
    assert list(db.preferred_batch_size) == [4, 8]
    assert db.max_queue_delay_microseconds == 100
    assert db.priority_levels == 2
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.DELAY
    assert db.default_queue_policy.max_queue_size == 64
    assert db.priority_queue_policy[2].timeout_action == mc.ModelQueuePolicy.REJECT

    gpu, cpu = config.instance_group
    assert (gpu.count, gpu.kind, list(gpu.gpus)) == (2, mc.ModelInstanceGroup.KIND_GPU, [0, 1])
    assert gpu.rate_limiter.resources[0].count == 4
    assert cpu.kind == mc.ModelInstanceGroup.KIND_CPU

    assert config.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(config.version_policy.specific.versions) == [1, 3]

    (inp,) = config.input
    assert inp.format == mc.ModelInput.FORMAT_NCHW
    assert inp.data_type == mc.TYPE_FP32
    assert list(inp.dims) == [3, 224, 224]
    assert list(inp.reshape.shape) == [1, 3, 224, 224]
    assert config.output[0].label_filename == "labels.txt"

    opt = config.optimization
    (trt,) = opt.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert trt.parameters["precision_mode"] == "FP16"
    assert opt.priority == mc.ModelOptimizationPolicy.PRIORITY_MAX
    assert list(opt.cuda.graph_spec[0].input["INPUT0"].dim) == [3, 224, 224]
    assert opt.output_pinned_memory.enable and opt.eager_batching
    assert opt.gather_kernel_buffer_threshold == 2

    assert config.parameters["x"].string_value == "y"
    assert config.parameters["intra_op_thread_count"].string_value == "4"
    (warmup,) = config.model_warmup
    assert (warmup.name, warmup.batch_size, warmup.count) == ("zeros", 8, 2)
    assert warmup.inputs["INPUT0"].WhichOneof("input_data_type") == "zero_data"
    assert config.response_cache.enable
    assert config.model_repository_agents.agents[0].parameters["MD5:1/model.onnx"] == "abc"
    assert config.cc_model_filenames["8.6"] == "model_sm86.onnx"
    assert config.metric_tags["team"] == "vision"
    assert config.backend == "onnxruntime"


def test_sequence_batching_config_parses() -> None:
    config = parse(SEQUENCE)
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    sb = config.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "oldest"
    assert list(sb.oldest.preferred_batch_size) == [2, 4]
    kinds = [ci.control[0].kind for ci in sb.control_input]
    assert kinds == [
        mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START,
        mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY,
        mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID,
    ]
    assert list(sb.control_input[0].control[0].fp32_false_true) == [0.0, 1.0]
    assert sb.state[0].initial_state[0].zero_data
    assert config.batch_input[0].kind == mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT
    assert config.batch_output[0].kind == mc.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE
    assert config.version_policy.latest.num_versions == 2


def test_ensemble_config_parses() -> None:
    config = parse(ENSEMBLE)
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tokenizer", "classifier"]
    assert steps[0].model_version == -1
    assert steps[1].input_map["IDS"] == "ids"
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert config.input[0].data_type == mc.TYPE_STRING


def test_recent_fields_parse() -> None:
    config = parse(RECENT)
    assert config.runtime == "model.py"
    assert config.input[0].data_type == mc.TYPE_BF16
    assert config.input[0].is_non_linear_format_io and config.output[0].is_non_linear_format_io
    control = config.model_metrics.metric_control[0]
    assert control.metric_identifier.family == "nv_inference_first_response_histogram_ms"
    assert list(control.histogram_options.buckets) == [-5.0, -2.0, 0.0, 3.5, 5.0]


_TC_HAS_RECENT = "is_non_linear_format_io" in tc_model_config_pb2.ModelInput.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize(
    "text",
    [
        RESNET,
        SEQUENCE,
        ENSEMBLE,
        pytest.param(
            RECENT,
            marks=pytest.mark.skipif(
                not _TC_HAS_RECENT, reason="this tritonclient's stubs predate these fields"
            ),
        ),
    ],
    ids=["resnet", "sequence", "ensemble", "recent"],
)
def test_model_config_response_reads_identically_in_tritonclient(text: str) -> None:
    ours = grpc_service_pb2.ModelConfigResponse(config=parse(text))
    theirs = tc_service_pb2.ModelConfigResponse.FromString(ours.SerializeToString())
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    back = grpc_service_pb2.ModelConfigResponse.FromString(theirs.SerializeToString())
    assert back == ours


def test_text_format_round_trip_is_lossless() -> None:
    for text in (RESNET, SEQUENCE, ENSEMBLE, RECENT):
        config = parse(text)
        assert parse(text_format.MessageToString(config)) == config
