"""Logging: plain or JSON lines, one line per lifecycle event, a sampled request log and a slow-request log.

Lifecycle lines (load, flip, rollback, guard, drain, unload) carry an `event` field; in JSON every `extra`
field becomes a key, so log pipelines can filter on `event`, `model` and `version`. `version` is always an
integer, as in Triton's API (absent from a line about the whole model). Request lines carry the per-stage
breakdown (decode, queue, preprocess, compute, encode, total, in milliseconds).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
request_log = logging.getLogger("hotwire.requests")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, log_format: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # grpc's Cython layer logs a DEBUG line per call ("Loaded running loop"): --log-level DEBUG is for
    # hotwire.
    logging.getLogger("grpc._cython.cygrpc").setLevel(max(logging.INFO, root.level))


class RequestLogger:
    """Decides, per request and cheaply, whether it gets a log line: sampled at `rate`, or slower than
    `slow_ms`."""

    def __init__(self, rate: float = 0.0, slow_ms: float = 0.0) -> None:
        self.rate = rate
        self.slow_s = slow_ms / 1e3
        self._random = random.random

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.slow_s > 0

    def observe(
        self, model: str, version: str | int, request_id: str, total_s: float, stages: dict[str, float]
    ) -> None:
        slow = 0 < self.slow_s <= total_s
        if not slow and not (self.rate and self._random() < self.rate):
            return
        # callers pass the version's label string; the log field is an int, as on the lifecycle lines
        number = int(version) if isinstance(version, int) or version.isdigit() else version
        fields = {
            "model": model,
            "version": number,
            "request_id": request_id,
            "total_ms": round(total_s * 1e3, 3),
            **{f"{k}_ms": round(v * 1e3, 3) for k, v in stages.items()},
        }
        breakdown = " ".join(f"{k}={v * 1e3:.2f}ms" for k, v in stages.items())
        if slow:
            request_log.warning(
                "slow request %s/%s id=%r total=%.2fms %s",
                model,
                version,
                request_id,
                total_s * 1e3,
                breakdown,
                extra={"event": "slow_request", **fields},
            )
        else:
            request_log.info(
                "request %s/%s id=%r total=%.2fms %s",
                model,
                version,
                request_id,
                total_s * 1e3,
                breakdown,
                extra={"event": "request", **fields},
            )
