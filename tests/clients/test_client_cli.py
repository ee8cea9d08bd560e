"""`hotwire infer / models / health / rollback / traffic / client generate` as a user runs them: real
processes against a real server, outputs compared with in-process onnxruntime, exit codes 0 (OK), 1 (the
server's error), 2 (usage)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_models import add_sub, bytes_identity, ort_reference, tiny_model, write_model

SIMPLE_CONFIG = """
name: "simple"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


SIMPLE = add_sub(offset=1.0)


def hotwire(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotwire.server", *args], capture_output=True, text=True, timeout=timeout
    )


def escaping_output_model() -> onnx.ModelProto:
    """An identity whose output is named like a path out of any directory."""
    return tiny_model(
        [helper.make_node("Identity", ["x"], ["../../escaped"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("../../escaped", TensorProto.FLOAT, ["batch", 4])],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "simple", SIMPLE, SIMPLE_CONFIG)
    write_model(root, "words", bytes_identity())
    write_model(root, "escape", escaping_output_model())
    return root


@pytest.fixture
def address(running_server, repository: Path) -> str:
    return running_server(repository).address


def test_infer_reads_npy_inputs_and_writes_outputs_equal_to_onnxruntime(address, repository, tmp_path):
    rng = np.random.default_rng(3)
    feeds = {name: rng.random((2, 16), dtype=np.float32) for name in ("INPUT0", "INPUT1")}
    for name, array in feeds.items():
        np.save(tmp_path / f"{name}.npy", array)
    result = hotwire(
        "infer", "simple", "--url", address, "--output-dir", str(tmp_path / "out"),
        "--input", f"INPUT0={tmp_path / 'INPUT0.npy'}", "--input", f"INPUT1={tmp_path / 'INPUT1.npy'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = ort_reference(SIMPLE, feeds)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{name}.npy"), expected[name])
        assert f"{name}: FP32 [2, 16] -> " in result.stdout


def test_infer_random_prints_every_output_and_output_limits_them(address):
    result = hotwire("infer", "simple", "--random", "--url", address, "--output", "OUTPUT1")
    assert result.returncode == 0, result.stderr
    assert "simple version 1" in result.stdout and "OUTPUT1: FP32 [1, 16]" in result.stdout
    assert "OUTPUT0" not in result.stdout
    words = hotwire("infer", "words", "--random", "--url", address)
    assert words.returncode == 0, words.stderr
    assert "BYTES [1, 16]" in words.stdout


def test_an_output_name_cannot_write_outside_the_output_directory(address, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    out = tmp_path / "deep" / "out"
    result = hotwire(
        "infer", "escape", "--input", f"x={tmp_path / 'x.npy'}", "--url", address, "--output-dir", str(out)
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.npy"))
    assert written == [Path("deep/out/_.._escaped.npy"), Path("x.npy")], written
    np.testing.assert_array_equal(np.load(out / "_.._escaped.npy"), np.ones((1, 4), np.float32))


def test_server_errors_exit_1_with_the_servers_message(address, tmp_path):
    unknown = hotwire("infer", "nosuchmodel", "--random", "--url", address)
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr and "nosuchmodel" in unknown.stderr
    np.save(tmp_path / "bad.npy", np.ones((1, 3), np.float32))
    bad = hotwire(
        "infer", "simple", "--input", f"INPUT0={tmp_path / 'bad.npy'}", "--random", "--url", address
    )
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "INPUT0" in bad.stderr
    unreachable = hotwire("health", "--url", "127.0.0.1:1", "--timeout", "3")
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("infer", "simple"), "give the inputs"),
        (("infer", "simple", "--input", "INPUT0"), "expected NAME=FILE.npy"),
        (("infer", "simple", "--input", "INPUT0=/nonexistent.npy"), "cannot read"),
        (("models", "--bogus"), "unrecognized arguments"),
        (("traffic", "simple"), "nothing to change"),
        (("client", "generate"), "--out"),
        (("client",), "COMMAND"),
    ],
)
def test_usage_errors_exit_2(address, args, message):
    result = hotwire(*args, "--url", address)
    assert result.returncode == 2
    assert message in result.stderr


def test_models_lists_versions_states_and_roles(address):
    result = hotwire("models", "--url", address)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["MODEL", "VERSION", "STATE"]
    assert ["simple", "1", "READY", "stable"] in rows
    assert ["words", "1", "READY", "stable"] in rows


def test_health_exits_0_when_serving_and_1_for_a_model_that_is_not(address):
    server = hotwire("health", "--url", address)
    assert server.returncode == 0 and "live=True ready=True health=SERVING" in server.stdout
    model = hotwire("health", "simple", "--url", address)
    assert model.returncode == 0 and "model simple" in model.stdout
    missing = hotwire("health", "absent", "--url", address)
    assert missing.returncode == 1
    assert "ready=False" in missing.stdout or "NOT_FOUND" in missing.stderr


def test_rollback_and_traffic_through_the_client(running_server, tmp_path):
    for version in (1, 2):
        write_model(tmp_path, "simple", add_sub(offset=float(version)), SIMPLE_CONFIG, version=version)
    (tmp_path / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG + "version_policy { all { } }\n")
    server = running_server(tmp_path)
    assert server.app.registry.route("simple", "").version == 2
    rolled = hotwire("rollback", "simple", "--to", "1", "--url", server.address)
    assert rolled.returncode == 0, rolled.stderr
    assert "traffic now on version 1" in rolled.stdout
    assert server.app.registry.route("simple", "").version == 1
    moved = hotwire("traffic", "simple", "--stable", "2", "--url", server.address)
    assert moved.returncode == 0, moved.stderr
    assert server.app.registry.route("simple", "").version == 2


def test_client_generate_writes_a_module_whose_client_answers_equal_to_onnxruntime(address, tmp_path):
    out = tmp_path / "mymodels.py"
    result = hotwire("client", "generate", "--url", address, "--model", "simple", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"{out}: typed clients of simple" in result.stdout
    spec = importlib.util.spec_from_file_location("mymodels", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(4)
    feeds = {name: rng.random((2, 16), dtype=np.float32) for name in ("INPUT0", "INPUT1")}
    with module.SimpleClient(address) as client:
        outputs = client.infer(INPUT0=feeds["INPUT0"], INPUT1=feeds["INPUT1"])
    expected = ort_reference(SIMPLE, feeds)
    np.testing.assert_array_equal(outputs.OUTPUT0, expected["OUTPUT0"])
    np.testing.assert_array_equal(outputs.OUTPUT1, expected["OUTPUT1"])

    every = hotwire("client", "generate", "--url", address, "--out", str(tmp_path / "all.py"))
    assert every.returncode == 0, every.stderr
    assert "typed clients of escape, simple, words" in every.stdout
    unknown = hotwire(
        "client", "generate", "--url", address, "--model", "absent", "--out", str(tmp_path / "x.py")
    )
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr and "absent" in unknown.stderr
    assert not (tmp_path / "x.py").exists()
