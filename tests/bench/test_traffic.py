"""hotwire.bench.traffic against an echo server on 127.0.0.1: the open loop holds its rate, unary and
streamed, constant and Poisson; the closed loop counts what it is asked to; several client processes' steps
merge into one; failures are counted with their message, not raised."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from fake_servers import DelayedEcho, serve_in_thread
from hotwire.bench.traffic import LoadSpec, Step, arrivals, run_clients, run_load, split
from hotwire.clients.tensors import RequestEncoder


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with serve_in_thread(DelayedEcho(lambda: 0.0)) as address:
        yield address


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("traffic") / "request.bin"
    path.write_bytes(RequestEncoder().encode("classifier", {"input": np.ones((1, 16), np.float32)}))
    return path


def spec(url: str, payload: Path, **changes: object) -> LoadSpec:
    base = LoadSpec(url, "classifier", str(payload), rate=200.0, duration_s=2.0, warmup_s=0.3, timeout_s=5.0)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
def test_open_loop_holds_the_requested_rate(echo, payload, streaming):
    step = run_load(spec(echo, payload, streaming=streaming))
    assert step.mode == "open" and step.offered_rps == 200.0
    assert step.requests == 400  # constant arrivals: exactly rate × window intended in the window
    assert step.errors == 0 and step.ok == 400, step.error_messages
    assert step.achieved_rps == pytest.approx(200.0, rel=0.05)
    assert step.histogram.count == 400
    assert 0.0 < step.histogram.percentile_ms(50) < 1000.0
    assert step.client_cpu > 0.0 and 0.0 < step.loop_cpu < 1.5


def test_poisson_arrivals_average_the_rate():
    gaps = np.diff(list(islice(arrivals(500.0, "poisson", seed=3), 20001)))
    assert gaps.mean() == pytest.approx(1 / 500.0, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 500.0, rel=0.05)  # exponential: the deviation is the mean
    assert list(islice(arrivals(4.0, "constant", 0), 3)) == [0.0, 0.25, 0.5]
    with pytest.raises(ValueError, match="poisson"):
        next(arrivals(1.0, "bursty", 0))


def test_a_poisson_open_loop_offers_the_rate(echo, payload):
    step = run_load(spec(echo, payload, arrival="poisson", duration_s=3.0))
    assert step.errors == 0
    assert step.requests == pytest.approx(600, rel=0.15)  # a Poisson count: mean 600, deviation ~25
    assert step.achieved_rps == pytest.approx(step.requests / 3.0, rel=0.05)


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
def test_closed_loop_by_duration_and_by_requests(echo, payload, streaming):
    timed = run_load(spec(echo, payload, rate=0.0, concurrency=4, duration_s=1.0, streaming=streaming))
    assert timed.mode == "closed" and timed.offered_rps is None and timed.late == 0
    assert timed.errors == 0 and timed.ok > 50
    assert timed.achieved_rps == pytest.approx(timed.ok / timed.window_s, rel=0.2)
    counted = run_load(
        spec(echo, payload, rate=0.0, concurrency=3, duration_s=None, requests=150, streaming=streaming)
    )
    assert counted.requests == counted.ok == counted.histogram.count == 150


def test_client_processes_merge_into_one_step(echo, payload):
    step = run_clients(spec(echo, payload, rate=300.0, duration_s=2.0), clients=2)
    assert step.processes == 2
    assert step.requests == 600 and step.ok == 600  # 150 rps each, 2 s
    assert step.offered_rps == pytest.approx(300.0)
    assert step.achieved_rps == pytest.approx(300.0, rel=0.05)
    assert step.histogram.count == 600


def test_split_shares_the_load():
    shares = split(spec("x", Path("p"), rate=100.0, concurrency=5, requests=11, duration_s=None), 3)
    assert [s.rate for s in shares] == pytest.approx([100 / 3] * 3)
    assert [s.concurrency for s in shares] == [2, 2, 1]
    assert [s.requests for s in shares] == [4, 4, 3]
    assert len({s.seed for s in shares}) == 3
    closed = split(spec("x", Path("p"), rate=0.0, concurrency=2), 3)
    assert [s.concurrency for s in closed] == [1, 1]  # a process without a caller is not started


def test_failures_are_counted_with_their_message(echo, payload, tmp_path):
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(RequestEncoder().encode("nosuchmodel", {"input": np.ones((1, 16), np.float32)}))
    for streaming in (False, True):
        step = run_load(spec(echo, wrong, rate=50.0, duration_s=1.0, warmup_s=0.0, streaming=streaming))
        assert step.requests == 50 and step.errors == 50 and step.ok == 0
        assert any("nosuchmodel" in message for message in step.error_messages), step.error_messages
        assert step.error_fraction == 1.0


def test_a_step_round_trips_through_json(echo, payload):
    step = run_load(spec(echo, payload, rate=100.0, duration_s=0.5))
    again = Step.from_json(step.to_json())
    assert again.requests == step.requests and again.histogram.equals(step.histogram)
