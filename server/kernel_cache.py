"""`hotwire warm-kernels`: fill the numba kernel cache (e.g. at image build) so servers using it compile nothing.

The cache's locators, which make a warmed read-only cache usable, are in hotwire.kernels.cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

from hotwire.kernels import cache


@dataclass
class WarmReport:
    loaded: int = 0  # signatures loaded from the on-disk cache
    compiled: int = 0  # signatures compiled (saved to the cache unless listed in `unsaved`)
    unsaved: list[tuple[str, str]] = field(default_factory=list)  # (kernel, signature) compiled but not cached
    cache_paths: set[str] = field(default_factory=set)


def kernel_modules() -> list[ModuleType]:
    from hotwire.kernels import batching, image, sequence, tabular

    return [batching, image, tabular, sequence]


def warm() -> WarmReport:
    """Compile or load every CPU kernel for every signature the server uses (what model loads warm), in this
    process; report what came from the cache and what had to be compiled."""
    from numba.core.dispatcher import Dispatcher

    from hotwire.kernels import batching
    from hotwire.server import preprocess

    before = len(cache.unsaved())
    batching.warm()
    preprocess.warm()
    report = WarmReport(unsaved=cache.unsaved()[before:])
    for module in kernel_modules():
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and value.__module__ == module.__name__:
                stats = value.stats
                report.loaded += sum(stats.cache_hits.values())
                report.compiled += sum(stats.cache_misses.values())
                if stats.cache_hits or stats.cache_misses:
                    report.cache_paths.add(str(stats.cache_path))
    return report
