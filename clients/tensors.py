"""NumPy arrays ⇄ ModelInferRequest / ModelInferResponse bytes, for any Open Inference Protocol server.

The request is framed here, not built as a protobuf message: the header (model, version, tensor names,
datatypes, shapes, requested outputs, parameters) is serialized by protobuf once per distinct layout and
cached; each call adds its id and frames every input's bytes as a `raw_input_contents` entry, so an input
array is copied once, into the request (protobuf would copy it into the message,
and again into the serialization).

The response is scanned, not parsed: each `raw_output_contents` entry stays a slice of the received bytes and
becomes a read-only `np.frombuffer` view (protobuf copies a bytes field on every access); protobuf parses only
the small rest, once per distinct layout. The one copy left is grpcio's own, from its receive buffer into the
Python `bytes` the call returns: grpcio's Python API has no way around it.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hotwire.clients.errors import InferenceServerError, InvalidInput, error_from_status
from hotwire.proto import grpc_service_pb2 as pb

__all__ = [
    "DATATYPES",
    "ERROR_STATUS_PARAMETER",
    "InferResult",
    "ParameterValue",
    "RequestEncoder",
    "datatype_of",
    "decode_response",
    "decode_stream_response",
    "random_array",
    "raw_contents",
]

ParameterValue = bool | int | float | str

# The protocol's datatype names and the NumPy dtype of their raw (little-endian) elements; BYTES elements are
# each a 4-byte little-endian length, then the bytes.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
# InferTensorContents' field for each datatype, for servers that answer with typed contents (FP16: raw only)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# hotwire names an in-band stream error's gRPC status in this response parameter (other servers send none)
ERROR_STATUS_PARAMETER = "hotwire_error_status"

_LENGTH_PREFIX = struct.Struct("<I")
_ID_TAG = b"\x1a"  # ModelInferRequest.id: field 3, length-delimited
_RAW_INPUT_TAG = b"\x3a"  # ModelInferRequest.raw_input_contents: field 7, length-delimited
_PARAMETERS_TAG = b"\x22"  # ModelInferRequest.parameters (map entries): field 4, length-delimited
_RESPONSE_ID_FIELD = 3
_RAW_OUTPUT_FIELD = 6
_STREAM_ERROR_FIELD = 1
_STREAM_RESPONSE_FIELD = 2
_CACHE_SIZE = 256
_CACHE_MAX_KEY_BYTES = 4096  # a header with large parameters is not worth a cache entry


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of an array: object, bytes and str arrays are BYTES."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = _BY_DTYPE.get(array.dtype.newbyteorder("<"))
    if name is None:
        raise InvalidInput(
            f"no Open Inference Protocol datatype for NumPy dtype {array.dtype}", "INVALID_ARGUMENT"
        )
    return name


def random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random data of a protocol datatype: floats in [0, 1), integers in [-100, 100] (within the type's
    range), booleans, and BYTES as an object array of short words. ValueError for an unknown datatype."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"no random data for datatype {datatype}")
    if datatype == "BYTES":
        words = np.array([b"alpha", b"beta", b"gamma", b"delta"], dtype=object)
        return words[rng.integers(0, len(words), size=shape)] if shape else np.array(b"alpha", dtype=object)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100), size=shape, endpoint=True).astype(dtype)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_payload(name: str, array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for element in array.reshape(-1):
        if isinstance(element, str):
            encoded = element.encode("utf-8")
        elif isinstance(element, (bytes, bytearray, memoryview, np.bytes_)):
            encoded = bytes(element)
        else:
            raise InvalidInput(
                f"input '{name}': a BYTES element must be bytes or str, got {type(element).__name__}",
                "INVALID_ARGUMENT",
            )
        parts.append(_LENGTH_PREFIX.pack(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def _payload(name: str, datatype: str, array: np.ndarray) -> bytes | memoryview:
    if datatype == "BYTES":
        return _bytes_payload(name, array)
    dtype = DATATYPES[datatype]
    if array.dtype != dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dtype)
    # A flat byte view: memoryview.cast refuses shapes with a zero dimension, a reshaped uint8 view does not.
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy stubs: no buffer protocol


def raw_contents(name: str, array: np.ndarray) -> tuple[str, bytes]:
    """An array's protocol datatype and its raw bytes as raw_input_contents (and the HTTP binary extension)
    carry them: little-endian elements, BYTES as 4-byte-length-prefixed elements."""
    datatype = datatype_of(array)
    return datatype, bytes(_payload(name, datatype, array))


def _parameter(target: Any, value: ParameterValue) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise InvalidInput(f"parameter value {value!r}: expected bool, int, float or str", "INVALID_ARGUMENT")


def timeout_parameter(timeout_us: int) -> bytes:
    """A `parameters` map entry {"timeout": int64 µs}, framed by hand: it differs on every call, so it stays
    out of the cached header (protobuf lets a map entry come in any position; the last one for a key wins)."""
    value = b"\x10" + _varint(timeout_us)  # InferParameter.int64_param: field 2, varint
    entry = b"\x0a\x07timeout" + b"\x12" + _varint(len(value)) + value
    return _PARAMETERS_TAG + _varint(len(entry)) + entry


def _evict_oldest(cache: OrderedDict[Any, Any]) -> None:
    """Drop a cache's oldest entry (first in, first out). Client threads share the caches: two evicting at
    once may find it emptied by the other, which is fine."""
    try:
        cache.popitem(last=False)
    except KeyError:
        pass


class RequestEncoder:
    """Serializes ModelInferRequests; owns the cache of serialized headers (one encoder per client)."""

    def __init__(self) -> None:
        self._headers: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()

    def _header(
        self,
        model: str,
        version: str,
        layout: tuple[tuple[str, str, tuple[int, ...]], ...],
        outputs: Sequence[str] | None,
        parameters: Mapping[str, ParameterValue] | None,
    ) -> bytes:
        key = (model, version, layout, tuple(outputs) if outputs is not None else None,
               tuple(sorted(parameters.items())) if parameters else ())  # fmt: skip
        header = self._headers.get(key)
        if header is not None:
            return header
        message = pb.ModelInferRequest(model_name=model, model_version=version)
        for name, datatype, shape in layout:
            message.inputs.add(name=name, datatype=datatype, shape=shape)
        for output in outputs or ():
            message.outputs.add(name=output)
        for key_name, value in (parameters or {}).items():
            _parameter(message.parameters[key_name], value)
        header = message.SerializeToString()
        if len(header) <= _CACHE_MAX_KEY_BYTES:
            self._headers[key] = header
            if len(self._headers) > _CACHE_SIZE:
                _evict_oldest(self._headers)
        return header

    def encode(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
        parameters: Mapping[str, ParameterValue] | None = None,
        timeout_us: int = 0,
    ) -> bytes:
        """A serialized ModelInferRequest carrying every input in raw_input_contents."""
        layout: list[tuple[str, str, tuple[int, ...]]] = []
        payloads: list[bytes | memoryview] = []
        for name, value in inputs.items():
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            datatype = datatype_of(array)
            layout.append((name, datatype, array.shape))
            payloads.append(_payload(name, datatype, array))
        parts: list[bytes | memoryview] = [self._header(model, version, tuple(layout), outputs, parameters)]
        if request_id:
            encoded_id = request_id.encode("utf-8")
            parts.append(_ID_TAG + _varint(len(encoded_id)) + encoded_id)
        if timeout_us > 0:
            parts.append(timeout_parameter(timeout_us))
        for payload in payloads:
            parts.append(
                _RAW_INPUT_TAG + _varint(payload.nbytes if isinstance(payload, memoryview) else len(payload))
            )
            parts.append(payload)
        return b"".join(parts)


class InferResult(Mapping[str, np.ndarray]):
    """An inference response: a read-only mapping from output name to array (in the server's order), plus the
    response's model, version, id and parameters. Raw outputs are views over the received bytes (read-only:
    `.copy()` one to write to it); BYTES outputs are object arrays of `bytes`."""

    __slots__ = ("datatypes", "id", "model_name", "model_version", "parameters", "_outputs")

    def __init__(
        self,
        model_name: str,
        model_version: str,
        request_id: str,
        parameters: dict[str, ParameterValue],
        outputs: dict[str, np.ndarray],
        datatypes: dict[str, str],
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = request_id
        self.parameters = parameters
        self.datatypes = datatypes  # output name → protocol datatype (FP16 and BOOL are not guessable)
        self._outputs = outputs

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._outputs[name]
        except KeyError:
            raise KeyError(f"no output '{name}' in the response; it has {list(self._outputs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}: {self.datatypes[n]}{list(a.shape)}" for n, a in self._outputs.items())
        return (
            f"InferResult(model={self.model_name!r}, version={self.model_version!r}, id={self.id!r}, "
            f"{{{shown}}})"
        )


@dataclass(frozen=True, slots=True)
class _Layout:
    """A response header minus its id and data: parsed once per distinct layout."""

    model_name: str
    model_version: str
    parameters: dict[str, ParameterValue]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ServerResponseError("malformed response: varint too long")


class ServerResponseError(InferenceServerError):
    """The server's answer could not be read (not a ModelInferResponse, or its tensors don't match their
    shapes)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "DATA_LOSS")


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start of the field's key, start of its value, end) of each top-level field."""
    pos = 0
    size = view.nbytes
    try:
        while pos < size:
            start = pos
            key, pos = _read_varint(view, pos)
            wire_type = key & 7
            if wire_type == 2:
                length, pos = _read_varint(view, pos)
                end = pos + length
                if end > size:
                    raise ServerResponseError("malformed response: a field runs past the end of the message")
            elif wire_type == 0:
                _, end = _read_varint(view, pos)
            elif wire_type == 1:
                end = pos + 8
            elif wire_type == 5:
                end = pos + 4
            else:
                raise ServerResponseError(f"malformed response: unsupported wire type {wire_type}")
            yield key >> 3, start, pos, end
            pos = end
    except IndexError:
        raise ServerResponseError("malformed response: truncated message") from None


def _parameters(message_parameters: Any) -> dict[str, ParameterValue]:
    values: dict[str, ParameterValue] = {}
    for key, param in message_parameters.items():
        kind = param.WhichOneof("parameter_choice")
        values[key] = getattr(param, kind) if kind else ""
    return values


class ResponseDecoder:
    """Reads ModelInferResponse bytes; owns the cache of parsed header layouts (one decoder per client)."""

    def __init__(self) -> None:
        self._layouts: OrderedDict[bytes, _Layout] = OrderedDict()

    def decode(self, data: bytes | memoryview) -> InferResult:
        view = data if isinstance(data, memoryview) else memoryview(data)
        raw: list[memoryview] = []
        header_parts: list[memoryview] = []
        request_id = ""
        for number, start, value_start, end in _fields(view):
            if number == _RAW_OUTPUT_FIELD:
                raw.append(view[value_start:end])
            elif number == _RESPONSE_ID_FIELD:
                request_id = bytes(view[value_start:end]).decode("utf-8", "replace")
            else:
                header_parts.append(view[start:end])
        key = b"".join(header_parts)
        layout = self._layouts.get(key)
        if layout is None:
            message = pb.ModelInferResponse.FromString(key)
            if not raw and any(o.HasField("contents") for o in message.outputs):
                return _from_contents(message, request_id)
            layout = _Layout(
                message.model_name,
                message.model_version,
                _parameters(message.parameters),
                tuple((o.name, o.datatype, tuple(o.shape)) for o in message.outputs),
            )
            if len(key) <= _CACHE_MAX_KEY_BYTES:
                self._layouts[key] = layout
                if len(self._layouts) > _CACHE_SIZE:
                    _evict_oldest(self._layouts)
        if len(raw) != len(layout.outputs):
            raise ServerResponseError(
                f"the response has {len(layout.outputs)} outputs but {len(raw)} raw_output_contents entries"
            )
        outputs: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for (name, datatype, shape), payload in zip(layout.outputs, raw):
            outputs[name] = _array(name, datatype, shape, payload)
            datatypes[name] = datatype
        return InferResult(
            layout.model_name, layout.model_version, request_id, dict(layout.parameters), outputs, datatypes
        )

    def decode_stream(self, data: bytes | memoryview) -> tuple[str, InferResult | InferenceServerError]:
        """A ModelStreamInferResponse: (request id, the result, or the in-band error as an exception)."""
        view = data if isinstance(data, memoryview) else memoryview(data)
        error = ""
        response = view[0:0]
        for number, _, value_start, end in _fields(view):
            if number == _STREAM_ERROR_FIELD:
                error = bytes(view[value_start:end]).decode("utf-8", "replace")
            elif number == _STREAM_RESPONSE_FIELD:
                response = view[value_start:end]
        if not error:
            result = self.decode(response)
            return result.id, result
        header = pb.ModelInferResponse.FromString(bytes(response))
        status = (
            header.parameters[ERROR_STATUS_PARAMETER].string_param
            if ERROR_STATUS_PARAMETER in header.parameters
            else ""
        )
        exc = error_from_status(status, error) if status else InferenceServerError(error, "UNKNOWN")
        return header.id, exc


def _array(name: str, datatype: str, shape: tuple[int, ...], payload: memoryview) -> np.ndarray:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ServerResponseError(f"output '{name}': unknown datatype {datatype!r}")
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        elements = _bytes_elements(name, payload)
        if len(elements) != count:
            raise ServerResponseError(
                f"output '{name}': {len(elements)} BYTES elements for shape {list(shape)}"
            )
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    if payload.nbytes != count * dtype.itemsize:
        raise ServerResponseError(
            f"output '{name}': {payload.nbytes} bytes for {datatype} of shape {list(shape)} "
            f"(expected {count * dtype.itemsize})"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def _bytes_elements(name: str, payload: memoryview) -> list[bytes]:
    elements: list[bytes] = []
    pos = 0
    size = payload.nbytes
    while pos < size:
        if pos + 4 > size:
            raise ServerResponseError(f"output '{name}': a BYTES element's length prefix is cut short")
        (length,) = _LENGTH_PREFIX.unpack_from(payload, pos)
        pos += 4
        if pos + length > size:
            raise ServerResponseError(f"output '{name}': a BYTES element runs past the end of the tensor")
        elements.append(bytes(payload[pos : pos + length]))
        pos += length
    return elements


def _from_contents(message: Any, request_id: str) -> InferResult:
    """A response whose outputs come in typed `contents` (some servers answer so when sent typed contents)."""
    outputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for output in message.outputs:
        field = _CONTENTS_FIELD.get(output.datatype)
        if field is None:
            raise ServerResponseError(
                f"output '{output.name}': {output.datatype} cannot come in typed contents"
            )
        values = list(getattr(output.contents, field))
        shape = tuple(output.shape)
        if output.datatype == "BYTES":
            array = np.empty(len(values), dtype=object)
            array[:] = values
        else:
            array = np.array(values, dtype=DATATYPES[output.datatype])
        try:
            outputs[output.name] = array.reshape(shape)
        except ValueError:
            raise ServerResponseError(
                f"output '{output.name}': {len(values)} values for shape {list(shape)}"
            ) from None
        datatypes[output.name] = output.datatype
    return InferResult(
        message.model_name,
        message.model_version,
        request_id,
        _parameters(message.parameters),
        outputs,
        datatypes,
    )


def decode_response(data: bytes | memoryview) -> InferResult:
    """A serialized ModelInferResponse as an InferResult (no layout cache: clients keep a ResponseDecoder)."""
    return ResponseDecoder().decode(data)


def decode_stream_response(data: bytes | memoryview) -> tuple[str, InferResult | InferenceServerError]:
    return ResponseDecoder().decode_stream(data)
