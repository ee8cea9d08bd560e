"""Config parameters are read and checked in model_config only: ORT session options
(Triton's ORT backend keys and hotwire's, with small-machine defaults), the execution mode, drift monitoring,
the preprocessing declaration and the traffic policy; booleans take one word list and a typo is a load error
naming the parameter."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
from google.protobuf import text_format

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2 as mc
from hotwire.server.errors import InvalidInput, ModelLoadError
from hotwire.server.model_config import (
    DriftParameters,
    default_intra_op_threads,
    ignored_fields,
    model_parameters,
    parse_bool_parameter,
    traffic_policy,
)
from hotwire.server.runner import session_options
from hotwire.server.traffic import GuardPolicy, TrafficPolicy
from onnx_models import add_sub, write_model


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def parameters(**values: str) -> mc.ModelConfig:
    return config(
        "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in values.items())
    )


def ort_options(model_config: mc.ModelConfig):
    return model_parameters(model_config).ort


def test_defaults_leave_cores_for_the_event_loop_and_never_spin():
    options = ort_options(config("instance_group [ { count: 1 } ]"))
    assert options.intra_op_threads == max(1, (os.cpu_count() or 1) // 2)
    assert (
        options.inter_op_threads == 1
        and options.allow_spinning is False
        and options.graph_optimization == "all"
    )
    so = session_options(options)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_triton_parameters_and_graph_level_are_honoured():
    options = ort_options(
        config("""
        parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "allow_spinning" value: { string_value: "true" } }
        parameters { key: "enable_mem_arena" value: { string_value: "false" } }
        optimization { graph { level: -1 } }""")
    )
    assert (options.intra_op_threads, options.inter_op_threads) == (3, 2)
    assert options.parallel_execution and options.allow_spinning and not options.enable_mem_arena
    assert options.graph_optimization == "basic"
    so = session_options(options)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert ort_options(config("optimization { graph { level: 1 } }")).graph_optimization == "extended"
    assert (
        ort_options(
            config('parameters { key: "graph_optimization_level" value: { string_value: "disable" } }')
        ).graph_optimization
        == "disable"
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("intra_op_thread_count", "many", "expected an integer"),
        ("allow_spinning", "maybe", "expected true or false, got 'maybe'"),
        ("enable_mem_pattern", "ture", "expected true or false, got 'ture'"),
        ("graph_optimization_level", "max", "expected one of"),
    ],
)
def test_bad_parameters_are_load_errors_naming_the_key(key, value, expected):
    with pytest.raises(ModelLoadError, match=f"'{key}'.*{expected}"):
        ort_options(config(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'))


def test_intra_op_threads_are_shared_among_instances():
    assert default_intra_op_threads(instances=64) == 1


def test_fields_hotwire_ignores_are_listed_and_those_it_honours_are_not():
    assert set(
        ignored_fields(
            config("""
        name: "m" max_batch_size: 4 response_cache { enable: true }
        model_transaction_policy { decoupled: true }
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] format: FORMAT_NCHW allow_ragged_batch: true } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
        instance_group [ { count: 1 kind: KIND_CPU },
                         { count: 2 kind: KIND_GPU gpus: [ 0 ] rate_limiter { } } ]
        optimization { graph { level: 1 } cuda { graphs: true busy_wait_events: true }
                       execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }
        dynamic_batching { max_queue_delay_microseconds: 100 }
        parameters { key: "execution" value: { string_value: "auto" } }""")
        )
    ) == {
        "input[0].format",
        "output[0].label_filename",
        "optimization.cuda.busy_wait_events",
        "optimization.execution_accelerators.cpu_execution_accelerator",
        "instance_group[1].rate_limiter",
        "model_transaction_policy",
        "response_cache",
    }


# -- the one boolean parser
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" 1 ", True),
        ("yes", True),
        ("On", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_boolean_parameters_take_one_word_list(text, expected):
    assert parse_bool_parameter("drift_monitoring", text) is expected


@pytest.mark.parametrize("text", ["ture", "", "2", "enabled", "t"])
def test_a_boolean_parameter_that_is_no_boolean_is_a_load_error_naming_it(text):
    with pytest.raises(ModelLoadError) as raised:
        parse_bool_parameter("drift_monitoring", text)
    assert str(raised.value) == f"parameters 'drift_monitoring': expected true or false, got '{text}'"


# -- every parameter a version reads
# ------------------------------------------------------------------------------


def test_model_parameters_defaults():
    read = model_parameters(config(""))
    assert read.execution == "auto" and read.preprocess is None
    assert read.drift == DriftParameters(monitoring=False, window_rows=1000, reference_rows=1000)


def test_model_parameters_read_execution_drift_and_preprocess():
    read = model_parameters(
        parameters(
            execution=" Thread ",
            drift_monitoring="on",
            drift_window_rows="80",
            drift_reference_rows="40",
            preprocess="{}",
        )
    )
    assert read.execution == "thread" and read.preprocess == "{}"
    assert read.drift == DriftParameters(monitoring=True, window_rows=80, reference_rows=40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.execution = "inline"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("drift_monitoring", "ture", "expected true or false, got 'ture'"),
        ("drift_window_rows", "many", "expected an integer, got 'many'"),
        ("drift_reference_rows", "0", "expected >= 1, got 0"),
        ("execution", "fast", "expected one of ('auto', 'inline', 'thread'), got 'fast'"),
    ],
)
def test_malformed_version_parameters_are_load_errors_naming_them(key, value, expected):
    with pytest.raises(ModelLoadError, match=f"^parameters '{key}': {re.escape(expected)}$"):
        model_parameters(parameters(**{key: value}))


def test_a_model_whose_drift_monitoring_is_a_typo_fails_to_load_saying_so(tmp_path, running_server, stub_for):
    write_model(tmp_path, "good", add_sub(width=4), "max_batch_size: 8")
    write_model(
        tmp_path,
        "typo",
        add_sub(width=4),
        'max_batch_size: 8\nparameters { key: "drift_monitoring" value: { string_value: "ture" } }',
    )
    server = running_server(tmp_path)
    stub = stub_for(server)
    assert stub.ModelReady(pb.ModelReadyRequest(name="good")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="typo")).ready
    assert (
        "parameters 'drift_monitoring': expected true or false, got 'ture'"
        in server.app.registry.entry("typo").reason()
    )


# -- the traffic policy
# ---------------------------------------------------------------------------------------------


def test_traffic_policy_from_config_parameters():
    assert traffic_policy(config("")) == TrafficPolicy()
    policy = traffic_policy(
        parameters(
            stable_version="1",
            canary_version="2",
            canary_weight="0.25",
            sticky_parameter="user",
            shadow_version="none",
            shadow_fraction="0.5",
            standby_versions="2",
            canary_max_error_rate="0.1",
            canary_max_p99_ms="50",
            canary_guard_window_s="10",
            canary_guard_min_requests="5",
            intra_op_thread_count="1",  # another module's parameter: not the traffic policy's business
        )
    )
    assert policy == TrafficPolicy(
        stable=1,
        canary=2,
        canary_weight=0.25,
        sticky_parameter="user",
        shadow=None,
        shadow_fraction=0.5,
        standby=2,
        guard=GuardPolicy(max_error_rate=0.1, max_p99_ms=50.0, window_s=10.0, min_requests=5),
    )
    assert traffic_policy(parameters(standby_versions="2")) == TrafficPolicy(standby=2)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("canary_version", "two", "parameters 'canary_version': expected an integer, got 'two'"),
        ("canary_weight", "lots", "parameters 'canary_weight': expected a number, got 'lots'"),
        ("canary_weight", "1.5", "traffic policy: canary_weight 1.5 is outside 0..1"),
        ("standby_versions", "-1", "parameters 'standby_versions': expected >= 0, got -1"),
        (
            "canary_guard_min_requests",
            "0.5",
            "parameters 'canary_guard_min_requests': expected an integer, got '0.5'",
        ),
    ],
)
def test_malformed_traffic_parameters_are_invalid_input_naming_them(key, value, expected):
    with pytest.raises(InvalidInput, match=f"^{re.escape(expected)}$"):
        traffic_policy(parameters(**{key: value}))
