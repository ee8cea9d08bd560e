"""hotwire.bench.histogram: percentiles of known inputs, and histograms recorded in separate processes,
encoded and merged, equal one histogram of all the samples."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hotwire.bench.histogram import LatencyHistogram

RECORD = """
import sys
import numpy as np
from hotwire.bench.histogram import LatencyHistogram
seed = int(sys.argv[1])
histogram = LatencyHistogram()
for value in np.random.default_rng(seed).lognormal(-6.0, 1.0, 5000):
    histogram.record(float(value))
print(histogram.encode())
"""


def test_percentiles_of_known_inputs():
    histogram = LatencyHistogram()
    for millis in range(1, 1001):  # 1 ms .. 1000 ms, one each
        histogram.record(millis / 1000)
    assert histogram.count == 1000
    # three significant figures: each value within 0.1 % of the exact order statistic
    for percentile, exact in ((50, 500), (90, 900), (99, 990), (99.9, 999), (100, 1000)):
        assert histogram.percentile_ms(percentile) == pytest.approx(exact, rel=1e-3)
    assert histogram.percentiles_ms()["p99_ms"] == pytest.approx(990, rel=1e-3)
    assert histogram.min_ms == pytest.approx(1, rel=1e-3)
    assert histogram.max_ms == pytest.approx(1000, rel=1e-3)
    assert histogram.mean_ms == pytest.approx(500.5, rel=1e-3)


def test_a_skewed_distribution_and_the_range_limits():
    histogram = LatencyHistogram()
    for _ in range(990):
        histogram.record(0.002)
    for _ in range(10):
        histogram.record(0.250)
    assert histogram.percentile_ms(50) == pytest.approx(2.0, rel=1e-3)
    assert histogram.percentile_ms(99) == pytest.approx(2.0, rel=1e-3)  # the 990th of 1000 is still 2 ms
    assert histogram.percentile_ms(99.1) == pytest.approx(250.0, rel=1e-3)
    empty = LatencyHistogram()
    assert empty.percentile_ms(99) == 0.0 and empty.max_ms == 0.0
    clamped = LatencyHistogram()
    clamped.record(0.0)  # below 1 µs
    clamped.record(3600.0)  # an hour: past the range, kept at its top
    assert clamped.count == 2 and clamped.max_ms == pytest.approx(600_000, rel=1e-3)


def test_histograms_merged_from_several_processes_equal_one_of_all_samples():
    seeds = (11, 12, 13)
    encoded = [
        subprocess.run(
            [sys.executable, "-c", RECORD, str(seed)], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        for seed in seeds
    ]
    merged = LatencyHistogram.merged(LatencyHistogram.decode(text) for text in encoded)
    everything = LatencyHistogram()
    for seed in seeds:
        for value in np.random.default_rng(seed).lognormal(-6.0, 1.0, 5000):
            everything.record(float(value))
    assert merged.count == everything.count == 15000
    assert merged.equals(everything)
    for percentile in (50, 90, 99, 99.9):
        assert merged.percentile_ms(percentile) == everything.percentile_ms(percentile)
    # and a merge that lost a process's samples is not equal
    partial = LatencyHistogram.merged(LatencyHistogram.decode(text) for text in encoded[:2])
    assert not partial.equals(everything)
