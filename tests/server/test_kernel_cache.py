"""The kernel cache: by default in the user's cache directory, never inside the installed package; read-only:
warmed once by `hotwire warm-kernels`, then used by processes that cannot write to it, compiling
nothing; cold and read-only, or with nothing writable at all, kernels still work.

"Read-only" is real here: the reading processes are refused writes by the kernel
(a non-root test runner with the directory chmod'ed a-w, or root with CAP_DAC_OVERRIDE dropped by `setpriv`);
each test checks that first and skips where it cannot be arranged.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotwire import kernels
from hotwire.kernels import cache as kernel_cache_paths

CANNOT_WRITE = ["--bounding-set", "-dac_override,-dac_read_search,-fowner,-linux_immutable", "--"]

STATS = """
import json
from numba.core.dispatcher import Dispatcher
from hotwire.server import kernel_cache
def stats():
    used = {}
    for module in kernel_cache.kernel_modules():
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher) and value.__module__ == module.__name__:
                s = value.stats
                if s.cache_hits or s.cache_misses:
                    used[f"{module.__name__}.{name}"] = {
                        "path": str(s.cache_path),
                        "hits": sum(s.cache_hits.values()),
                        "misses": sum(s.cache_misses.values()),
                    }
    return used
"""

WRITE_PROBE = """
import os, sys, tempfile
try:
    tempfile.TemporaryFile(dir=sys.argv[1]).close()
except OSError:
    sys.exit(0)
sys.exit(1)
"""


def _make_read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="module")
def read_only_prefix(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command prefix under which a child process cannot write to a chmod a-w directory."""
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif shutil.which("setpriv"):
        prefix = [shutil.which("setpriv") or "setpriv", *CANNOT_WRITE]
    else:
        pytest.skip("running as root without setpriv: cannot make a directory read-only for a child process")
    probe = tmp_path_factory.mktemp("probe")
    _make_read_only(probe)
    result = subprocess.run(
        [*prefix, sys.executable, "-c", WRITE_PROBE, str(probe)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot make a directory read-only for a child process here: {result.stderr.strip()[-300:]}"
        )
    return prefix


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "HOTWIRE_"))}
    env.update(extra)
    return env


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _numba_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.suffix in (".nbi", ".nbc")]


@pytest.fixture(scope="module")
def warmed_cache(tmp_path_factory: pytest.TempPathFactory, read_only_prefix: list[str]) -> Iterator[Path]:
    """A kernel cache filled by `hotwire warm-kernels` with no directory configured (so: the per-user default
    under XDG_CACHE_HOME), then made read-only; as NUMBA_CACHE_DIR it has the same layout."""
    xdg = tmp_path_factory.mktemp("xdg")
    package = Path(kernels.__file__).parent
    package_before = {p: p.stat().st_mtime_ns for p in _numba_files(package)}
    result = subprocess.run(
        [sys.executable, "-m", "hotwire.server", "warm-kernels"],
        env=_env(XDG_CACHE_HOME=str(xdg)),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    cache = xdg / "hotwire" / "kernels"
    assert "compiled" in result.stdout and str(cache) in result.stdout, result.stdout
    assert _numba_files(cache), "warm-kernels cached nothing"
    # nothing written inside the package: pip's uninstall would leave it behind
    assert {p: p.stat().st_mtime_ns for p in _numba_files(package)} == package_before
    _make_read_only(cache)
    yield cache
    _make_writable(cache)


def test_the_default_cache_is_per_user_and_never_inside_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache_paths.cache_root() == str(tmp_path / "xdg" / "hotwire" / "kernels")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_cache_paths.cache_root() == str(tmp_path / "home" / ".cache" / "hotwire" / "kernels")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "configured"))
    assert kernel_cache_paths.cache_root() == str(tmp_path / "configured")


def _snapshot(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


def test_a_read_only_warmed_cache_is_loaded_at_model_load_and_nothing_compiles(
    warmed_cache, read_only_prefix
):
    script = STATS + (
        "import asyncio, sys, tempfile\n"
        "from hotwire.server.config import bundled_repository\n"
        "from hotwire.server.registry import Registry\n"
        "try:\n"
        "    tempfile.TemporaryFile(dir=sys.argv[1]).close(); writable = True\n"
        "except OSError:\n"
        "    writable = False\n"
        "async def main():\n"
        "    registry = Registry(32)\n"
        "    await registry.load_repository(bundled_repository())\n"
        "    assert registry.all_ready(), [e.reason() for e in registry.models()]\n"
        "    await registry.close()\n"
        "asyncio.run(main())\n"
        "imported = sorted(m for m in sys.modules if m.startswith('hotwire.kernels.'))\n"
        "print(json.dumps({'writable': writable, 'imported': imported, 'kernels': stats()}))\n"
    )
    before = _snapshot(warmed_cache)
    result = subprocess.run(
        [*read_only_prefix, sys.executable, "-c", script, str(warmed_cache)],
        env=_env(NUMBA_CACHE_DIR=str(warmed_cache), NUMBA_DEBUG_CACHE="1"),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = _last_json(result.stdout)
    assert report["writable"] is False  # the test really ran against a read-only directory
    kernels = report["kernels"]
    assert kernels, "no kernel ran at model load"
    # every kernel came from the warmed directory (numba alone skips it and uses kernels/__pycache__
    # instead) ...
    assert {k: v["path"] for k, v in kernels.items() if not v["path"].startswith(str(warmed_cache))} == {}
    # ... loaded, none compiled, nothing written anywhere
    assert {k: v["misses"] for k, v in kernels.items() if v["misses"]} == {}
    # only what the bundled pipeline (image_classifier: resize, normalize) needs was imported and loaded
    assert report["imported"] == ["hotwire.kernels.cache", "hotwire.kernels.image"]
    assert {k.rsplit(".", 1)[0] for k in kernels} == {"hotwire.kernels.image"}
    assert sum(v["hits"] for v in kernels.values()) >= 5
    debug = result.stdout
    loads = [line for line in debug.splitlines() if "data loaded from" in line]
    assert loads and all(str(warmed_cache) in line for line in loads), loads[:5]
    assert "saved to" not in debug
    assert "compile in memory" not in result.stderr
    assert _snapshot(warmed_cache) == before


def test_warm_kernels_check_passes_on_the_read_only_warmed_cache(warmed_cache, read_only_prefix):
    result = subprocess.run(
        [*read_only_prefix, sys.executable, "-m", "hotwire.server", "warm-kernels", "--check"],
        env=_env(HOTWIRE_KERNEL_CACHE_DIR=str(warmed_cache)),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(warmed_cache) in result.stdout and " 0 compiled" in result.stdout, result.stdout


@pytest.mark.slow
def test_a_cold_read_only_cache_compiles_in_memory_with_a_warning(tmp_path, read_only_prefix):
    cache = tmp_path / "cold"
    cache.mkdir()
    _make_read_only(cache)
    try:
        result = subprocess.run(
            [
                *read_only_prefix,
                sys.executable,
                "-m",
                "hotwire.server",
                "warm-kernels",
                "--kernel-cache-dir",
                str(cache),
            ],
            env=_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert result.returncode == 1, result.stderr[-3000:]  # the kernels work, but the cache was not warmed
        assert "compile in memory" in result.stderr and str(cache) in result.stderr, result.stderr[-3000:]
        assert "could not be saved" in result.stdout and "0 kernel signatures loaded" in result.stdout
        assert list(cache.iterdir()) == []  # never written to (its kernels/ subdirectory not even created)
    finally:
        _make_writable(cache)


def test_importing_kernels_needs_no_writable_directory(tmp_path, read_only_prefix):
    """Nothing writable at all (no cache directory configured, read-only sources and home): numba alone fails
    the import ("cannot cache function ...: no locator available"); here the kernel compiles in memory with a
    warning, and nothing is written next to its source."""
    package = tmp_path / "src"
    package.mkdir()
    (package / "ro_kernel.py").write_text(
        "from numba import njit\n\n\n@njit(cache=True)\ndef add_one(x):\n    return x + 1\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import hotwire.kernels, sys\n"  # installs the kernel cache locators, as the server's imports do
        "sys.path.insert(0, sys.argv[1])\n"
        "import ro_kernel\n"
        "assert ro_kernel.add_one(41) == 42\n"
        "print(ro_kernel.add_one.stats.cache_path, sum(ro_kernel.add_one.stats.cache_misses.values()))\n"
    )
    _make_read_only(package)
    _make_read_only(home)
    try:
        result = subprocess.run(
            [*read_only_prefix, sys.executable, "-c", script, str(package)],
            env=_env(HOME=str(home), XDG_CACHE_HOME=str(home), PYTHONDONTWRITEBYTECODE="1"),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        cache_path, misses = result.stdout.split()
        assert cache_path.startswith(str(home / "hotwire" / "kernels")) and misses == "1", result.stdout
        assert "compile in memory" in result.stderr
        assert sorted(p.name for p in package.iterdir()) == ["ro_kernel.py"]
        assert list(home.iterdir()) == []
    finally:
        _make_writable(package)
        _make_writable(home)


def test_with_no_cache_directory_at_all_kernels_compile_in_memory_with_one_warning(tmp_path):
    """No NUMBA_CACHE_DIR, no XDG_CACHE_HOME and no home to find a cache in (an arbitrary container UID)."""
    script = (
        "from hotwire.kernels import tabular\n"
        "tabular.warm()\n"
        "print(sum(tabular._clip.stats.cache_misses.values()))\n"
    )
    env = {k: v for k, v in _env(HOME="relative").items() if k != "XDG_CACHE_HOME"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) >= 1
    warnings = [line for line in result.stderr.splitlines() if "kernel" in line]
    assert len(warnings) == 1 and "compile in memory" in warnings[0] and "is missing" in warnings[0], warnings
    assert list(tmp_path.iterdir()) == []


def test_warm_kernels_is_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "hotwire.server", "warm-kernels", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--kernel-cache-dir" in result.stdout and "--check" in result.stdout
