"""The hotwire under test is the package tree, whole: a directory left behind in site-packages by an earlier
install (files pip did not know of, such as numba cache files written next to the kernels) makes Python import
that directory as a namespace package instead, silently skipping the package's __init__."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

PACKAGES = ("hotwire.proto", "hotwire.server", "hotwire.kernels", "hotwire.clients", "hotwire.bench")


@pytest.mark.parametrize("name", PACKAGES)
def test_each_hotwire_package_is_a_regular_package(name):
    package = importlib.import_module(name)
    assert package.__file__ is not None, (
        f"{name} was imported as a namespace package from {list(package.__path__)}: a leftover directory of "
        "an "
        "earlier install shadows this one; remove it"
    )
    assert Path(package.__file__).name == "__init__.py"


def test_the_tests_kernel_cache_is_their_own():
    """Every kernel of this process caches in the run's own directory (tests/conftest.py), not the user's."""
    import os

    from hotwire.kernels import tabular

    cache = os.environ["NUMBA_CACHE_DIR"]
    assert Path(cache).name.startswith("hotwire-test-kernels-")
    assert tabular._clip._cache._cache_path.startswith(cache)
