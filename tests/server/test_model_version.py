"""ModelVersion's lifecycle (server/model_version.py): the transitions it allows, the ones it refuses, and an
unload that waits for the requests in flight, on a real version loaded by the loader (ONNX Runtime session,
batcher) and run on a real event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hotwire.server import datatypes, repository, wire
from hotwire.server.loader import load_version
from hotwire.server.model_version import ModelVersion, VersionState
from hotwire.server.stats import VersionStats
from onnx_models import add_sub, write_model

CONFIG = """
name: "simple"
max_batch_size: 4
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [ { count: 1, kind: KIND_CPU } ]
parameters { key: "execution" value: { string_value: "thread" } }
"""


async def _load(root: Path) -> ModelVersion:
    source = repository.read_model(root / "simple")
    return await load_version(source, 1, source.versions[1], 32)


def _request(rows: int = 1) -> wire.InferRequest:
    inputs = [
        wire.InputTensor(name, datatypes.BY_NAME["FP32"], (rows, 16), np.ones((rows, 16), np.float32))
        for name in ("INPUT0", "INPUT1")
    ]
    return wire.InferRequest("simple", "", "r", {}, inputs, None)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_model(tmp_path, "simple", add_sub(), CONFIG)
    return tmp_path


def test_a_loaded_version_starts_loading_and_moves_only_along_the_transitions(root: Path) -> None:
    async def scenario() -> list[VersionState]:
        version = await _load(root)
        seen = [version.state]
        assert not version.serving
        version.serve()
        version.stand_by()
        seen.append(version.state)
        assert version.serving  # standby still answers pinned requests
        version.serve()
        seen.append(version.state)
        version.drain()
        seen.append(version.state)
        with pytest.raises(RuntimeError, match="DRAINING -> READY"):
            version.serve()  # a draining version never takes traffic again
        await version.unload()
        seen.append(version.state)
        with pytest.raises(RuntimeError, match="UNLOADED -> STANDBY"):
            version.stand_by()
        await version.unload()  # a second unload is a no-op
        return seen

    assert asyncio.run(scenario()) == [
        VersionState.LOADING,
        VersionState.STANDBY,
        VersionState.READY,
        VersionState.DRAINING,
        VersionState.UNLOADED,
    ]


def test_unload_waits_for_the_requests_in_flight_and_they_are_answered(root: Path) -> None:
    async def scenario() -> tuple[list[np.ndarray], VersionState, int]:
        version = await _load(root)
        version.serve()
        # queued behind the 20 ms batching delay, so they are in flight when the unload starts
        requests = [asyncio.ensure_future(version.infer(_request())) for _ in range(3)]
        await asyncio.sleep(0)
        assert version.inflight == 3
        await version.unload()
        inflight_when_unloaded = version.inflight  # unload returns only once every request has its result
        done = all(r.done() for r in requests)
        answers = [r.outputs[0] for r in await asyncio.gather(*requests)]
        return answers, version.state, inflight_when_unloaded if done else -1

    answers, state, inflight = asyncio.run(scenario())
    assert state is VersionState.UNLOADED and inflight == 0
    for answer in answers:
        np.testing.assert_array_equal(answer, np.full((1, 16), 2.0, np.float32))  # add_sub: INPUT0 + INPUT1


def test_a_version_is_complete_when_constructed(root: Path) -> None:
    async def scenario() -> ModelVersion:
        version = await _load(root)
        await version.unload()
        return version

    version = asyncio.run(scenario())
    assert version.fingerprint == ()  # what the caller passed: nothing is patched in afterwards
    assert version.load_seconds > 0
    # its own, from the start
    assert isinstance(version.stats, VersionStats) and version.stats.success.count == 0
    assert version.drift is None and version.drift_report is None
