"""Latency classes and the capacity search of `hotwire bench --target`: the highest open-loop rate at which a
model's p99 stays inside its class with errors under 0.1 %.

The search is bounded: it ramps the rate up by `growth` from `start_rps` until a step fails (or `max_rps`
passes; while no step has passed, up to LOW_END_TRIES steps, see next_rate), then bisects (geometrically)
between the highest rate that passed and the lowest above it that failed until they are within `precision`
of each other, at most `max_steps` steps in all. A step also fails when the server
answered less than ACHIEVED_FLOOR of the offered rate inside the window (a backlog building). A step where the
client was the limit (its event loop saturated, or more than 1 % of its requests sent over a millisecond late)
is flagged, and the report warns of it; a saturated event loop also stops the search, since no higher rate can
be offered from this client (more client processes can: `--clients K`).

`CapacitySearch` is driven from outside (`next_rate()`, then `record(step)`), so that several servers'
searches can be interleaved step by step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hotwire.bench.traffic import Step

__all__ = [
    "ACHIEVED_FLOOR",
    "MAX_ERROR_FRACTION",
    "CapacitySearch",
    "LatencyClass",
    "Trial",
    "client_limit",
    "judge",
    "parse_target",
]

MAX_ERROR_FRACTION = 0.001
ACHIEVED_FLOOR = 0.9
MAX_LATE_FRACTION = 0.01  # more than this sent over traffic.LATE_S late: the client was the limit
LOOP_SATURATED = 0.9  # the client's event loop thread busy this share of the window: it was the limit
LOW_END_TRIES = 5  # steps the ramp takes before giving up when none has met the class


@dataclass(frozen=True)
class LatencyClass:
    name: str
    p99_ms: float
    strict: bool  # edge: p99 < 10 ms; the others: p99 <= the bound

    def met(self, p99_ms: float) -> bool:
        return p99_ms < self.p99_ms if self.strict else p99_ms <= self.p99_ms

    def describe(self) -> str:
        return f"{self.name} (p99 {'<' if self.strict else '≤'} {self.p99_ms:g} ms)"


EDGE = LatencyClass("edge", 10.0, strict=True)
STREAMING = LatencyClass("streaming", 50.0, strict=False)
_CUSTOM = re.compile(r"^p99=(\d+(?:\.\d+)?)(?:ms)?$")


def parse_target(text: str) -> LatencyClass:
    """ "edge", "streaming" or "p99=MS"; ValueError otherwise."""
    if text == "edge":
        return EDGE
    if text == "streaming":
        return STREAMING
    match = _CUSTOM.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"target must be edge, streaming or p99=MS (a positive number of ms), not {text!r}")
    return LatencyClass(f"p99={match.group(1)}ms", float(match.group(1)), strict=False)


def client_limit(step: Step) -> str:
    """Why the client was the limit of `step` ("" when it was not)."""
    reasons = []
    if step.loop_cpu >= LOOP_SATURATED:
        reasons.append(f"its event loop was busy {step.loop_cpu:.0%} of the window")
    if step.late_fraction > MAX_LATE_FRACTION:
        reasons.append(f"{step.late_fraction:.1%} of requests were sent over 1 ms late")
    return "; ".join(reasons)


def judge(step: Step, latency_class: LatencyClass) -> tuple[bool, str]:
    """Whether `step` meets the class, and why not."""
    p99 = step.histogram.percentile_ms(99.0)
    if step.requests == 0 or step.ok == 0:
        return False, "no request answered"
    if step.error_fraction >= MAX_ERROR_FRACTION:
        return False, f"errors {step.error_fraction:.2%} (limit {MAX_ERROR_FRACTION:.1%})"
    if not latency_class.met(p99):
        return False, f"p99 {p99:.2f} ms"
    if step.offered_rps and step.achieved_rps < ACHIEVED_FLOOR * step.offered_rps:
        return False, f"answered {step.achieved_rps / step.offered_rps:.0%} of the offered rate"
    return True, f"p99 {p99:.2f} ms"


@dataclass
class Trial:
    rate: float
    step: Step
    passed: bool
    reason: str
    client_limited: str = ""


@dataclass
class CapacitySearch:
    latency_class: LatencyClass
    start_rps: float = 50.0
    max_rps: float = 50_000.0
    growth: float = 2.0
    precision: float = 0.05
    max_steps: int = 16
    trials: list[Trial] = field(default_factory=list)
    _stopped: str = ""

    def _above(self) -> float:
        """The lowest rate above the capacity that missed the class (inf: none yet)."""
        best = self.capacity_rps
        return min((t.rate for t in self.trials if not t.passed and t.rate > best), default=math.inf)

    def next_rate(self) -> float | None:
        """The rate to measure next; None once the search is over."""
        if self._stopped or len(self.trials) >= self.max_steps:
            return None
        if not self.trials:
            return self.start_rps
        best, above = self.capacity_rps, self._above()
        if best == 0.0:
            # Nothing met the class yet. A p99 missed while the server is mostly idle can be the machine
            # waking up (measured here: time.sleep itself ends 2-3 ms late at p99 on a VM), not load: the
            # ramp goes on for LOW_END_TRIES steps unless the server failed requests or fell behind.
            last = self.trials[-1]
            if len(self.trials) >= LOW_END_TRIES or not last.reason.startswith("p99"):
                return None
            return min(last.rate * self.growth, self.max_rps) if last.rate < self.max_rps else None
        if math.isinf(above):  # ramping
            return None if best >= self.max_rps else min(best * self.growth, self.max_rps)
        if above / best <= 1.0 + self.precision:
            return None
        return math.sqrt(best * above)

    def record(self, step: Step) -> Trial:
        rate = float(step.offered_rps or 0.0)
        passed, reason = judge(step, self.latency_class)
        limited = client_limit(step)
        trial = Trial(rate, step, passed, reason, limited)
        self.trials.append(trial)
        if step.loop_cpu >= LOOP_SATURATED:
            self._stopped = f"the client was the limit at {rate:g} rps: {limited}"
        return trial

    @property
    def not_monotone(self) -> list[Trial]:
        """Trials that missed the class at a rate below the capacity (the machine's jitter, not load)."""
        best = self.capacity_rps
        return [t for t in self.trials if not t.passed and t.rate < best]

    @property
    def capacity_rps(self) -> float:
        """The highest rate measured to meet the class (0: none did)."""
        return max((t.rate for t in self.trials if t.passed), default=0.0)

    @property
    def stopped(self) -> str:
        """Why the search stopped early ("" when it ran its course)."""
        return self._stopped

    @property
    def client_limited(self) -> list[Trial]:
        """The trials in which the client, not the server, was the limit."""
        return [trial for trial in self.trials if trial.client_limited]

    @property
    def verdict(self) -> str:
        return "pass" if self.capacity_rps > 0 else "fail"
