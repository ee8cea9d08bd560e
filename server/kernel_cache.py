"""`hotwire warm-kernels`: fill the numba kernel cache (e.g. at image build) so servers using it compile
nothing.

The cache's locators, which make a warmed read-only cache usable, are in hotwire.kernels.cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import CodeType, ModuleType
from typing import Any

from hotwire.kernels import cache


@dataclass
class WarmReport:
    loaded: int = 0  # signatures loaded from the on-disk cache
    compiled: int = 0  # signatures compiled (saved to the cache unless listed in `unsaved`)
    # (kernel, signature) compiled but not cached
    unsaved: list[tuple[str, str]] = field(default_factory=list)
    cache_paths: set[str] = field(default_factory=set)


def kernel_modules() -> list[ModuleType]:
    from hotwire.kernels import image, sequence, tabular

    return [image, tabular, sequence]


def _global_names(code: CodeType) -> Iterator[str]:
    yield from code.co_names
    for constant in code.co_consts:  # nested functions and comprehensions
        if isinstance(constant, CodeType):
            yield from _global_names(constant)


def _helpers(kernels: list[Any]) -> set[str]:
    """Names of the kernels other kernels call. numba compiles such a helper into its caller (and caches it
    too), but a caller loaded from the cache needs no helper: counting helpers would report more signatures
    compiled on a cold cache than are ever loaded from the warm one."""
    helpers = set()
    for kernel in kernels:
        for name in _global_names(kernel.py_func.__code__):
            callee = kernel.py_func.__globals__.get(name)
            if callee is not kernel and any(callee is other for other in kernels):
                helpers.add(f"{callee.py_func.__module__}.{callee.py_func.__qualname__}")
    return helpers


def warm() -> WarmReport:
    """Compile or load every CPU kernel for every signature the server uses (what model loads warm), in this
    process; report what came from the cache and what had to be compiled, counting the kernels the server
    calls (not the helpers compiled into them), so a cold and a warm run count the same signatures."""
    from numba.core.dispatcher import Dispatcher

    from hotwire.server import preprocess

    before = len(cache.unsaved())
    preprocess.warm(preprocess.KERNEL_MODULES)
    kernels = [
        value
        for module in kernel_modules()
        for value in vars(module).values()
        if isinstance(value, Dispatcher) and value.__module__ == module.__name__
    ]
    helpers = _helpers(kernels)
    report = WarmReport(unsaved=[entry for entry in cache.unsaved()[before:] if entry[0] not in helpers])
    for kernel in kernels:
        stats = kernel.stats
        if f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}" in helpers:
            continue
        report.loaded += sum(stats.cache_hits.values())
        report.compiled += sum(stats.cache_misses.values())
        if stats.cache_hits or stats.cache_misses:
            report.cache_paths.add(str(stats.cache_path))
    return report
