"""External tools some tests need (perf_analyzer, promtool): where one is missing, those tests skip saying why
— except under CI (CI=true), whose job is to prove they work, where a missing tool fails the test."""

from __future__ import annotations

import os

import pytest


def missing(why: str) -> None:
    """Skip the calling test (fail it under CI=true): the tool it needs can't run here, for `why`."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)
