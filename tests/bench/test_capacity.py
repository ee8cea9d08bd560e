"""hotwire.bench.capacity: the latency classes, the verdict of a step, and the capacity search converging to
the known answer of a server model whose latency rises past a known rate."""

from __future__ import annotations

import pytest

from hotwire.bench.capacity import CapacitySearch, client_limit, judge, parse_target
from hotwire.bench.histogram import LatencyHistogram
from hotwire.bench.traffic import Step


def step(rate: float, p99_ms: float, errors: int = 0, achieved: float | None = None, late: int = 0,
         loop_cpu: float = 0.2) -> Step:  # fmt: skip
    """1000 requests: 980 at 1 ms, 20 at `p99_ms` (so that p99 is exactly that)."""
    histogram = LatencyHistogram()
    for _ in range(980):
        histogram.record(0.001)
    for _ in range(20):
        histogram.record(p99_ms / 1000)
    return Step(
        "open", rate, rate if achieved is None else achieved, 1.0, 1000, 1000 - errors, errors, late, 0.3,
        loop_cpu, histogram,
    )  # fmt: skip


def test_the_classes():
    edge, streaming, custom = parse_target("edge"), parse_target("streaming"), parse_target("p99=25")
    assert edge.met(9.99) and not edge.met(10.0)  # edge: p99 < 10 ms
    assert streaming.met(50.0) and not streaming.met(50.01)  # streaming: p99 <= 50 ms
    assert custom.p99_ms == 25.0 and custom.met(25.0) and parse_target("p99=2.5ms").p99_ms == 2.5
    for bad in ("fast", "p99=", "p99=-1", "p99=0", "p50=3"):
        with pytest.raises(ValueError, match="edge, streaming or p99=MS"):
            parse_target(bad)


def test_a_step_meets_the_class_only_with_few_errors_and_no_backlog():
    edge = parse_target("edge")
    passed, reason = judge(step(100, 9.0), edge)
    assert passed and reason.startswith("p99 9.0")  # within the histogram's 3 significant figures
    assert judge(step(100, 12.0), edge)[0] is False
    assert judge(step(100, 9.0, errors=1), edge)[1].startswith("errors 0.10%")  # 0.1 % is too many
    assert judge(step(100, 9.0, achieved=85.0), edge) == (False, "answered 85% of the offered rate")
    assert client_limit(step(100, 1.0)) == ""
    assert "sent over 1 ms late" in client_limit(step(100, 1.0, late=11))
    assert "event loop was busy 95%" in client_limit(step(100, 1.0, loop_cpu=0.95))


def drive(search: CapacitySearch, p99_at: object) -> list[float]:
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.record(p99_at(rate))  # type: ignore[operator]
    return rates


@pytest.mark.parametrize("knee", [75.0, 333.0, 2_000.0, 12_345.0])
def test_the_search_converges_to_the_known_capacity(knee):
    search = CapacitySearch(parse_target("edge"), start_rps=10.0, precision=0.05)
    rates = drive(search, lambda rate: step(rate, 2.0 if rate <= knee else 40.0))
    assert search.verdict == "pass"
    assert knee / 1.05 <= search.capacity_rps <= knee
    assert rates[:3] == [10.0, 20.0, 40.0]  # the ramp doubles
    assert len(rates) <= search.max_steps
    assert all(trial.passed == (trial.rate <= knee) for trial in search.trials)


def test_the_search_fails_a_model_that_never_meets_the_class_and_stops_at_the_ceiling():
    never = CapacitySearch(parse_target("edge"), start_rps=10.0)
    assert drive(never, lambda rate: step(rate, 15.0)) == [10.0, 20.0, 40.0, 80.0, 160.0]  # LOW_END_TRIES
    assert never.verdict == "fail" and never.capacity_rps == 0.0
    always = CapacitySearch(parse_target("edge"), start_rps=100.0, max_rps=1000.0)
    assert drive(always, lambda rate: step(rate, 1.0)) == [100.0, 200.0, 400.0, 800.0, 1000.0]
    assert always.capacity_rps == 1000.0


def test_a_saturated_client_stops_the_search_and_is_reported():
    search = CapacitySearch(parse_target("streaming"), start_rps=100.0)
    rates = drive(search, lambda rate: step(rate, 1.0, loop_cpu=0.95 if rate >= 400 else 0.3))
    assert rates == [100.0, 200.0, 400.0]
    assert "the client was the limit at 400 rps" in search.stopped
    assert [trial.rate for trial in search.client_limited] == [400.0]


def test_a_slow_low_end_does_not_hide_the_capacity_but_errors_end_the_search():
    # p99 missed at the lowest rates (idle wake-ups), met from 40 rps up to 500
    search = CapacitySearch(parse_target("edge"), start_rps=10.0, precision=0.05)
    drive(search, lambda rate: step(rate, 12.0 if rate < 40 or rate > 500 else 2.0))
    assert search.verdict == "pass" and 500 / 1.05 <= search.capacity_rps <= 500
    assert [t.rate for t in search.not_monotone] == [10.0, 20.0]
    failing = CapacitySearch(parse_target("edge"), start_rps=10.0)
    assert drive(failing, lambda rate: step(rate, 2.0, errors=5)) == [10.0]  # errors are not jitter
    assert failing.verdict == "fail"
