"""hotwire.clients.generate against a real server on 127.0.0.1: the generated module for the bundled models
and for models whose names are not identifiers imports, passes `mypy --strict` (and mypy rejects a wrong dtype
through its annotations) and ruff, answers equal to in-process onnxruntime, blocking and async; generation is
deterministic; the checks made before sending raise InvalidInput with no round trip; names map by the rule."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import hotwire.clients
import hotwire.proto
import hotwire.server
from external_tools import missing
from hotwire.clients import AsyncClient, Client, InvalidInput, ModelMetadata, ServerError, TensorMetadata
from hotwire.clients.generate import ModelSpec, class_stems, fetch_models, identifiers, render, write
from onnx_models import ONNX_TYPES, add_sub, ort_reference, tiny_model, write_model
from server_harness import ServerThread

EXAMPLES = Path(hotwire.server.__file__).parent / "example_repository"
CLASSIFIER = onnx.load(str(EXAMPLES / "classifier" / "1" / "model.onnx"))
REPO_ROOT = Path(__file__).resolve().parents[2]

# "my-model": Identity from each input to an output, names that are not identifiers, several datatypes
ODD_TENSORS = [  # (input, output, datatype, dims after the batch)
    ("input:0", "output:0", "FP16", [2]),
    ("class", "for", "BOOL", [3]),
    ("1st", "2nd", "INT64", ["n"]),
    ("my-input", "my-output", "BYTES", [2]),
    ("my_input", "my.output", "UINT8", [2]),
    ("timeout", "self", "FP64", [1]),
]


def odd_model() -> onnx.ModelProto:
    nodes, inputs, outputs = [], [], []
    for source, target, datatype, dims in ODD_TENSORS:
        nodes.append(helper.make_node("Identity", [source], [target]))
        inputs.append(helper.make_tensor_value_info(source, ONNX_TYPES[datatype], ["batch", *dims]))
        outputs.append(helper.make_tensor_value_info(target, ONNX_TYPES[datatype], ["batch", *dims]))
    return tiny_model(nodes, inputs, outputs)


ODD = odd_model()
SIMPLE = add_sub()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("repo")
    for name in ("classifier", "image_classifier"):
        shutil.copytree(EXAMPLES / name, root / name)
    write_model(root, "my-model", ODD)
    write_model(root, "my_model", SIMPLE)  # its class stem collides with my-model's
    server = ServerThread(root).start()
    yield server
    server.stop()


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"generated_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Generated:
    def __init__(self, root: Path, bundled: ModuleType, odd: ModuleType) -> None:
        self.root = root
        self.bundled = bundled
        self.odd = odd


@pytest.fixture(scope="module")
def generated(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Generated:
    root = tmp_path_factory.mktemp("generated")
    assert write(server.address, ["image_classifier", "classifier"], root / "bundled.py") == [
        "classifier",
        "image_classifier",
    ]
    assert write(server.address, None, root / "odd.py") == [
        "classifier",
        "image_classifier",
        "my-model",
        "my_model",
    ]
    (root / "nasty.py").write_text(render(NASTY, "nowhere:1"))
    return Generated(root, _import(root / "bundled.py"), _import(root / "odd.py"))


def _inference_counts(client: Client, model: str) -> tuple[int, int, int]:
    stats = client.statistics(model).model_stats[0]
    return stats.inference_count, stats.inference_stats.success.count, stats.inference_stats.fail.count


# ----- the bundled models -----------------------------------------------------------------------------------


def test_the_bundled_models_answer_equal_to_onnxruntime(server, generated):
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    module = generated.bundled
    assert module.ClassifierClient.MODEL_NAME == "classifier"
    assert module.ClassifierClient.MAX_BATCH_SIZE == 64
    assert module.ClassifierClient.INPUTS == (TensorMetadata("input", "FP32", (-1, 16)),)
    with module.ClassifierClient(server.address) as client:
        outputs = client.infer(input=x)
    assert isinstance(outputs, module.ClassifierOutputs)
    np.testing.assert_array_equal(
        outputs.probabilities, ort_reference(CLASSIFIER, {"input": x})["probabilities"]
    )
    with pytest.raises(AttributeError):
        outputs.probabilities = x  # frozen

    # image_classifier's server-side preprocessing has no ORT reference: the same answer as the plain client's
    image = np.random.default_rng(1).integers(0, 255, (2, 20, 30, 3), dtype=np.uint8)
    with Client(server.address) as plain:
        expected = plain.infer("image_classifier", {"image": image})["probabilities"]
        shared = module.ImageClassifierClient(plain, version="1")
        np.testing.assert_array_equal(shared.infer(image=image, timeout=10.0).probabilities, expected)
        shared.close()  # a Client it was given stays open
        assert plain.infer("classifier", {"input": x})["probabilities"].shape == (3, 4)
        with pytest.raises(TypeError, match="timeout"):
            module.ClassifierClient(plain, timeout=3.0)


def test_the_async_clients_answer_equal_to_onnxruntime(server, generated):
    module = generated.bundled
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)

    async def main() -> tuple[Any, Any]:
        async with module.AsyncClassifierClient(server.address, multiplex=False) as own:
            first = await own.infer(input=x, request_id="r1")
        async with AsyncClient(server.address) as client:
            shared = module.AsyncClassifierClient(client)
            second = await shared.infer(input=x[:1])
            await shared.close()
            assert (await client.infer("classifier", {"input": x}))["probabilities"].shape == (2, 4)
        return first, second

    first, second = asyncio.run(main())
    expected = ort_reference(CLASSIFIER, {"input": x})["probabilities"]
    np.testing.assert_array_equal(first.probabilities, expected)
    np.testing.assert_array_equal(second.probabilities, expected[:1])


def test_the_checks_before_sending_raise_invalid_input_without_a_round_trip(server, generated):
    module = generated.bundled
    good = np.zeros((2, 16), np.float32)
    with Client(server.address) as plain, module.ClassifierClient(plain) as client:
        assert client.infer(input=good).probabilities.shape == (2, 4)
        before = _inference_counts(plain, "classifier")
        cases = [
            (good.astype(np.float64), r"expected FP32 \(numpy float32\), got dtype float64"),
            (good.astype(np.int32), "expected FP32"),
            (good[0], r"expected shape \[batch, 16\], got \[16\]"),
            (good[:, :15], r"expected shape \[batch, 16\], got \[2, 15\]"),
            (good[None], r"expected shape \[batch, 16\], got \[1, 2, 16\]"),
            (np.zeros((65, 16), np.float32), "a batch of 65 is over the model's max_batch_size 64"),
            (good.tolist(), "expected a NumPy array of FP32"),
        ]
        for value, message in cases:
            with pytest.raises(InvalidInput, match=f"model 'classifier' input 'input': {message}") as caught:
                client.infer(input=value)
            assert caught.value.status == "INVALID_ARGUMENT"
        assert client.infer(input=np.zeros((64, 16), np.float32)).probabilities.shape == (64, 4)
        after = _inference_counts(plain, "classifier")
    assert after[0] == before[0] + 64 and after[1] == before[1] + 1 and after[2] == before[2], (
        "only the last call reached the server"
    )


def test_generation_is_deterministic(server, generated, tmp_path):
    again = tmp_path / "again.py"
    write(server.address, ["classifier", "image_classifier", "classifier"], again)
    assert again.read_bytes() == (generated.root / "bundled.py").read_bytes()
    with Client(server.address) as client:
        specs = fetch_models(client, None)
    assert [spec.name for spec in specs] == ["classifier", "image_classifier", "my-model", "my_model"]
    assert specs[0].max_batch_size == 64 and specs[0].metadata.inputs[0].shape == (-1, 16)
    assert render(specs[::-1], server.address) == (generated.root / "odd.py").read_text()
    text = render(specs[:2], "localhost:8001")
    assert "localhost:8001" in text and not re.search(r"20\d\d-\d\d-\d\d", text)


# ----- names that are not identifiers -----------------------------------------------------------------------


def test_names_map_by_the_rule():
    assert identifiers(
        ["input:0", "1st", "class", "my-input", "my_input", "my.input", "__x", "", "timeout"]
    ) == [
        "input_0",
        "_1st",
        "class_",
        "my_input",
        "my_input_2",
        "my_input_3",
        "_x",
        "_",
        "timeout_",
    ]
    # a later duplicate's suffix skips another name's own mapping
    assert identifiers(["a-b", "a_b", "a_b_2"]) == ["a_b", "a_b_3", "a_b_2"]
    assert identifiers(["self", "np", "npt", "parameters", "request_id", "None"]) == [
        "self_",
        "np_",
        "npt_",
        "parameters_",
        "request_id_",
        "None_",
    ]
    assert class_stems(["classifier", "image_classifier", "my-model", "my_model", "my_model2", "1st"]) == [
        "Classifier",
        "ImageClassifier",
        "MyModel",
        "MyModel3",
        "MyModel2",
        "Model1st",
    ]
    # AsyncClient and _SyncModel are the module's own: models "async" and "sync" take the next stems
    assert class_stems(["async", "sync", "foo", "async foo"]) == ["Async2", "Sync2", "Foo", "AsyncFoo2"]


def test_a_model_with_names_that_are_not_identifiers_answers_by_its_own_names(server, generated):
    module = generated.odd
    rng = np.random.default_rng(3)
    feeds = {
        "input:0": rng.standard_normal((2, 2)).astype(np.float16),
        "class": rng.random((2, 3)) < 0.5,
        "1st": rng.integers(-5, 5, (2, 7)),
        "my-input": np.array([[b"a", b"b"], [b"", "\u00e9".encode()]], dtype=object),
        "my_input": rng.integers(0, 255, (2, 2)).astype(np.uint8),
        "timeout": rng.standard_normal((2, 1)),
    }
    with module.MyModelClient(server.address) as client:
        outputs = client.infer(
            input_0=feeds["input:0"],
            class_=feeds["class"],
            _1st=feeds["1st"],
            my_input=feeds["my-input"],
            my_input_2=feeds["my_input"],
            timeout_=feeds["timeout"],
            timeout=30.0,
        )
        assert client.MODEL_NAME == "my-model" and client.MAX_BATCH_SIZE > 0
        with pytest.raises(InvalidInput, match=r"model 'my-model' input '1st': expected INT64"):
            client.infer(**{**_odd_arguments(feeds), "_1st": feeds["1st"].astype(np.int32)})
        with pytest.raises(
            InvalidInput, match="input 'my_input': a batch of 1, but input 'input:0' has a batch of 2"
        ):
            client.infer(**{**_odd_arguments(feeds), "my_input_2": feeds["my_input"][:1]})
        # BYTES take object, bytes and str arrays
        strings = client.infer(**{**_odd_arguments(feeds), "my_input": np.array([["x", "y"], ["z", "w"]])})
        assert strings.my_output.tolist() == [[b"x", b"y"], [b"z", b"w"]]
    expected = ort_reference(ODD, feeds)
    fields = {"output_0": "output:0", "for_": "for", "_2nd": "2nd", "my_output": "my-output"}
    fields |= {"my_output_2": "my.output", "self_": "self"}
    assert list(module.MyModelOutputs.__dataclass_fields__) == list(fields)
    for field, wire in fields.items():
        got = getattr(outputs, field)
        assert got.dtype == expected[wire].dtype, field
        np.testing.assert_array_equal(got, expected[wire])

    # "my_model" maps to MyModel too: it gets MyModel2
    x = rng.standard_normal((1, 16)).astype(np.float32)
    with module.MyModel2Client(server.address) as simple:
        result = simple.infer(INPUT0=x, INPUT1=x)
    np.testing.assert_array_equal(
        result.OUTPUT0, ort_reference(SIMPLE, {"INPUT0": x, "INPUT1": x})["OUTPUT0"]
    )


def _odd_arguments(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "input_0": feeds["input:0"],
        "class_": feeds["class"],
        "_1st": feeds["1st"],
        "my_input": feeds["my-input"],
        "my_input_2": feeds["my_input"],
        "timeout_": feeds["timeout"],
    }


# ----- static checks: mypy --strict and ruff ----------------------------------------------------------------

# Generated without a server: names the mapping and the formatting's long-line paths must cope with.
_LONG = "a_really_long_tensor_name_" * 5
NASTY = [
    ModelSpec("async", ModelMetadata("async", ("1",), "", (TensorMetadata("x", "FP32", (4,)),), ())),
    ModelSpec("Sync", ModelMetadata("Sync", (), "python", (), (TensorMetadata("y", "BF16", (4,)),))),
    ModelSpec(
        "1st model " + "long" * 20,
        ModelMetadata(
            "1st model",
            (),
            "onnxruntime_onnx",
            (
                TensorMetadata(_LONG, "FP32", (-1, 2)),
                TensorMetadata("self", "BYTES", (-1,)),
                TensorMetadata('quo"te\\back', "INT8", (-1, 3, -1)),
                TensorMetadata("\u00e9\nnew", "BOOL", (-1,)),
                TensorMetadata("__x", "UINT64", (-1,)),
                TensorMetadata("_x", "UINT64", (-1,)),
                TensorMetadata("opt", "FP16", (-1, 2)),
                TensorMetadata("", "INT32", (-1,)),
            ),
            (TensorMetadata(_LONG + "out", "FP32", (-1, 2)), TensorMetadata("npt", "UINT32", (-1,))),
        ),
        max_batch_size=8,
        optional_inputs=frozenset({"opt"}),
    ),
]

USAGE = """
import numpy as np
import numpy.typing as npt

from bundled import AsyncClassifierClient, ClassifierClient, ClassifierOutputs
from hotwire.clients import Client
from odd import MyModelClient


def probabilities(address: str) -> npt.NDArray[np.float32]:
    x = np.zeros((2, 16), dtype=np.float32)
    return ClassifierClient(address).infer(input=x).probabilities


def shared(client: Client) -> ClassifierOutputs:
    with ClassifierClient(client, version="1") as classifier:
        return classifier.infer(input=np.zeros((1, 16), dtype=np.float32), timeout=5.0, parameters={"k": 1})


async def asynchronous(address: str) -> npt.NDArray[np.float32]:
    async with AsyncClassifierClient(address, multiplex=False) as client:
        return (await client.infer(input=np.zeros((1, 16), dtype=np.float32))).probabilities


def odd(address: str) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_], npt.NDArray[np.float64]]:
    outputs = MyModelClient(address).infer(
        input_0=np.zeros((1, 2), dtype=np.float16),
        class_=np.zeros((1, 3), dtype=np.bool_),
        _1st=np.zeros((1, 5), dtype=np.int64),
        my_input=np.array([[b"a", b"b"]], dtype=object),
        my_input_2=np.zeros((1, 2), dtype=np.uint8),
        timeout_=np.zeros((1, 1), dtype=np.float64),
    )
    return outputs.for_, outputs.my_output, outputs.self_
"""

# Each line marked `# error: CODE` must get that mypy error, and no other line any.
WRONG = """
import numpy as np
import numpy.typing as npt

from bundled import ClassifierClient
from odd import MyModel2Client, MyModelClient

client = ClassifierClient("127.0.0.1:1")
doubles = np.zeros((2, 16), dtype=np.float64)
integers = np.zeros((2, 16), dtype=np.int32)
client.infer(input=doubles)  # error: arg-type
client.infer(input=integers)  # error: arg-type
client.infer(inputs=np.zeros((2, 16), dtype=np.float32))  # error: call-arg
client.infer(np.zeros((2, 16), dtype=np.float32))  # error: call-arg
outputs = client.infer(input=np.zeros((2, 16), dtype=np.float32))
wrong: npt.NDArray[np.int64] = outputs.probabilities  # error: assignment
outputs.logits  # error: attr-defined
MyModelClient("127.0.0.1:1").infer(input_0=np.zeros((1, 2), dtype=np.float16))  # error: call-arg
booleans = np.zeros((1, 2), dtype=np.bool_)
MyModel2Client("127.0.0.1:1").infer(INPUT0=booleans, INPUT1=booleans)  # error: arg-type
"""


def _tool(module: str) -> list[str]:
    if importlib.util.find_spec(module) is None:
        missing(f"{module} is not installed (pip install {module})")
    return [sys.executable, "-m", module]


def test_the_generated_modules_pass_mypy_strict_and_ruff(generated, tmp_path):
    root = generated.root
    (root / "usage.py").write_text(USAGE)
    (root / "wrong.py").write_text(WRONG)
    generated_files = ["bundled.py", "odd.py", "nasty.py"]

    # The editable install's import hook is invisible to mypy: it reads hotwire.clients (and the hotwire.proto
    # it imports) through links named as they are imported, silently (as it reads an installed package).
    links = tmp_path / "links" / "hotwire"
    links.mkdir(parents=True)
    for package in (hotwire.clients, hotwire.proto):
        (links / package.__name__.split(".")[-1]).symlink_to(Path(package.__file__).parent)
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.10\nstrict = True\nfollow_imports = silent\n"
        f"follow_imports_for_stubs = True\nmypy_path = {links.parent}\ncache_dir = {tmp_path / 'cache'}\n"
    )
    mypy = subprocess.run(
        [
            *_tool("mypy"),
            "--config-file",
            str(config),
            "--no-error-summary",
            *generated_files,
            "usage.py",
            "wrong.py",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = sorted(
        {
            (m.group(1), int(m.group(2)), m.group(3))
            for m in re.finditer(r"^([\w.]+):(\d+): error: .*\[([\w-]+)\]$", mypy.stdout, re.MULTILINE)
        }
    )
    expected = sorted(
        ("wrong.py", number, m.group(1))
        for number, line in enumerate(WRONG.split("\n"), 1)
        if (m := re.search(r"# error: ([\w-]+)$", line))
    )
    assert errors == expected, mypy.stdout + mypy.stderr

    ruff = _tool("ruff")
    config_args = ["--config", str(REPO_ROOT / "pyproject.toml")]
    for command in (["check", "--no-cache"], ["format", "--check", "--diff", "--no-cache"]):
        done = subprocess.run(
            [*ruff, *command, *config_args, *generated_files],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout}{done.stderr}"


def test_the_nasty_module_imports_and_checks_its_inputs(generated):
    module = _import(generated.root / "nasty.py")
    nasty = getattr(module, "Model1stModelL" + ("long" * 20)[1:] + "Client")
    assert nasty.MODEL_NAME == "1st model " + "long" * 20 and nasty.OPTIONAL_INPUTS == frozenset({"opt"})
    assert {"Async2Client", "AsyncAsync2Client", "Sync2Client", "Sync2Outputs"} <= set(module.__all__)
    arguments = {
        _LONG: np.zeros((1, 2), np.float32),
        "self_": np.array([b"x"], dtype=object),
        "quo_te_back": np.zeros((1, 3, 5), np.int8),
        "_new": np.zeros(1, np.bool_),
        "_x": np.zeros(1, np.uint64),
        "_x_2": np.zeros(1, np.uint64),
        "_": np.zeros(1, np.int32),
    }
    client = nasty("127.0.0.1:1")  # nothing listens: every call here fails before sending
    with pytest.raises(
        InvalidInput, match=r"""input 'quo"te\\back': expected shape \[batch, 3, -1\], got \[1, 4, 5\]"""
    ):
        client.infer(**{**arguments, "quo_te_back": np.zeros((1, 4, 5), np.int8)})
    with pytest.raises(InvalidInput, match="input 'opt': expected FP16"):
        client.infer(**arguments, opt=np.zeros((1, 2), np.float32))
    with pytest.raises(InvalidInput, match="input '': a batch of 2, but input 'a_really_long_tensor_name_a"):
        client.infer(**{**arguments, "_": np.zeros(2, np.int32)})
    with pytest.raises(InvalidInput, match="input '_x': missing"):
        client.infer(**{**arguments, "_x_2": None})
    client.close()


# ----- fetching ---------------------------------------------------------------------------------------------


class _NoModelConfig:
    """A KServe V2 server without Triton's ModelConfig (MLServer, KServe)."""

    def repository_index(self, ready_only: bool = False) -> list[Any]:
        return [hotwire.clients.RepositoryModel("m", "1", "READY", "")] * 2

    def model_metadata(self, model: str) -> ModelMetadata:
        return ModelMetadata(model, ("1",), "", (TensorMetadata("x", "FP32", (-1, 3)),), ())

    def model_config(self, model: str) -> Any:
        raise ServerError("ModelConfig", "UNIMPLEMENTED")


def test_a_server_without_model_config_gives_shapes_as_they_are():
    specs = fetch_models(_NoModelConfig(), None)
    assert [(spec.name, spec.max_batch_size) for spec in specs] == [("m", 0)]
    assert "MAX_BATCH_SIZE = 0" in render(specs)
    with pytest.raises(ValueError, match="twice"):
        render(specs * 2)
    with pytest.raises(ValueError, match="no model"):
        render([])
