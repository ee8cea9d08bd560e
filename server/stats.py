"""Exact per-version inference statistics (Triton's ModelStatistics): counts and cumulative durations.

Owned by a ModelVersion; updated on the event loop only (batch results arrive there), so no locking.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass
class VersionStats:
    inference_count: int = 0  # rows computed (a batch of 4 rows counts 4)
    execution_count: int = 0  # batches run
    success: Duration = field(default_factory=Duration)  # request received -> response ready
    fail: Duration = field(default_factory=Duration)
    fail_by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # Triton's failure reasons
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    handler: Duration = field(default_factory=Duration)  # request bytes in -> response bytes out, successes only
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))  # rows -> compute time
    last_inference_ms: int = 0

    def record_batch(self, rows: int, requests: int, compute_s: float) -> None:
        self.inference_count += rows
        self.execution_count += 1
        self.batches[rows].add(compute_s)

    def record_request(self, ok: bool, duration_s: float, queue_s: float, compute_s: float, reason: str = "") -> None:
        """`reason` (failures): REJECTED (queue full, timed out), CANCELED, BACKEND (ONNX Runtime) or OTHER."""
        if ok:
            self.success.count += 1
            self.success.ns += int(duration_s * 1e9)
            self.queue.count += 1
            self.queue.ns += int(queue_s * 1e9)
            self.compute_infer.count += 1
            self.compute_infer.ns += int(compute_s * 1e9)
        else:
            self.fail.add(duration_s)
            self.fail_by_reason[reason or "OTHER"] += 1
        self.last_inference_ms = int(time.time() * 1e3)
