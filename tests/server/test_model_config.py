"""ORT session options come from config.pbtxt (Triton's ORT backend keys and hotwire's), with small-machine defaults."""

from __future__ import annotations

import os

import pytest
from google.protobuf import text_format
from hotwire.proto import model_config_pb2 as mc
from hotwire.server.errors import ModelLoadError
from hotwire.server.model_config import default_intra_op_threads, ignored_fields, ort_options
from hotwire.server.runner import session_options


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_defaults_leave_cores_for_the_event_loop_and_never_spin():
    options = ort_options(config('instance_group [ { count: 1 } ]'))
    assert options.intra_op_threads == max(1, (os.cpu_count() or 1) // 2)
    assert options.inter_op_threads == 1 and options.allow_spinning is False and options.graph_optimization == "all"
    so = session_options(options)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_triton_parameters_and_graph_level_are_honoured():
    options = ort_options(config('''
        parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "allow_spinning" value: { string_value: "true" } }
        parameters { key: "enable_mem_arena" value: { string_value: "false" } }
        optimization { graph { level: -1 } }'''))
    assert (options.intra_op_threads, options.inter_op_threads) == (3, 2)
    assert options.parallel_execution and options.allow_spinning and not options.enable_mem_arena
    assert options.graph_optimization == "basic"
    so = session_options(options)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert ort_options(config('optimization { graph { level: 1 } }')).graph_optimization == "extended"
    assert ort_options(config('parameters { key: "graph_optimization_level" value: { string_value: "disable" } }'))\
        .graph_optimization == "disable"


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("intra_op_thread_count", "many", "expected an integer"),
    ("allow_spinning", "maybe", "expected true/false"),
    ("graph_optimization_level", "max", "expected one of"),
])
def test_bad_parameters_are_load_errors_naming_the_key(key, value, expected):
    with pytest.raises(ModelLoadError, match=f"'{key}'.*{expected}"):
        ort_options(config(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'))


def test_intra_op_threads_are_shared_among_instances():
    assert default_intra_op_threads(instances=64) == 1


def test_fields_hotwire_ignores_are_listed_and_those_it_honours_are_not():
    assert set(ignored_fields(config('''
        name: "m" max_batch_size: 4 response_cache { enable: true }
        model_transaction_policy { decoupled: true }
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] format: FORMAT_NCHW allow_ragged_batch: true } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
        instance_group [ { count: 1 kind: KIND_CPU },
                         { count: 2 kind: KIND_GPU gpus: [ 0 ] rate_limiter { } } ]
        optimization { graph { level: 1 } cuda { graphs: true } }
        dynamic_batching { max_queue_delay_microseconds: 100 }
        parameters { key: "execution" value: { string_value: "auto" } }'''))) == {
        "input[0].format", "output[0].label_filename", "optimization.cuda", "instance_group[1].rate_limiter",
        "model_transaction_policy", "response_cache"}
