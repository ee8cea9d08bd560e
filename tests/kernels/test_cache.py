"""The kernel cache patches numba's private caching internals, so hotwire runs only on the numba releases that
was tested with: pyproject's pin and the module's TESTED_NUMBA say the same, and the installed numba is
one."""

from __future__ import annotations

from pathlib import Path

import numba
import pytest

from hotwire.kernels import cache

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def test_pyproject_pins_numba_to_the_tested_releases():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    numba_pins = [d.replace(" ", "") for d in dependencies if d.startswith("numba")]
    low, high = cache.TESTED_NUMBA
    assert numba_pins == [f"numba>={_dotted(low)},<{_dotted(high)}"]


def test_the_installed_numba_is_a_tested_release():
    assert cache.numba_tested(numba.__version__), (
        f"numba {numba.__version__} is not in TESTED_NUMBA {cache.TESTED_NUMBA}: run "
        "tests/server/test_kernel_cache.py "
        "with it, then widen TESTED_NUMBA and pyproject's pin together"
    )


@pytest.mark.parametrize(
    ("version", "tested"),
    [
        ("0.61.2", True),
        ("0.68.1", True),
        ("0.68.1+3.gabc", True),
        ("0.61.1", False),
        ("0.69.0", False),
        ("0.69.0rc1", False),
        ("1.0", False),
    ],
)
def test_numba_tested_compares_releases(version, tested):
    assert cache.numba_tested(version) is tested
