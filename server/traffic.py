"""Traffic policy per model: which loaded version serves an unpinned request (stable, canary by weight or
sticky key), which one shadows it, and the guard that sends traffic back to stable when the canary misbehaves.

Pure decisions and bounded rolling windows; the registry owns the versions and applies what these return.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hotwire.server.errors import InvalidInput


@dataclass(frozen=True)
class GuardPolicy:
    """Canary rollback guard: over the last `window_s`, once `min_requests` canary requests were seen, an
    error rate above `max_error_rate` or a p99 above `max_p99_ms` returns all traffic to stable. 0 disables a
    limit."""

    max_error_rate: float = 0.0
    max_p99_ms: float = 0.0
    window_s: float = 30.0
    min_requests: int = 20

    @property
    def enabled(self) -> bool:
        return self.max_error_rate > 0 or self.max_p99_ms > 0


@dataclass(frozen=True)
class TrafficPolicy:
    stable: int | None = None  # None: the highest loaded version
    canary: int | None = None
    canary_weight: float = 0.0  # fraction of unpinned requests the canary gets, 0..1
    sticky_parameter: str = ""  # request parameter whose value pins a client to one side of the split
    shadow: int | None = None
    shadow_fraction: float = 0.0  # fraction of served requests mirrored to the shadow version, 0..1
    standby: int = 0  # superseded versions kept loaded for instant rollback
    guard: GuardPolicy = GuardPolicy()

    def check(self) -> TrafficPolicy:
        if not 0.0 <= self.canary_weight <= 1.0:
            raise InvalidInput(f"traffic policy: canary_weight {self.canary_weight} is outside 0..1")
        if not 0.0 <= self.shadow_fraction <= 1.0:
            raise InvalidInput(f"traffic policy: shadow_fraction {self.shadow_fraction} is outside 0..1")
        if self.standby < 0:
            raise InvalidInput(f"traffic policy: standby {self.standby} must be >= 0")
        for name in ("stable", "canary", "shadow"):
            version = getattr(self, name)
            if version is not None and version < 0:
                raise InvalidInput(f"traffic policy: {name} {version} must be a version >= 0")
        guard = self.guard
        if not 0.0 <= guard.max_error_rate <= 1.0:
            raise InvalidInput(
                f"traffic policy: canary_max_error_rate {guard.max_error_rate} is outside 0..1"
            )
        if not guard.max_p99_ms >= 0.0:
            raise InvalidInput(f"traffic policy: canary_max_p99_ms {guard.max_p99_ms} must be >= 0")
        if not guard.window_s > 0.0:
            raise InvalidInput(f"traffic policy: canary_guard_window_s {guard.window_s} must be > 0")
        if guard.min_requests < 0:
            raise InvalidInput(f"traffic policy: canary_guard_min_requests {guard.min_requests} must be >= 0")
        return self


_INT_KEYS = ("stable", "canary", "shadow", "standby")
_FLOAT_KEYS = ("canary_weight", "shadow_fraction")
_GUARD_KEYS = {
    "canary_max_error_rate": "max_error_rate",
    "canary_max_p99_ms": "max_p99_ms",
    "canary_guard_window_s": "window_s",
    "canary_guard_min_requests": "min_requests",
}


def apply_update(policy: TrafficPolicy, values: Mapping[str, Any]) -> TrafficPolicy:
    """A new policy with the given keys changed (the admin API's JSON, or a guard's rollback); an unknown key
    is InvalidInput."""
    changes: dict[str, Any] = {}
    guard_changes: dict[str, Any] = {}
    try:
        for key, value in values.items():
            if key in _INT_KEYS:
                changes[key] = None if value in (None, "", "none") else _integer(key, value)
            elif key in _FLOAT_KEYS:
                changes[key] = _number(key, value)
            elif key == "sticky_parameter":
                if not isinstance(value, str):
                    raise InvalidInput(
                        f"traffic policy: sticky_parameter must be a parameter name, got {value!r:.50}"
                    )
                changes[key] = value
            elif key in _GUARD_KEYS:
                guard_changes[_GUARD_KEYS[key]] = (
                    _integer(key, value) if key == "canary_guard_min_requests" else _number(key, value)
                )
            else:
                raise InvalidInput(f"traffic policy: unknown key '{key[:50]}'")
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"traffic policy: {exc}") from None
    if changes.get("standby") is None and "standby" in changes:
        changes["standby"] = 0
    guard = replace(policy.guard, **guard_changes)
    return replace(policy, guard=guard, **changes).check()


def _integer(key: str, value: Any) -> int:
    """An integer setting: an int or its decimal string (not a bool, not 1.5, not 1e999)."""
    if isinstance(value, bool) or isinstance(value, float) or not isinstance(value, (int, str)):
        raise InvalidInput(f"traffic policy: {key} must be an integer, got {value!r:.50}")
    return int(value)


def _number(key: str, value: Any) -> float:
    """A finite number setting (1e999 reads as inf in JSON, NaN passes every comparison)."""
    if isinstance(value, bool):
        raise InvalidInput(f"traffic policy: {key} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"traffic policy: {key} must be a finite number, got {value!r:.50}")
    return number


def parse_update(text: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"traffic policy: not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise InvalidInput("traffic policy: expected a JSON object")
    return values


def goes_to_canary(policy: TrafficPolicy, parameters: Mapping[str, Any], rng: random.Random) -> bool:
    """Whether an unpinned request is routed to the canary: by a stable hash of its sticky parameter when it
    has one (the same client always lands on the same side), else at random with the canary's weight."""
    if policy.canary is None or policy.canary_weight <= 0:
        return False
    if policy.sticky_parameter and policy.sticky_parameter in parameters:
        digest = hashlib.blake2b(str(parameters[policy.sticky_parameter]).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < policy.canary_weight
    return rng.random() < policy.canary_weight


class GuardWindow:
    """The canary's recent outcomes: (time, latency seconds, ok), bounded in time and count."""

    MAX_SAMPLES = 10_000

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float, bool]] = deque(maxlen=self.MAX_SAMPLES)

    def add(self, now: float, latency_s: float, ok: bool) -> None:
        self._samples.append((now, latency_s, ok))

    def breach(self, guard: GuardPolicy, now: float) -> str | None:
        """Why the canary must be rolled back, or None."""
        while self._samples and self._samples[0][0] < now - guard.window_s:
            self._samples.popleft()
        count = len(self._samples)
        if not guard.enabled or count < guard.min_requests:
            return None
        errors = sum(1 for _, _, ok in self._samples if not ok)
        if guard.max_error_rate > 0 and errors / count > guard.max_error_rate:
            return f"error rate {errors / count:.1%} over {count} requests exceeds {guard.max_error_rate:.1%}"
        if guard.max_p99_ms > 0:
            latencies = sorted(latency for _, latency, _ in self._samples)
            p99 = latencies[min(count - 1, math.ceil(0.99 * count) - 1)] * 1e3
            if p99 > guard.max_p99_ms:
                return f"p99 latency {p99:.1f} ms over {count} requests exceeds {guard.max_p99_ms:.1f} ms"
        return None

    def clear(self) -> None:
        self._samples.clear()


@dataclass(frozen=True)
class ShadowComparison:
    max_abs_diff: float  # over every output element
    # fraction of rows whose argmax (last axis) matches, first output; nan if not numeric
    argmax_agreement: float


def compare(served: list[np.ndarray], shadow: list[np.ndarray]) -> ShadowComparison:
    diff = 0.0
    for a, b in zip(served, shadow):
        if a.dtype.kind in "fiub" and b.dtype.kind in "fiub" and a.shape == b.shape and a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
        elif a.shape != b.shape:
            diff = math.inf
    agreement = math.nan
    if (
        served
        and shadow
        and served[0].shape == shadow[0].shape
        and served[0].ndim >= 1
        and served[0].size
        and served[0].dtype.kind in "fiu"
    ):
        rows_a = (
            served[0].reshape(-1, served[0].shape[-1]) if served[0].ndim > 1 else served[0].reshape(1, -1)
        )
        rows_b = shadow[0].reshape(rows_a.shape)
        agreement = float(np.mean(np.argmax(rows_a, axis=-1) == np.argmax(rows_b, axis=-1)))
    return ShadowComparison(diff, agreement)
