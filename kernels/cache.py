"""numba's on-disk kernel cache: never inside an installed package, and usable read-only
(a warmed Docker image layer, a read-only volume).

numba alone picks one cache directory per function when it is decorated: NUMBA_CACHE_DIR, then the module's
__pycache__, then the user's cache directory. Two things go wrong with that for a server:

- without NUMBA_CACHE_DIR it writes into the module's __pycache__, i.e. into `site-packages/hotwire/kernels/`
  of an installed hotwire. pip does not know those files and leaves them behind on uninstall, and the
  directory left over then shadows a later (editable) install of hotwire as a namespace package;
- it probes each directory by writing a temporary file there and skips it on OSError, so a warmed but
  read-only NUMBA_CACHE_DIR is silently ignored, and where nothing is writable importing a kernel module fails
  with "cannot cache function ...: no locator available".

`install()` (run by `hotwire.kernels` before any kernel is decorated) therefore replaces numba's locators:

- `KernelCacheLocator`, for every function whose source file exists: the configured directory
  (NUMBA_CACHE_DIR, set from --kernel-cache-dir) or else the per-user default `default_dir()`
  (`$XDG_CACHE_HOME/hotwire/kernels`, else `~/.cache/hotwire/kernels`). Writable, it behaves as numba's;
  read-only (or impossible to create), kernels are loaded from it when it holds them and nothing is ever
  written there; a miss compiles in memory (a warning), so importing the kernels never fails for want of a
  writable directory.
- numba's own locators stay behind it, reached only for functions without a source file on disk
  (its zip locator).

A compile whose result cannot be saved (and a cache that cannot be read) is logged and kept in memory instead
of failing the call. numba's NUMBA_CACHE_LOCATOR_CLASSES, when set, still overrides the locator list.

Warm a cache with `hotwire warm-kernels --kernel-cache-dir DIR` (hotwire.server.kernel_cache); it loads in any
process whose NUMBA_CACHE_DIR is DIR, on the same CPU model (numba keys entries by CPU name and features) and
the same sources.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from typing import Any

import numba
from numba.core import caching, config

log = logging.getLogger("hotwire.kernels")

# The numba releases this module's use of numba's private caching internals was run against: [lowest, first
# untested). pyproject.toml pins the same range (tests/kernels/test_cache.py checks both); widen it only after
# running tests/server/test_kernel_cache.py under the new release.
TESTED_NUMBA = ((0, 61, 2), (0, 69))

_probed: dict[str, bool] = {}  # cache path -> writable, probed once per process
_warned: set[str] = set()  # cache paths whose in-memory compiles were already explained at WARNING
# (kernel, signature) compiled in memory this process: nothing could store them
_unsaved: list[tuple[str, str]] = []


def configured_dir() -> str:
    """The configured cache root (NUMBA_CACHE_DIR, possibly set after numba was imported), or ''."""
    config.reload_config()
    return str(config.CACHE_DIR)  # type: ignore[attr-defined]  # numba sets its config attributes at run time


def default_dir() -> str:
    """The per-user cache root used when none is configured (XDG's cache directory), or '' without a home."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # no home to expand "~" to (an arbitrary container UID): nowhere by default
        return ""
    return os.path.join(base, "hotwire", "kernels")


def cache_root() -> str:
    """Where kernels are cached in this process: the configured directory, else the per-user default."""
    return configured_dir() or default_dir()


def _writable(path: str, create: bool) -> bool:
    if path not in _probed:
        try:
            if create:
                os.makedirs(path, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except OSError:
            _probed[path] = False
        else:
            _probed[path] = True
    return _probed[path]


class _LoadOnlyWhenReadOnly(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """A locator numba always accepts: loads from its directory whether or not it can write there."""

    def __init__(
        self, py_func: Any, py_file: str, cache_path: str, writable: bool, loadable: bool = True
    ) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = cache_path
        self.writable = writable
        self.loadable = loadable  # False: there is no directory at all, so there is nothing to look for

    def get_cache_path(self) -> str:
        return self._cache_path

    def ensure_cache_path(self) -> None:
        # never reached through numba's save (see _save_overload); kept for any other caller
        if not self.writable:
            raise PermissionError(errno.EACCES, "read-only kernel cache", self._cache_path)
        super().ensure_cache_path()


class KernelCacheLocator(_LoadOnlyWhenReadOnly):
    """`cache_root()` (same layout as numba's UserProvidedCacheLocator), used even when read-only."""

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> KernelCacheLocator | None:
        if not os.path.exists(py_file):
            return None
        root = cache_root()
        # no directory at all (no NUMBA_CACHE_DIR, no home): nothing loads or saves; compiles in memory
        if not root:
            return cls(
                py_func, py_file, "(none: no NUMBA_CACHE_DIR and no home directory)", False, loadable=False
            )
        path = os.path.join(root, cls.get_suitable_cache_subpath(py_file))
        return cls(py_func, py_file, path, _writable(path, create=True))


def _kernel_name(cache: caching.Cache) -> str:
    func = getattr(cache, "_py_func", None)
    return f"{func.__module__}.{func.__qualname__}" if func is not None else repr(cache)


def _compiled_in_memory(cache: caching.Cache, sig: Any, reason: str) -> None:
    path = cache.cache_path
    _unsaved.append((_kernel_name(cache), str(sig)))
    if path in _warned:
        log.debug("kernel %s%s compiled in memory (%s)", _kernel_name(cache), sig, reason)
        return
    _warned.add(path)
    log.warning(
        "numba kernels compile in memory, uncached: the kernel cache %s %s and does not hold them "
        "(first: %s). They compile at model load, never on a request, but every start pays for it: warm the "
        "cache where it is writable (`hotwire warm-kernels --kernel-cache-dir DIR`, e.g. at image build, on "
        "the CPU model it will run on) and serve with the same --kernel-cache-dir",
        path,
        reason,
        _kernel_name(cache),
    )


def _save_overload(self: caching.Cache, sig: Any, data: Any) -> None:
    locator = self._impl.locator
    if not isinstance(locator, _LoadOnlyWhenReadOnly):
        return _numba_save_overload(self, sig, data)
    if locator.writable:
        try:
            return _numba_save_overload(self, sig, data)
        except OSError as exc:
            reason = f"could not be written ({exc})"
    else:
        reason = "is read-only" if locator.loadable else "is missing"
    _compiled_in_memory(self, sig, reason)
    return None


def _load_overload(self: caching.Cache, sig: Any, target_context: Any) -> Any:
    locator = self._impl.locator
    if isinstance(locator, _LoadOnlyWhenReadOnly) and not locator.loadable:
        return None
    try:
        return _numba_load_overload(self, sig, target_context)
    except OSError as exc:  # an unreadable cache is a miss, never a failed call
        if not isinstance(self._impl.locator, _LoadOnlyWhenReadOnly):
            raise
        log.warning(
            "kernel cache %s could not be read (%s): compiling %s%s",
            self.cache_path,
            exc,
            _kernel_name(self),
            sig,
        )
        return None


_numba_save_overload = caching.Cache.save_overload
_numba_load_overload = caching.Cache.load_overload


def numba_tested(version: str) -> bool:
    """Whether a numba version string lies in TESTED_NUMBA."""
    release = tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())
    low, high = TESTED_NUMBA
    return low <= release < high


def install() -> None:
    """Put the locators around numba's defaults and guard saves and loads; idempotent. Run before kernels are
    decorated (`hotwire.kernels` does it on import). These are numba internals (see TESTED_NUMBA): if a numba
    release moves them, numba's own behaviour is kept and a warning says a read-only cache won't be used."""
    if getattr(caching.CacheImpl, "_hotwire_kernel_cache", False):
        return
    if not numba_tested(numba.__version__):
        log.warning(
            "numba %s is outside the releases hotwire's kernel cache was tested with (%s to before %s): "
            "its cache may be written next to the kernels or not be used read-only",
            numba.__version__,
            ".".join(map(str, TESTED_NUMBA[0])),
            ".".join(map(str, TESTED_NUMBA[1])),
        )
    try:
        # numba's own stay behind ours but are reached only for sources not on disk (its zip locator): ours
        # takes every function whose file exists, so nothing is ever written next to the sources.
        defaults = caching.CacheImpl._locator_classes
        caching.CacheImpl._locator_classes = [KernelCacheLocator, *defaults]  # type: ignore[list-item]
        caching.Cache.save_overload = _save_overload  # type: ignore[method-assign]
        caching.Cache.load_overload = _load_overload  # type: ignore[method-assign]
    except AttributeError as exc:
        log.warning("numba's cache internals changed (%s): a read-only kernel cache will not be used", exc)
        return
    caching.CacheImpl._hotwire_kernel_cache = True  # type: ignore[attr-defined]


def unsaved() -> list[tuple[str, str]]:
    """(kernel, signature) compiled in memory in this process because nothing could store them."""
    return _unsaved
