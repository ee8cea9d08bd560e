"""Exact per-version inference statistics (Triton's ModelStatistics): counts and cumulative durations.

Owned by a ModelVersion; updated on the event loop only (batch results arrive there), so no locking.
Prometheus metrics mirror these numbers (metrics.py), so statistics and metrics always agree.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass, field

from hotwire.server.errors import FailureReason

# Histogram bucket upper bounds (Prometheus `le`), microseconds and rows.
LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass(frozen=True)
class ComputeTimes:
    """One batch's compute phases: gathering/preprocessing inputs, ONNX Runtime, slicing outputs."""

    input_s: float = 0.0
    infer_s: float = 0.0
    output_s: float = 0.0


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class Histogram:
    """Counts per bucket (not cumulative) plus the overflow bucket, and the sum of observed values."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)


@dataclass
class VersionStats:
    inference_count: int = 0  # rows computed (a batch of 4 rows counts 4)
    execution_count: int = 0  # batches run
    success: Duration = field(default_factory=Duration)  # ModelVersion.infer: validated -> outputs ready
    fail: Duration = field(default_factory=Duration)
    fail_by_reason: dict[FailureReason, int] = field(default_factory=lambda: defaultdict(int))
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # request bytes in -> response bytes out, successes only
    handler: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=lambda: defaultdict(BatchStats))  # by batch rows
    latency_us: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_US))
    queue_us: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_US))
    batch_rows: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    last_inference_ms: int = 0

    # Both record_* run once per request or batch on the event loop: the histogram updates are written out
    # here rather than behind a method, which saves a call per histogram per request.

    def record_batch(self, rows: int, requests: int, times: ComputeTimes) -> None:
        self.inference_count += rows
        self.execution_count += 1
        batch = self.batches[rows]
        batch.compute_input.add(times.input_s)
        batch.compute_infer.add(times.infer_s)
        batch.compute_output.add(times.output_s)
        histogram = self.batch_rows
        histogram.counts[bisect.bisect_left(histogram.bounds, rows)] += 1
        histogram.total += rows

    def record_request(
        self,
        ok: bool,
        duration_s: float,
        queue_s: float,
        times: ComputeTimes,
        reason: FailureReason = FailureReason.OTHER,
    ) -> None:
        """`reason`: why a failed request failed (ignored for a success)."""
        if ok:
            self.success.add(duration_s)
            self.queue.add(queue_s)
            self.compute_input.add(times.input_s)
            self.compute_infer.add(times.infer_s)
            self.compute_output.add(times.output_s)
            latency_us, queue_us = duration_s * 1e6, queue_s * 1e6
            histogram = self.latency_us
            histogram.counts[bisect.bisect_left(histogram.bounds, latency_us)] += 1
            histogram.total += latency_us
            histogram = self.queue_us
            histogram.counts[bisect.bisect_left(histogram.bounds, queue_us)] += 1
            histogram.total += queue_us
        else:
            self.fail.add(duration_s)
            self.fail_by_reason[reason] += 1
        self.last_inference_ms = int(time.time() * 1e3)
