"""CUDA graph buckets: which shapes a model is captured at, and the padding, binding and slicing around each
replay. The binding code runs here on CPU tensors (ORT has no graph to capture there) and must give exactly
what a plain session.run gives; the capture itself runs only on a GPU (tests/server/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from hotwire.proto import model_config_pb2 as mc
from hotwire.server import datatypes
from hotwire.server.cuda_graphs import GraphedBatches, GraphPlan, graph_plan
from hotwire.server.errors import ModelLoadError
from hotwire.server.model_config import GpuOptions, Signature, TensorSpec
from onnx_models import add_sub, simple_inputs


def spec(
    name: str, dims: tuple[int, ...] = (16,), datatype: str = "FP32", optional: bool = False
) -> TensorSpec:
    return TensorSpec(name, datatypes.BY_NAME[datatype], dims, dims, optional=optional)


def add_sub_signature(max_batch_size: int = 8) -> Signature:
    return Signature(
        (spec("INPUT0"), spec("INPUT1")), (spec("OUTPUT0"), spec("OUTPUT1")), max_batch_size=max_batch_size
    )


def batching(*preferred: int) -> mc.ModelConfig:
    config = mc.ModelConfig(max_batch_size=8)
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    return config


def cpu_session(batched: bool = True) -> ort.InferenceSession:
    return ort.InferenceSession(
        add_sub(batched=batched).SerializeToString(), providers=["CPUExecutionProvider"]
    )


def test_the_buckets_are_the_warm_up_sizes_unless_graph_spec_names_them():
    plan = graph_plan(add_sub_signature(), batching(4), GpuOptions(cuda_graphs=True))
    assert plan.batch_sizes == (1, 4, 8)
    assert [t.name for t in plan.inputs] == ["INPUT0", "INPUT1"]
    assert plan.outputs[0].dims == (16,) and plan.outputs[0].dtype == np.float32
    chosen = graph_plan(
        add_sub_signature(), batching(4), GpuOptions(cuda_graphs=True, graph_batch_sizes=(2, 8))
    )
    assert chosen.batch_sizes == (2, 8)
    unbatched = graph_plan(
        add_sub_signature(max_batch_size=0), mc.ModelConfig(), GpuOptions(cuda_graphs=True)
    )
    assert unbatched.batch_sizes == ()


@pytest.mark.parametrize(
    ("signature", "sizes", "message"),
    [
        (Signature((spec("x", (-1, 4)),), (spec("y"),), 8), (), "input 'x' has dims [-1, 4]"),
        (Signature((spec("x"),), (spec("y", (-1,)),), 8), (), "output 'y' has dims [-1]"),
        (Signature((spec("x", datatype="BYTES"),), (spec("y"),), 8), (), "input 'x' is BYTES"),
        (Signature((spec("x", optional=True),), (spec("y"),), 8), (), "input 'x' is optional"),
        (add_sub_signature(), (1, 4), "must lie in 1..max_batch_size (8) and include it"),
        (add_sub_signature(), (0, 8), "must lie in 1..max_batch_size (8)"),
    ],
)
def test_a_model_unfit_for_cuda_graphs_fails_its_load_saying_why(signature, sizes, message):
    with pytest.raises(ModelLoadError) as raised:
        graph_plan(signature, batching(), GpuOptions(cuda_graphs=True, graph_batch_sizes=sizes))
    assert message in str(raised.value)


def test_each_batch_runs_padded_to_its_bucket_and_returns_exactly_a_plain_runs_rows():
    session = cpu_session()
    plan = graph_plan(add_sub_signature(), batching(4), GpuOptions(cuda_graphs=True))
    graphs = GraphedBatches(session, "cpu", 0, plan)
    assert [graphs.bucket_rows(rows) for rows in range(1, 9)] == [1, 4, 4, 4, 8, 8, 8, 8]
    earlier: list[tuple[np.ndarray, np.ndarray]] = []
    for rows in (3, 8, 1, 5, 4, 3):
        feeds = simple_inputs(rows, seed=rows)
        expected = session.run(["OUTPUT1", "OUTPUT0"], feeds)
        got = graphs.run(feeds, ["OUTPUT1", "OUTPUT0"])
        assert [g.shape for g in got] == [(rows, 16), (rows, 16)]
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)
        earlier.append((got[0], expected[0]))
    # The buckets' buffers are reused by every later batch; what a batch got back is its own.
    for got_then, expected_then in earlier:
        np.testing.assert_array_equal(got_then, expected_then)


def test_a_batch_larger_than_the_largest_bucket_is_refused_not_truncated():
    planned = graph_plan(add_sub_signature(2), batching(), GpuOptions(cuda_graphs=True))
    plan = GraphPlan((1, 2), planned.inputs, planned.outputs)
    graphs = GraphedBatches(cpu_session(), "cpu", 0, plan)
    with pytest.raises(ValueError, match="3 rows is over the largest CUDA graph bucket"):
        graphs.run(simple_inputs(3), ["OUTPUT0"])


def test_a_model_that_does_not_batch_replays_one_fixed_shape():
    session = cpu_session(batched=False)
    plan = graph_plan(add_sub_signature(max_batch_size=0), mc.ModelConfig(), GpuOptions(cuda_graphs=True))
    graphs = GraphedBatches(session, "cpu", 0, plan)
    for seed in (1, 2):
        feeds = {name: value[0] for name, value in simple_inputs(1, seed=seed).items()}
        got = graphs.run(feeds, ["OUTPUT0"])
        np.testing.assert_array_equal(got[0], session.run(["OUTPUT0"], feeds)[0])
