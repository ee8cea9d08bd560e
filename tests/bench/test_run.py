"""bench.run's model table: every benchmark model's declared input matches its graph, and has its config."""

from __future__ import annotations

import pytest

from hotwire.bench.run import HOTWIRE_CONFIGS, MODELS


def test_every_model_has_a_config_of_its_own_name() -> None:
    assert set(HOTWIRE_CONFIGS) == set(MODELS)
    for name, config in HOTWIRE_CONFIGS.items():
        assert f'name: "{name}"' in config


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_declared_input_is_the_graphs(name: str) -> None:
    bench = MODELS[name]
    graph = bench.build().graph
    (only_input,) = graph.input
    dims = only_input.type.tensor_type.shape.dim
    assert only_input.name == bench.input_name
    assert dims[0].dim_param  # the batch dimension: requests of one row batch together
    assert tuple(d.dim_value for d in dims[1:]) == bench.row_shape
