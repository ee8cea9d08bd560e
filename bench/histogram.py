"""Latency histograms for the latency-class bench: HDR histograms (the `hdrhistogram` package) in
microseconds, exact to 3 significant figures from 1 µs to 10 minutes, encoded as text so that client processes
can send them to the parent, which merges them exactly (bucket counts add; no percentile of percentiles)."""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

__all__ = ["PERCENTILES", "LatencyHistogram"]

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes: longer than any call's deadline
SIGNIFICANT_FIGURES = 3
# the percentiles every report gives, by their JSON key
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


class LatencyHistogram:
    """Latencies recorded in seconds, read in milliseconds; values past the range are clamped to it (and
    counted), so one pathological sample can't fail a run."""

    def __init__(self, histogram: HdrHistogram | None = None) -> None:
        self._histogram = histogram or HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1e6 + 0.5)
        self._histogram.record_value(min(max(micros, LOWEST_US), HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self._histogram.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        """The latency at `percentile` (0-100]; 0.0 for an empty histogram."""
        if not self.count:
            return 0.0
        return float(self._histogram.get_value_at_percentile(percentile)) / 1000.0

    def percentiles_ms(self) -> dict[str, float]:
        return {key: self.percentile_ms(p) for key, p in PERCENTILES.items()}

    @property
    def max_ms(self) -> float:
        return float(self._histogram.get_max_value()) / 1000.0 if self.count else 0.0

    @property
    def min_ms(self) -> float:
        return float(self._histogram.get_min_value()) / 1000.0 if self.count else 0.0

    @property
    def mean_ms(self) -> float:
        return float(self._histogram.get_mean_value()) / 1000.0 if self.count else 0.0

    def add(self, other: LatencyHistogram) -> None:
        """Merge `other`'s counts into this one (exact: the buckets are the same)."""
        self._histogram.add(other._histogram)

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (what HdrHistogram's tools read)."""
        return bytes(self._histogram.encode()).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        return cls(HdrHistogram.decode(text.encode("ascii")))

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        total = cls()
        for histogram in histograms:
            total.add(histogram)
        return total

    def equals(self, other: LatencyHistogram) -> bool:
        """The same count in every bucket."""
        return self.count == other.count and all(
            self._histogram.get_count_at_index(i) == other._histogram.get_count_at_index(i)
            for i in range(self._histogram.counts_len)
        )
