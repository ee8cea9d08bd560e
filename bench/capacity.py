"""Latency classes and the capacity search of `hotwire bench --target`: the highest open-loop rate at which a
model's p99 stays inside its class with errors under 0.1 %.

The search is bounded: it ramps the rate up by `growth` from `start_rps` until a step fails (or `max_rps`
passes), then bisects (geometrically) between the last rate that passed and the first that failed until they
are within `precision` of each other, at most `max_steps` steps in all. A step also fails when the server
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
    _passed: float = 0.0  # the highest rate that met the class
    _failed: float = math.inf  # the lowest rate that did not
    _stopped: str = ""

    def next_rate(self) -> float | None:
        """The rate to measure next; None once the search is over."""
        if self._stopped or len(self.trials) >= self.max_steps:
            return None
        if not self.trials:
            return self.start_rps
        if math.isinf(self._failed):  # ramping
            if self._passed >= self.max_rps:
                return None
            return min(self._passed * self.growth, self.max_rps)
        if self._passed == 0.0 or self._failed / self._passed <= 1.0 + self.precision:
            return None
        return math.sqrt(self._passed * self._failed)

    def record(self, step: Step) -> Trial:
        rate = float(step.offered_rps or 0.0)
        passed, reason = judge(step, self.latency_class)
        limited = client_limit(step)
        trial = Trial(rate, step, passed, reason, limited)
        self.trials.append(trial)
        if passed:
            self._passed = max(self._passed, rate)
        else:
            self._failed = min(self._failed, rate)
        if step.loop_cpu >= LOOP_SATURATED:
            self._stopped = f"the client was the limit at {rate:g} rps: {limited}"
        return trial

    @property
    def capacity_rps(self) -> float:
        """The highest rate measured to meet the class (0: none did)."""
        return self._passed

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
        return "pass" if self._passed > 0 else "fail"
