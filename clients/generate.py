"""Typed clients generated per model: `hotwire client generate --url HOST:PORT [--model M ...] --out FILE.py`.

    from hotwire.clients import Client
    from hotwire.clients.generate import fetch_models, render
    with Client("localhost:8001") as client:
        Path("models.py").write_text(render(fetch_models(client, None), "localhost:8001"))

The generated module holds, for each model with class stem M (see below), `MClient` over a blocking
`hotwire.clients.Client`, `AsyncMClient` over an `AsyncClient` and `MOutputs`, a frozen dataclass with one
typed field per output. `MClient(target, version="", **client_kwargs)` takes a url (it makes, and closes, a
Client of its own) or a Client to share. Its `infer(*, <input>=array, ..., timeout=None, parameters=None,
request_id=None)` takes the inputs as keyword arguments, their dtype in the annotation and their shape in the
docstring, and checks each one's dtype, rank, fixed dimensions and batch size (at most the model's
max_batch_size, the same in every input) before sending: `InvalidInput`, with no round trip. The module
imports only numpy, the standard library and `hotwire.clients`, and passes `mypy --strict` and ruff (check
and format, under this repository's configuration). The same metadata renders to the same bytes: models
sorted by name, tensors in the metadata's order, no timestamps (and no model versions, which change on every
deploy without changing the inputs and outputs).

Names. Wire names need not be Python identifiers; they map predictably, and the generated code sends the
wire names:

- a tensor's argument (or field) name: each character other than an ASCII letter, digit or "_" becomes "_";
  "_" goes in front of a leading digit (or of an empty name); a leading run of underscores becomes one (Python
  would mangle "__x" in a class body); "_" goes after a Python keyword and after the names the generated code
  uses itself (self, timeout, parameters, request_id, np, npt). "input:0" → input_0, "1st" → _1st, "class" →
  class_, "my-input" → my_input.
- a model's class stem: the runs of ASCII letters and digits of its name, each with its first letter upper-
  cased, joined; "Model" goes in front when that is empty or starts with a digit. "image_classifier" →
  ImageClassifier (ImageClassifierClient, AsyncImageClassifierClient, ImageClassifierOutputs), "my-model" →
  MyModel, "1st" → Model1st.
- collisions (names that differ only in mapped characters): the first keeps its name, in metadata order for a
  model's inputs (and, apart, its outputs) and in model-name order for models; each later one gets the first
  suffix of "_2", "_3", ... (tensors) or "2", "3", ... (class stems) that is free and no other name's own
  mapping. A stem is also skipped when one of its classes would take a name the module already uses.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotwire.clients.client import Client
from hotwire.clients.errors import ServerError
from hotwire.clients.protocol import ModelMetadata, TensorMetadata

__all__ = ["ModelSpec", "class_stems", "fetch_models", "identifiers", "render", "write"]

LINE_LENGTH = 110  # the repository's ruff line-length, which the generated module is formatted to

# Names the generated `infer` methods and output dataclasses use themselves: a tensor mapped to one of them
# gets a trailing "_" like a keyword.
RESERVED = frozenset({"self", "timeout", "parameters", "request_id", "np", "npt"})
# The generated module's own top-level names, which no class made for a model may take.
_MODULE_NAMES = frozenset(
    {
        "annotations", "Any", "AsyncClient", "ClassVar", "Client", "DATATYPES", "Generic", "InferResult",
        "InvalidInput", "Mapping", "ServerError", "TensorMetadata", "TypeVar", "dataclass", "np", "npt",
        "_Model", "_SyncModel", "_AsyncModel", "_Outputs", "_Sync", "_Async", "_dtype_matches", "_dtype_text",
        "_shape_text",
    }
)  # fmt: skip

# The NumPy scalar type of each protocol datatype, as the generated annotations name it; BYTES inputs may be
# object arrays (of bytes or str), bytes arrays or str arrays, BYTES outputs are object arrays of bytes.
_SCALARS = {
    "BOOL": "np.bool_",
    "UINT8": "np.uint8",
    "UINT16": "np.uint16",
    "UINT32": "np.uint32",
    "UINT64": "np.uint64",
    "INT8": "np.int8",
    "INT16": "np.int16",
    "INT32": "np.int32",
    "INT64": "np.int64",
    "FP16": "np.float16",
    "FP32": "np.float32",
    "FP64": "np.float64",
    "BYTES": "np.object_",
}
_BYTES_INPUT = "np.object_ | np.bytes_ | np.str_"


@dataclass(frozen=True)
class ModelSpec:
    """What a generated client is made from: a model's metadata and, from its configuration, the largest batch
    it takes (0: it has no batch dimension) and which inputs may be left out."""

    name: str
    metadata: ModelMetadata
    max_batch_size: int = 0
    optional_inputs: frozenset[str] = frozenset()


def fetch_models(client: Client, models: Sequence[str] | None) -> list[ModelSpec]:
    """The ModelMetadata and ModelConfig of each model (None: every model of the repository index with a ready
    version), as ModelSpecs sorted by name, each name once. A server without ModelConfig (it is Triton's, not
    the KServe V2 protocol's) gives max_batch_size 0: shapes are then checked as the metadata gives them, a
    leading -1 as any size."""
    if models is None:
        names = sorted({row.name for row in client.repository_index(ready_only=True)})
    else:
        names = sorted(set(models))
    specs = []
    for name in names:
        metadata = client.model_metadata(name)
        max_batch_size = 0
        optional: frozenset[str] = frozenset()
        try:
            config = client.model_config(name)
        except ServerError as exc:
            if exc.status != "UNIMPLEMENTED":
                raise
        else:
            max_batch_size = max(int(config.max_batch_size), 0)
            optional = frozenset(entry.name for entry in config.input if entry.optional)
        specs.append(ModelSpec(name, metadata, max_batch_size, optional))
    return specs


def write(url: str, models: Sequence[str] | None, out: Path, **client_kwargs: Any) -> list[str]:
    """Generate the clients of `models` (None: every ready model) of the server at `url` into `out`; returns
    the model names written, sorted. `client_kwargs` go to `Client` (tls_ca, token, timeout, ...).
    ValueError when there is no model to write."""
    with Client(url, **client_kwargs) as client:
        specs = fetch_models(client, models)
    if not specs:
        raise ValueError(f"the server at {url} has no ready model to generate a client for")
    out.write_text(render(specs, url), encoding="utf-8", newline="\n")
    return [spec.name for spec in specs]


# ----- names ------------------------------------------------------------------------------------------------


def _identifier(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not text or text[0].isdigit():
        text = "_" + text
    text = re.sub(r"^__+", "_", text)
    if keyword.iskeyword(text) or text in RESERVED:
        text += "_"
    return text


def _stem(name: str) -> str:
    parts = [part for part in re.split(r"[^A-Za-z0-9]+", name) if part]
    stem = "".join(part[0].upper() + part[1:] for part in parts)
    return "Model" + stem if not stem or stem[0].isdigit() else stem


def _unique(natural: list[str], separator: str) -> list[str]:
    """Each natural name, or for a later duplicate the first `name<separator><n>` (n = 2, 3, ...) that is
    neither taken nor another one's natural name."""
    used: set[str] = set()
    every = set(natural)
    names = []
    for name in natural:
        candidate, n = name, 2
        while candidate in used or (candidate != name and candidate in every):
            candidate, n = f"{name}{separator}{n}", n + 1
        used.add(candidate)
        names.append(candidate)
    return names


def identifiers(names: Sequence[str]) -> list[str]:
    """The Python names of a model's tensors (its inputs, or its outputs), in their order: see the module
    docstring for the rule."""
    return _unique([_identifier(name) for name in names], "_")


def _derived(stem: str) -> tuple[str, ...]:
    return f"{stem}Client", f"Async{stem}Client", f"{stem}Outputs", f"_{stem}Model"


def class_stems(models: Sequence[str]) -> list[str]:
    """The class stem of each model, in the order given (render sorts them by name first): see the module
    docstring. No stem's classes take a name another one's do, or one the generated module uses itself."""
    taken = set(_MODULE_NAMES)
    every = {_stem(model) for model in models}
    stems = []
    for model in models:
        natural = _stem(model)
        stem, n = natural, 2
        while any(name in taken for name in _derived(stem)) or (stem != natural and stem in every):
            stem, n = f"{natural}{n}", n + 1
        taken.update(_derived(stem))
        stems.append(stem)
    return stems


# ----- source text ------------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A string literal as ruff formats it: double quotes, unless the text holds more of them than of single
    quotes."""
    quote = "'" if text.count('"') > text.count("'") else '"'
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == quote:
            out.append("\\" + quote)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])  # \n, \x00, \u2028, ...
    return quote + "".join(out) + quote


def _doc_text(text: str) -> str:
    """Text for a docstring: backslashes, double quotes and unprintable characters escaped."""
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def _quoted(name: str) -> str:
    return '"' + _doc_text(name) + '"'


def _docstring(indent: str, paragraphs: Sequence[Sequence[str]]) -> list[str]:
    """A docstring at `indent`: paragraphs of items, each item wrapped to the line length (its continuation
    lines indented four more when it is indented: a list item); a single line that fits stays between the
    quotes."""
    lines = []
    for number, paragraph in enumerate(paragraphs):
        if number:
            lines.append("")
        for item in paragraph:
            text = item.lstrip(" ")
            lead = " " * (len(item) - len(text))
            lines += textwrap.wrap(
                text,
                width=LINE_LENGTH - len(indent),
                initial_indent='"""' + lead if not lines else lead,
                subsequent_indent=lead + "    " if lead else "",
                break_long_words=False,
                break_on_hyphens=False,
            )
    if len(lines) == 1 and len(indent) + len(lines[0]) + 3 <= LINE_LENGTH:
        return [f'{indent}{lines[0]}"""']
    return [f"{indent}{line}" if line else "" for line in lines] + [f'{indent}"""']


def _scalar(datatype: str, for_input: bool) -> str:
    if datatype == "BYTES" and for_input:
        return _BYTES_INPUT
    return _SCALARS.get(datatype, "Any")


def _shape_doc(shape: tuple[int, ...], batched: bool) -> str:
    return "[" + ", ".join("batch" if batched and i == 0 else str(d) for i, d in enumerate(shape)) + "]"


def _tensor_doc(py: str, tensor: TensorMetadata, batched: bool, optional: bool = False) -> str:
    """A docstring item: `py: "wire", FP32 [batch, 16]`."""
    shape = _shape_doc(tensor.shape, batched and bool(tensor.shape))
    return f"    {py}: {_quoted(tensor.name)}, {_doc_text(tensor.datatype)} {shape}" + (
        ", optional" if optional else ""
    )


def _metadata_literal(tensor: TensorMetadata) -> str:
    dims = ", ".join(str(int(d)) for d in tensor.shape)
    shape = f"({dims},)" if len(tensor.shape) == 1 else f"({dims})"
    return f"TensorMetadata({_literal(tensor.name)}, {_literal(tensor.datatype)}, {shape})"


def _tuple_statement(indent: str, target: str, items: list[str]) -> list[str]:
    """`target = (items)` as ruff formats it: a trailing comma keeps two or more items one a line."""
    if not items:
        return [f"{indent}{target} = ()"]
    flat = f"{indent}{target} = ({items[0]},)"
    if len(items) == 1 and len(flat) <= LINE_LENGTH:
        return [flat]
    return [f"{indent}{target} = (", *(f"{indent}    {item}," for item in items), f"{indent})"]


def _class_header(name: str, bases: list[str]) -> list[str]:
    """`class name(bases):` as ruff formats it: one line, else one base a line (a trailing comma keeps them
    so); a base still too long (a very long model name) leaves the one line to itself, out of ruff's
    formatting."""
    flat = f"class {name}({', '.join(bases)}):"
    if len(flat) <= LINE_LENGTH:
        return [flat]
    lines = [f"class {name}(", *(f"    {base}," for base in bases), "):"]
    if all(len(line) <= LINE_LENGTH for line in lines):
        return lines
    return [f"{flat}  # noqa: E501  # fmt: skip"]


def _guard(lines: list[str]) -> list[str]:
    """A statement with a line over the line length (a very long name) is left out of ruff's formatting, its
    long code lines out of E501 (docstrings are wrapped; a line of one long word passes E501)."""
    if all(len(line) <= LINE_LENGTH for line in lines):
        return lines
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip(" "))]
    out = [f"{indent}# fmt: off"]
    in_docstring = False
    for line in lines:
        quotes = line.count('"""')
        docstring = in_docstring or quotes > 0
        if quotes % 2:
            in_docstring = not in_docstring
        out.append(line + "  # noqa: E501" if len(line) > LINE_LENGTH and not docstring else line)
    out.append(f"{indent}# fmt: on")
    return out


_PREAMBLE = '''
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from hotwire.clients import (
    DATATYPES,
    AsyncClient,
    Client,
    InferResult,
    InvalidInput,
    ServerError,
    TensorMetadata,
)

__all__ = [
{exports}
]

_Outputs = TypeVar("_Outputs")
_Sync = TypeVar("_Sync", bound="_SyncModel[Any]")
_Async = TypeVar("_Async", bound="_AsyncModel[Any]")


def _dtype_matches(dtype: np.dtype[Any], datatype: str) -> bool:
    if datatype == "BYTES":
        return dtype.kind in "OSU"
    expected = DATATYPES.get(datatype)
    return expected is None or (dtype.kind == expected.kind and dtype.itemsize == expected.itemsize)


def _dtype_text(datatype: str) -> str:
    if datatype == "BYTES":
        return "BYTES (an object, bytes or str array)"
    expected = DATATYPES.get(datatype)
    return datatype if expected is None else f"{datatype} (numpy {expected.name})"


def _shape_text(shape: tuple[int, ...], batched: bool) -> str:
    return "[" + ", ".join("batch" if batched and i == 0 else str(d) for i, d in enumerate(shape)) + "]"


class _Model(Generic[_Outputs]):
    """What the generated clients share: their model's description and the checks made before sending."""

    MODEL_NAME: ClassVar[str]
    MAX_BATCH_SIZE: ClassVar[int]  # 0: the model has no batch dimension
    INPUTS: ClassVar[tuple[TensorMetadata, ...]]  # shapes as the server's metadata gives them, -1: any size
    OUTPUTS: ClassVar[tuple[TensorMetadata, ...]]
    OPTIONAL_INPUTS: ClassVar[frozenset[str]] = frozenset()

    def _outputs(self, result: InferResult) -> _Outputs:
        raise NotImplementedError

    def _inputs(self, given: Mapping[str, npt.NDArray[Any] | None]) -> dict[str, npt.NDArray[Any]]:
        """The arrays to send, once each has the dtype, rank and dimensions the model takes and the batch
        size is the same in each and at most MAX_BATCH_SIZE; InvalidInput otherwise, and nothing is sent."""
        inputs: dict[str, npt.NDArray[Any]] = {}
        batch: tuple[str, int] | None = None
        for tensor in self.INPUTS:
            array = given.get(tensor.name)
            what = f"model '{self.MODEL_NAME}' input '{tensor.name}'"
            if array is None:
                if tensor.name in self.OPTIONAL_INPUTS:
                    continue
                raise InvalidInput(f"{what}: missing", "INVALID_ARGUMENT")
            if not isinstance(array, np.ndarray):
                raise InvalidInput(
                    f"{what}: expected a NumPy array of {_dtype_text(tensor.datatype)}, got "
                    f"{type(array).__name__}",
                    "INVALID_ARGUMENT",
                )
            if not _dtype_matches(array.dtype, tensor.datatype):
                raise InvalidInput(
                    f"{what}: expected {_dtype_text(tensor.datatype)}, got dtype {array.dtype}",
                    "INVALID_ARGUMENT",
                )
            batched = self.MAX_BATCH_SIZE > 0 and len(tensor.shape) > 0
            if array.ndim != len(tensor.shape) or any(
                want >= 0 and want != got for want, got in zip(tensor.shape, array.shape)
            ):
                raise InvalidInput(
                    f"{what}: expected shape {_shape_text(tensor.shape, batched)}, got {list(array.shape)}",
                    "INVALID_ARGUMENT",
                )
            if batched:
                size = int(array.shape[0])
                if size > self.MAX_BATCH_SIZE:
                    raise InvalidInput(
                        f"{what}: a batch of {size} is over the model's max_batch_size {self.MAX_BATCH_SIZE}",
                        "INVALID_ARGUMENT",
                    )
                if batch is not None and size != batch[1]:
                    raise InvalidInput(
                        f"{what}: a batch of {size}, but input '{batch[0]}' has a batch of {batch[1]}",
                        "INVALID_ARGUMENT",
                    )
                if batch is None:
                    batch = (tensor.name, size)
            inputs[tensor.name] = array
        return inputs

    def _output(self, result: InferResult, name: str, datatype: str) -> npt.NDArray[Any]:
        got = result.datatypes.get(name)
        if got != datatype:
            answer = f"without output '{name}'" if got is None else f"output '{name}' as {got}"
            raise ServerError(
                f"model '{self.MODEL_NAME}' answered {answer}; this client expects {datatype}: generate it "
                "again from the model's current metadata",
                "DATA_LOSS",
            )
        return result[name]


class _SyncModel(_Model[_Outputs]):
    client: Client
    version: str

    def __init__(self, target: str | Client, version: str = "", **client_kwargs: Any) -> None:
        """`target`: the server's "host:port" (for a Client of this object's own, made with `client_kwargs`
        and closed by close()) or a Client to share (close() leaves it open). `version`: the model version to
        call ("": the server's choice)."""
        if isinstance(target, Client):
            if client_kwargs:
                raise TypeError(f"client_kwargs {sorted(client_kwargs)} are for a url, not a Client")
            self.client = target
            self._owns_client = False
        else:
            self.client = Client(target, **client_kwargs)
            self._owns_client = True
        self.version = version

    def _infer(
        self,
        given: Mapping[str, npt.NDArray[Any] | None],
        timeout: float | None,
        parameters: Mapping[str, bool | int | float | str] | None,
        request_id: str | None,
    ) -> _Outputs:
        inputs = self._inputs(given)
        result = self.client.infer(
            self.MODEL_NAME,
            inputs,
            version=self.version,
            timeout=timeout,
            parameters=parameters,
            request_id=request_id,
        )
        return self._outputs(result)

    def close(self) -> None:
        """Close the Client this object made (a Client given to it stays open)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self: _Sync) -> _Sync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncModel(_Model[_Outputs]):
    client: AsyncClient
    version: str

    def __init__(self, target: str | AsyncClient, version: str = "", **client_kwargs: Any) -> None:
        """As the blocking client's, with an AsyncClient: make it on the event loop that uses it."""
        if isinstance(target, AsyncClient):
            if client_kwargs:
                raise TypeError(f"client_kwargs {sorted(client_kwargs)} are for a url, not an AsyncClient")
            self.client = target
            self._owns_client = False
        else:
            self.client = AsyncClient(target, **client_kwargs)
            self._owns_client = True
        self.version = version

    async def _infer(
        self,
        given: Mapping[str, npt.NDArray[Any] | None],
        timeout: float | None,
        parameters: Mapping[str, bool | int | float | str] | None,
        request_id: str | None,
    ) -> _Outputs:
        inputs = self._inputs(given)
        result = await self.client.infer(
            self.MODEL_NAME,
            inputs,
            version=self.version,
            timeout=timeout,
            parameters=parameters,
            request_id=request_id,
        )
        return self._outputs(result)

    async def close(self) -> None:
        """Close the AsyncClient this object made (an AsyncClient given to it stays open)."""
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self: _Async) -> _Async:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
'''


def _header(specs: Sequence[ModelSpec], stems: Sequence[str], source: str) -> list[str]:
    names = [_quoted(spec.name) for spec in specs]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    where = f" of {_doc_text(source)}" if source else ""
    example = stems[0] if stems else "Model"
    return _docstring(
        "",
        [
            [
                f"Typed clients of the model{'s' if len(names) != 1 else ''} {listed}{where}, generated "
                "by `hotwire client generate` from the server's metadata and configuration: do not edit, "
                "generate the file again when a model changes."
            ],
            [
                f"For each model, `{example}Client(target, version='', **client_kwargs)` calls it through "
                "a blocking hotwire.clients.Client, `target` being a url (it makes, and closes, a Client of "
                f"its own) or a Client to share; `Async{example}Client` does through an AsyncClient. "
                "`infer(*, <input>=array, ..., timeout=None, parameters=None, request_id=None)` takes the "
                "model's inputs as keyword arguments (each one's dtype in its annotation, its shape in the "
                "docstring), checks their dtypes, ranks, fixed dimensions and batch size before sending "
                f"(hotwire.clients.InvalidInput, with no round trip) and returns a frozen `{example}Outputs` "
                "with one array per output."
            ],
            [
                "Shapes are the metadata's, -1 being any size; `batch` is the batch dimension of a model "
                "with a max_batch_size (at most that, the same in every input)."
            ],
            [
                "Names: a model's class stem is the runs of ASCII letters and digits of its name, each with "
                'its first letter upper-cased, joined ("Model" in front when that is empty or starts with a '
                "digit). A tensor's argument or field name is its name with each character other than an "
                'ASCII letter, digit or "_" made "_", "_" in front of a leading digit, a leading run of '
                'underscores cut to one, and "_" after a Python keyword or one of self, timeout, '
                'parameters, request_id, np, npt. Names that collide get the first free suffix of "2", '
                '"3", ... (class stems, in model-name order) or "_2", "_3", ... (tensors, in metadata '
                "order). The tensors go by their own names on the wire."
            ],
        ],
    )


def _model_classes(spec: ModelSpec, stem: str) -> list[list[str]]:
    """The top-level statements of one model: its outputs dataclass, its description and its two clients."""
    metadata = spec.metadata
    batched = spec.max_batch_size > 0
    inputs = list(metadata.inputs)
    outputs = list(metadata.outputs)
    input_names = identifiers([t.name for t in inputs])
    output_names = identifiers([t.name for t in outputs])
    name = _quoted(spec.name)
    platform = f" ({_doc_text(metadata.platform)})" if metadata.platform else ""
    output_docs = [_tensor_doc(py, t, batched) for py, t in zip(output_names, outputs)]
    input_docs = [
        _tensor_doc(py, t, batched, t.name in spec.optional_inputs) for py, t in zip(input_names, inputs)
    ]
    batch_note = f" (batch: at most {spec.max_batch_size})" if batched else ""

    # the outputs
    cls = f"{stem}Outputs"
    block = ["@dataclass(frozen=True)", f"class {cls}:"]
    block += _docstring(
        "    ",
        [
            [f"What model {name} answers: one read-only array per output."],
            ["Fields:", *(output_docs or ["    (none)"])],
        ],
    )
    if outputs:
        block.append("")
    for py, tensor in zip(output_names, outputs):
        block += _guard([f"    {py}: npt.NDArray[{_scalar(tensor.datatype, False)}]"])
    statements = [block]

    # the model's description
    model = f"_{stem}Model"
    block = _class_header(model, [f"_Model[{cls}]"])
    block += _guard([f"    MODEL_NAME = {_literal(spec.name)}"])
    block.append(f"    MAX_BATCH_SIZE = {int(spec.max_batch_size)}")
    block += _guard(_tuple_statement("    ", "INPUTS", [_metadata_literal(t) for t in inputs]))
    block += _guard(_tuple_statement("    ", "OUTPUTS", [_metadata_literal(t) for t in outputs]))
    optional = [t.name for t in inputs if t.name in spec.optional_inputs]
    if optional:
        block += _guard([f"    OPTIONAL_INPUTS = frozenset({{{', '.join(_literal(n) for n in optional)}}})"])
    block.append("")
    method = [f"    def _outputs(self, result: InferResult) -> {cls}:"]
    if outputs:
        method.append(f"        return {cls}(")
        method += [
            f"            {py}=self._output(result, {_literal(t.name)}, {_literal(t.datatype)}),"
            for py, t in zip(output_names, outputs)
        ]
        method.append("        )")
    else:
        method.append(f"        return {cls}()")
    block += _guard(method)
    statements.append(block)

    # the clients
    for sync in (True, False):
        client_class = f"{stem}Client" if sync else f"Async{stem}Client"
        block = _class_header(client_class, [model, f"{'_SyncModel' if sync else '_AsyncModel'}[{cls}]"])
        over = "a blocking hotwire.clients.Client" if sync else "a hotwire.clients.AsyncClient"
        block += _docstring(
            "    ",
            [
                [
                    f"Model {name}{platform} through {over}: `{client_class}(target, version='', "
                    f"**client_kwargs)`, `target` being the server's url or a{'n Async' if not sync else ' '}"
                    "Client to share."
                ]
            ],
        )
        block.append("")
        method = [f"    {'def' if sync else 'async def'} infer(", "        self,", "        *,"]
        for py, tensor in zip(input_names, inputs):
            annotation = f"npt.NDArray[{_scalar(tensor.datatype, True)}]"
            if tensor.name in spec.optional_inputs:
                method.append(f"        {py}: {annotation} | None = None,")
            else:
                method.append(f"        {py}: {annotation},")
        method += [
            "        timeout: float | None = None,",
            "        parameters: Mapping[str, bool | int | float | str] | None = None,",
            "        request_id: str | None = None,",
            f"    ) -> {cls}:",
        ]
        method += _docstring(
            "        ",
            [
                [f"Run model {name} on the inputs, each checked here first (InvalidInput: nothing is sent)."],
                [f"Inputs{batch_note}:", *(input_docs or ["    (none)"])],
                [f"Returns {cls}:", *(output_docs or ["    (none)"])],
                [
                    "timeout: seconds (default: the client's); parameters: the request's parameters; "
                    "request_id: its id (default: the client's)."
                ],
            ],
        )
        method.append(f"        return {'' if sync else 'await '}self._infer(")
        if inputs:
            method.append("            {")
            method += [f"                {_literal(t.name)}: {py}," for py, t in zip(input_names, inputs)]
            method.append("            },")
        else:
            method.append("            {},")
        method += ["            timeout,", "            parameters,", "            request_id,", "        )"]
        block += _guard(method)
        statements.append(block)
    return statements


def render(specs: Sequence[ModelSpec], source: str = "") -> str:
    """The text of a module of typed clients for `specs` (sorted by model name here): the same specs and
    `source` (the server's url, named in the module docstring) always give the same text. ValueError for no
    specs, or two of one name."""
    specs = sorted(specs, key=lambda spec: spec.name)
    names = [spec.name for spec in specs]
    if not names:
        raise ValueError("no model to render a client for")
    if len(set(names)) != len(names):
        raise ValueError(f"a model is given twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    stems = class_stems(names)
    exports = sorted(name for stem in stems for name in _derived(stem)[:3])
    lines = _header(specs, stems, source)
    preamble = _PREAMBLE.strip("\n").replace("{exports}", "\n".join(f"    {_literal(n)}," for n in exports))
    lines += ["", *preamble.split("\n")]
    for spec, stem in zip(specs, stems):
        for statement in _model_classes(spec, stem):
            lines += ["", "", *statement]
    return "\n".join(lines) + "\n"
