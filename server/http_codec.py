"""The Open Inference Protocol's HTTP/REST bodies ⇄ the data plane's request and response objects.

Inference bodies are JSON, or JSON followed by binary tensors (Triton's binary tensor extension): the header
`Inference-Header-Content-Length: N` says the first N bytes are the JSON; an input with parameter
`binary_data_size` takes its bytes, in input order, from what follows, as a read-only view of the body (no
copy, as on the gRPC path); an output is sent in binary when it asks with `binary_data: true`, or when the
request asks for every output with `binary_data_output: true`. Other protocol messages are the protobuf
messages of the gRPC service, written as JSON with Triton's field names and with numbers as numbers
(`message_json`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from hotwire.server import datatypes, wire
from hotwire.server.errors import InvalidInput
from hotwire.server.wire import InferRequest, InferResponse, InputTensor, ParamValue

HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"
# Request parameters that steer the HTTP encoding only; the rest reach the model as on gRPC (priority,
# timeout...)
_ENCODING_PARAMETERS = frozenset({"binary_data_output"})
_UNSUPPORTED_OUTPUT_PARAMETERS = {
    "classification": "the classification extension (class_count) is not supported: request the raw output",
    "shared_memory_region": "the shared-memory extension is not supported",
}


# ------------------------------------------------------------------------------------------------------------
# requests


def decode_request(
    model_name: str, model_version: str, body: bytes, header_length: str | None
) -> tuple[InferRequest, OutputEncoding]:
    """An infer request from its body, and how its response is to be encoded; `header_length`: the
    Inference-Header-Content-Length header, if sent."""
    view = memoryview(body)
    if header_length is None:
        json_end = len(body)
    else:
        try:
            json_end = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"header Inference-Header-Content-Length '{header_length}' is not an integer"
            ) from None
        if not 0 <= json_end <= len(body):
            raise InvalidInput(
                f"header Inference-Header-Content-Length {json_end} is outside the body's {len(body)} bytes"
            )
    cacheable = header_length is not None and json_end <= wire.HEADER_CACHE_MAX_KEY_BYTES
    if cacheable:
        key = b"http\0%s\0%s\0%s" % (model_name.encode(), model_version.encode(), bytes(view[:json_end]))
        layout = _layouts.get(key)
        if layout is not None:
            return layout.bind(model_name, model_version, view, json_end, key)
    header = _json_object(view[:json_end])
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {request_id!r}")
    parameters = _parameters("request", header.get("parameters"))
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("the request has no 'inputs' list")
    inputs: list[InputTensor] = []
    offset = json_end
    for index, entry in enumerate(raw_inputs):
        tensor, offset = _input(index, entry, view, offset)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(
            f"the body holds {len(body) - offset} bytes after the binary inputs that no "
            "input's binary_data_size accounts for"
        )
    requested = _requested_outputs(header.get("outputs"))
    request = InferRequest(
        model_name,
        model_version,
        request_id,
        {k: v for k, v in parameters.items() if k not in _ENCODING_PARAMETERS},
        inputs,
        [name for name, _ in requested] if requested is not None else None,
    )
    encoding = _output_encoding(parameters, requested)
    if cacheable and all(BINARY_SIZE in (entry.get("parameters") or {}) for entry in raw_inputs):
        _remember(
            key,
            _BinaryLayout(
                request.id,
                request.parameters,
                tuple(
                    (t.name, t.datatype, t.shape, _binary_size(raw_inputs, i)) for i, t in enumerate(inputs)
                ),
                request.requested_outputs,
                encoding,
            ),
        )
        request.header_key = key
    return request, encoding


@dataclass(frozen=True, slots=True)
class _BinaryLayout:
    """An infer request whose tensors all come in binary: everything but the data, from its JSON header.

    Clients send the same header again and again, so it is parsed once, as wire.py does for gRPC; its key (the
    header bytes with the model and version of the URL) is also the request's header_key for the version's
    plan cache."""

    request_id: str
    parameters: dict[str, ParamValue]
    inputs: tuple[
        tuple[str, datatypes.Datatype, tuple[int, ...], int], ...
    ]  # name, datatype, shape, byte size
    requested_outputs: list[str] | None
    encoding: OutputEncoding

    def bind(
        self, model_name: str, model_version: str, body: memoryview, offset: int, key: bytes
    ) -> tuple[InferRequest, OutputEncoding]:
        inputs = []
        for name, dtype, shape, size in self.inputs:
            if offset + size > body.nbytes:
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({body.nbytes - offset} bytes left)"
                )
            inputs.append(
                InputTensor(
                    name, dtype, shape, wire.array_from_raw(name, dtype, shape, body[offset : offset + size])
                )
            )
            offset += size
        if offset != body.nbytes:
            raise InvalidInput(
                f"the body holds {body.nbytes - offset} bytes after the binary inputs that no "
                "input's binary_data_size accounts for"
            )
        requested = list(self.requested_outputs) if self.requested_outputs is not None else None
        return InferRequest(
            model_name, model_version, self.request_id, self.parameters, inputs, requested, key
        ), self.encoding


_layouts: OrderedDict[bytes, _BinaryLayout] = OrderedDict()


def _remember(key: bytes, layout: _BinaryLayout) -> None:
    _layouts[key] = layout
    if len(_layouts) > wire.HEADER_CACHE_SIZE:
        _layouts.popitem(last=False)


def _binary_size(raw_inputs: list[Any], index: int) -> int:
    size = raw_inputs[index]["parameters"][BINARY_SIZE]
    assert isinstance(size, int)
    return size


def _json_object(data: memoryview | bytes) -> dict[str, Any]:
    try:
        value = json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("the request body's JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    return value


def json_body(body: bytes) -> dict[str, Any]:
    """A control request's JSON object (an empty body is an empty object)."""
    return _json_object(body) if body.strip() else {}


def _parameters(where: str, value: Any) -> dict[str, ParamValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, (bool, int, float, str)):
            raise InvalidInput(
                f"{where} parameter '{key}': expected a boolean, number or string, got {item!r}"
            )
    return value


def _input(index: int, entry: Any, body: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise InvalidInput(f"input {index}: expected an object with a string 'name'")
    name = entry["name"]
    datatype = entry.get("datatype")
    dtype = datatypes.BY_NAME.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input '{name}': unknown datatype {entry.get('datatype')!r}, expected one of "
            f"{', '.join(datatypes.BY_NAME)}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
    shape_t = tuple(shape)
    wire.check_shape(name, shape_t)
    parameters = _parameters(f"input '{name}'", entry.get("parameters"))
    binary_size = parameters.get(BINARY_SIZE)
    if binary_size is not None:
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise InvalidInput(f"input '{name}': parameter 'binary_data_size' must be a non-negative integer")
        if "data" in entry:
            raise InvalidInput(f"input '{name}': both 'data' and binary_data_size were given")
        if offset + binary_size > body.nbytes:
            raise InvalidInput(
                f"input '{name}': binary_data_size {binary_size} runs past the end of the "
                f"body ({body.nbytes - offset} bytes left)"
            )
        payload = body[offset : offset + binary_size]
        return InputTensor(
            name, dtype, shape_t, wire.array_from_raw(name, dtype, shape_t, payload)
        ), offset + binary_size
    if "data" not in entry:
        raise InvalidInput(f"input '{name}': no 'data' and no binary_data_size parameter")
    return InputTensor(name, dtype, shape_t, _array_from_json(name, dtype, shape_t, entry["data"])), offset


def _array_from_json(name: str, dtype: datatypes.Datatype, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Tensor data as the protocol's JSON gives it: a flat (row-major) or nested list."""
    flat = _flatten(name, data)
    count = wire.element_count(shape)
    if len(flat) != count:
        raise InvalidInput(
            f"input '{name}': 'data' holds {len(flat)} elements, expected {count} for shape {list(shape)}"
        )
    if dtype.name == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(f"input '{name}': BYTES data must be strings")
        # JSON's "\ud800" escapes decode to lone surrogates, which no UTF-8 string holds: ONNX Runtime failed
        # on them (HTTP 500); gRPC's and the binary extension's BYTES are checked as UTF-8 likewise (wire.py)
        try:
            "".join(flat).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(
                f"input '{name}': a BYTES string holds a lone surrogate (a \\ud800-\\udfff escape), which is "
                "not valid UTF-8, as ONNX string tensors require"
            ) from None
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if dtype.name == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input '{name}': BOOL data must be true or false")
    elif any(isinstance(v, (bool, str)) or not isinstance(v, (int, float)) for v in flat):
        raise InvalidInput(f"input '{name}': {dtype.name} data must be numbers")
    elif dtype.numpy.kind in "iu":
        if any(not isinstance(v, int) for v in flat):
            raise InvalidInput(f"input '{name}': {dtype.name} data must be integers")
        info = np.iinfo(dtype.numpy)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidInput(f"input '{name}': a value is out of range for {dtype.name}")
    try:
        return np.array(flat, dtype=dtype.numpy).reshape(shape)
    except OverflowError:  # an integer too large for any float (e.g. 10**400 given for FP32)
        raise InvalidInput(f"input '{name}': a value is out of range for {dtype.name}") from None


def _flatten(name: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _requested_outputs(value: Any) -> list[tuple[str, dict[str, ParamValue]]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    requested = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput(f"output {index}: expected an object with a string 'name'")
        parameters = _parameters(f"output '{entry['name']}'", entry.get("parameters"))
        for key in parameters:
            if key in _UNSUPPORTED_OUTPUT_PARAMETERS:
                why = _UNSUPPORTED_OUTPUT_PARAMETERS[key]
                raise InvalidInput(f"output '{entry['name']}': parameter '{key}': {why}")
        requested.append((entry["name"], parameters))
    return requested


class OutputEncoding:
    """Which outputs of a response go in binary, as the request asked."""

    __slots__ = ("default_binary", "binary", "as_json")

    def __init__(
        self,
        default_binary: bool = False,
        binary: frozenset[str] = frozenset(),
        as_json: frozenset[str] = frozenset(),
    ) -> None:
        self.default_binary = default_binary
        self.binary = binary
        self.as_json = as_json

    def is_binary(self, name: str) -> bool:
        if name in self.binary:
            return True
        if name in self.as_json:
            return False
        return self.default_binary


def _output_encoding(
    parameters: dict[str, ParamValue], requested: list[tuple[str, dict[str, ParamValue]]] | None
) -> OutputEncoding:
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput("request parameter 'binary_data_output' must be true or false")
    binary: set[str] = set()
    as_json: set[str] = set()
    for name, output_parameters in requested or ():
        choice = output_parameters.get("binary_data")
        if choice is None:
            continue
        if not isinstance(choice, bool):
            raise InvalidInput(f"output '{name}': parameter 'binary_data' must be true or false")
        (binary if choice else as_json).add(name)
    return OutputEncoding(default, frozenset(binary), frozenset(as_json))


# ------------------------------------------------------------------------------------------------------------
# responses


def encode_response(response: InferResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when binary outputs follow it (None: JSON only).
    Each binary output is copied once, into the body."""
    outputs: list[dict[str, Any]] = []
    binary_parts: list[bytes | memoryview] = []
    for name, array in zip(response.output_names, response.outputs):
        dtype = datatypes.from_numpy(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dtype.name, "shape": list(array.shape)}
        if encoding.is_binary(name):
            payload = wire.raw_bytes(array, dtype)
            size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
            entry["parameters"] = {BINARY_SIZE: size}
            binary_parts.append(payload)
        else:
            entry["data"] = _json_data(name, array, dtype)
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"] = outputs
    encoded = json_dumps(header)
    if not binary_parts:
        return encoded, None
    return b"".join([encoded, *binary_parts]), len(encoded)


def _json_data(name: str, array: np.ndarray, dtype: datatypes.Datatype) -> list[Any]:
    flat = array.reshape(-1)
    if dtype.name != "BYTES":
        return flat.tolist()
    values = []
    for element in flat:
        if isinstance(element, bytes):
            try:
                element = element.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"output '{name}': a BYTES element is not UTF-8, which JSON cannot carry; "
                    "request the output with parameter binary_data true"
                ) from None
        values.append(str(element))
    return values


def error_body(message: str) -> bytes:
    return json_dumps({"error": message})


# ------------------------------------------------------------------------------------------------------------
# protocol messages as JSON

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_json(message: Message) -> dict[str, Any]:
    """A protocol message as the HTTP binding writes it: proto field names, enums by name, 64-bit integers as
    JSON numbers (protobuf's own JSON form writes them as strings, which Triton's HTTP clients do not expect),
    and the scalar fields that hold their default value included, as Triton does."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {key: _field_value(value_field, item) for key, item in value.items()}
        elif _is_repeated(field):
            result[field.name] = [_field_value(field, item) for item in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if message.HasField(field.name):
                result[field.name] = _field_value(field, value)
        elif field.containing_oneof is None or message.HasField(field.name):
            result[field.name] = _field_value(field, value)
    return result


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 6.31+ has is_repeated; older 6.x only `label`
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("latin-1")
    if field.type in _INTEGER_TYPES:
        return int(value)
    return value


def json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
