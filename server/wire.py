"""Protobuf bytes ⇄ request/response objects, without copying tensor payloads.

protobuf copies a bytes field on every access, so ModelInfer and ModelStreamInfer are registered method
handlers with no request deserializer: they receive the raw request bytes. `decode_request` scans the
top-level fields once, keeps each `raw_input_contents` entry (field 7) as a memoryview of the request and lets
protobuf parse only the small rest. `ResponseEncoder` writes the response fields itself and frames
`raw_output_contents` (field 6), so a large output array is copied once, into the response bytes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import datatypes
from hotwire.server.datatypes import element_count  # the one element-count helper, also as wire.element_count
from hotwire.server.errors import InvalidInput

_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited
_STREAM_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited
# BYTES elements in raw form: 4-byte little-endian length, then the bytes
_LENGTH_PREFIX = struct.Struct("<I")

_SMALL_OUTPUT_BYTES = 16384
ParamValue = bool | int | float | str


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: datatypes.Datatype
    shape: tuple[int, ...]
    array: np.ndarray  # read-only view over the request bytes for raw numeric inputs


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, ParamValue]  # shared with the header cache: read, never mutate
    inputs: list[InputTensor]
    requested_outputs: list[str] | None  # None: every output of the model
    header_key: bytes | None = None  # the request minus id and tensor data; equal keys validate alike


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    output_names: list[str]
    outputs: list[np.ndarray]
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    queue_s: float = 0.0  # how long it waited for an instance
    compute_input_s: float = 0.0  # gathering and preprocessing its batch
    compute_infer_s: float = 0.0  # ONNX Runtime


# ------------------------------------------------------------------------------------------------------------
# decoding

# ModelInferRequest.id: kept out of the header key so equal requests share one cache entry
_REQUEST_ID_FIELD = 3
HEADER_CACHE_SIZE = 1024
# Only headers up to this size are cached (here and in each version's plan cache): a header carrying large
# parameters is unusual, and caching it would let a client pin HEADER_CACHE_SIZE × its size of memory.
HEADER_CACHE_MAX_KEY_BYTES = 4096


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
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
            raise InvalidInput("malformed ModelInferRequest: varint too long")


def scan_request(data: bytes) -> tuple[bytes, str, list[memoryview]]:
    """Split a serialized ModelInferRequest into (every field but id and raw_input_contents, the id, the
    raw_input_contents payloads as views of `data`)."""
    view = memoryview(data)
    raw: list[memoryview] = []
    rest: list[memoryview] = []
    request_id = ""
    rest_start = 0
    pos = 0
    end_of_data = len(data)
    try:
        while pos < end_of_data:
            field_start = pos
            key = data[pos]  # keys and short lengths are one-byte varints: read those without a call
            pos += 1
            if key >= 0x80:
                key, pos = _read_varint(data, field_start)
            wire_type = key & 7
            if wire_type == 2:
                length = data[pos]
                pos += 1
                if length >= 0x80:
                    length, pos = _read_varint(data, pos - 1)
                end = pos + length
                if end > end_of_data:
                    raise InvalidInput("malformed ModelInferRequest: field runs past the end of the message")
                number = key >> 3
                if number == _RAW_INPUT_FIELD or number == _REQUEST_ID_FIELD:
                    rest.append(view[rest_start:field_start])
                    rest_start = end
                    if number == _RAW_INPUT_FIELD:
                        raw.append(view[pos:end])
                    else:
                        try:
                            request_id = bytes(view[pos:end]).decode("utf-8")
                        except UnicodeDecodeError:
                            raise InvalidInput("request id is not valid UTF-8") from None
                pos = end
            elif wire_type == 0:
                _, pos = _read_varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise InvalidInput(f"malformed ModelInferRequest: unsupported wire type {wire_type}")
    except IndexError:
        raise InvalidInput("malformed ModelInferRequest: truncated message") from None
    if pos != end_of_data:
        raise InvalidInput("malformed ModelInferRequest: truncated message")
    if rest_start == 0:
        return data, request_id, raw
    rest.append(view[rest_start:])
    return b"".join(rest), request_id, raw


def parameter_value(param: pb.InferParameter) -> ParamValue:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else ""


@dataclass(frozen=True, slots=True)
class _RawLayout:
    """A request header whose tensors all come in raw_input_contents: everything but the data, parsed once."""

    model_name: str
    model_version: str
    parameters: dict[str, ParamValue]
    inputs: tuple[tuple[str, datatypes.Datatype, tuple[int, ...]], ...]
    requested_outputs: tuple[str, ...] | None


_headers: OrderedDict[bytes, _RawLayout] = OrderedDict()


def decode_request(data: bytes) -> InferRequest:
    """Parse a serialized ModelInferRequest; raw numeric inputs become read-only views over `data`.

    Clients send the same header (model, tensor names, datatypes, shapes) again and again: for raw requests it
    is parsed and checked once and kept in a bounded cache, so a repeat costs a dict lookup plus
    np.frombuffer.
    """
    header_bytes, request_id, raw = scan_request(data)
    cacheable = len(header_bytes) <= HEADER_CACHE_MAX_KEY_BYTES
    layout = _headers.get(header_bytes) if raw and cacheable else None
    if layout is None:
        try:
            header = pb.ModelInferRequest.FromString(header_bytes)
        except DecodeError as exc:
            raise InvalidInput(f"malformed ModelInferRequest: {exc}") from None
        if not raw:
            request = decode_typed(header)
            request.id = request_id
            return request
        layout = _raw_layout(header)
        if cacheable:
            _headers[header_bytes] = layout
            if len(_headers) > HEADER_CACHE_SIZE:
                _headers.popitem(last=False)
    if len(raw) != len(layout.inputs):  # the key leaves the raw entries out: count them on every request
        names = [name for name, _, _ in layout.inputs]
        raise InvalidInput(
            f"expected one raw_input_contents entry per input: got {len(raw)} for {len(layout.inputs)} "
            f"inputs {names}" + (f"; input '{names[len(raw)]}' has no data" if len(raw) < len(names) else "")
        )
    inputs = [
        InputTensor(name, dtype, shape, array_from_raw(name, dtype, shape, payload))
        for (name, dtype, shape), payload in zip(layout.inputs, raw)
    ]
    requested = list(layout.requested_outputs) if layout.requested_outputs is not None else None
    return InferRequest(
        layout.model_name,
        layout.model_version,
        request_id,
        layout.parameters,
        inputs,
        requested,
        header_bytes if cacheable else None,
    )


def request_identity(data: bytes) -> tuple[str, str, str]:
    """(id, model name, model version) of a request that failed to decode, as far as its bytes still say;
    empty strings otherwise."""
    try:
        header_bytes, request_id, _ = scan_request(data)
        header = pb.ModelInferRequest.FromString(header_bytes)
        return request_id, header.model_name, header.model_version
    except Exception:  # noqa: BLE001 - best effort for an error message; the decode error is what is reported
        return "", "", ""


def _raw_layout(header: pb.ModelInferRequest) -> _RawLayout:
    inputs = []
    for tensor in header.inputs:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"input '{tensor.name}': typed contents and raw_input_contents must not be mixed in one "
                "request"
            )
        inputs.append((tensor.name, _datatype(tensor), _shape(tensor)))
    requested = _requested_outputs(header)
    params = {key: parameter_value(value) for key, value in header.parameters.items()}
    return _RawLayout(header.model_name, header.model_version, params, tuple(inputs), requested)


def _datatype(tensor: pb.ModelInferRequest.InferInputTensor) -> datatypes.Datatype:
    dtype = datatypes.BY_NAME.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input '{tensor.name}': unknown datatype '{tensor.datatype}', "
            f"expected one of {', '.join(datatypes.BY_NAME)}"
        )
    return dtype


def _shape(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{tensor.name}': shape {shown_shape(shape)} has a negative dimension")
    check_shape(tensor.name, shape)
    return shape


MAX_DIMS = 64  # Triton's and NumPy's limit
# NumPy refuses an array whose non-zero dimensions multiply past what its size type holds, even when another
# dimension is 0 ([2**63 - 1, 0] holds nothing, yet np.reshape raises); 16 bytes covers every element size.
_MAX_NONZERO_BYTES = 2**63 - 1


def check_shape(name: str, shape: tuple[int, ...]) -> None:
    """The limits of a tensor shape, whatever the model (non-negative dims are the caller's check)."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': {len(shape)} dimensions, at most {MAX_DIMS}")
    extent = 16
    for dim in shape:
        extent *= dim or 1
    if extent > _MAX_NONZERO_BYTES:
        raise InvalidInput(f"input '{name}': shape {shown_shape(shape)} is too large for any tensor")


def shown_shape(shape: tuple[int, ...]) -> str:
    """A shape for an error message: a client's list of dims is echoed only in part."""
    return str(list(shape)) if len(shape) <= 8 else f"{list(shape[:8])[:-1]}, ... ({len(shape)} dims)]"


def decode_typed(header: pb.ModelInferRequest) -> InferRequest:
    """The uncached path: tensors in typed `contents` (a copy each; raw requests go through the header
    cache)."""
    inputs: list[InputTensor] = []
    for tensor in header.inputs:
        dtype = _datatype(tensor)
        shape = _shape(tensor)
        if not tensor.HasField("contents"):
            raise InvalidInput(f"input '{tensor.name}': no data (neither contents nor raw_input_contents)")
        inputs.append(InputTensor(tensor.name, dtype, shape, _array_from_contents(tensor, dtype, shape)))
    requested = _requested_outputs(header)
    params = {key: parameter_value(value) for key, value in header.parameters.items()}
    return InferRequest(
        header.model_name,
        header.model_version,
        header.id,
        params,
        inputs,
        list(requested) if requested is not None else None,
    )


# Output parameters of Triton extensions hotwire does not implement: refused rather than silently ignored, so
# a client asking for top-k classes or shared-memory outputs never gets a differently shaped answer than it
# expects.
_UNSUPPORTED_OUTPUT_PARAMETERS = {
    "classification": "the classification extension (class_count) is not supported: request the raw output",
    "shared_memory_region": (
        "the shared-memory extension is not supported: outputs come in raw_output_contents"
    ),
}


def _requested_outputs(header: pb.ModelInferRequest) -> tuple[str, ...] | None:
    for out in header.outputs:
        for key in out.parameters:
            if key in _UNSUPPORTED_OUTPUT_PARAMETERS:
                raise InvalidInput(
                    f"output '{out.name}': parameter '{key}': {_UNSUPPORTED_OUTPUT_PARAMETERS[key]}"
                )
    return tuple(out.name for out in header.outputs) if header.outputs else None


def array_from_raw(
    name: str, dtype: datatypes.Datatype, shape: tuple[int, ...], data: memoryview
) -> np.ndarray:
    count = element_count(shape)
    if dtype.name == "BYTES":
        return _bytes_array_from_raw(name, shape, count, data)
    expected = count * dtype.itemsize
    if data.nbytes != expected:
        raise InvalidInput(
            f"input '{name}': raw content is {data.nbytes} bytes, expected {expected} "
            f"({count} {dtype.name} elements of shape {list(shape)})"
        )
    return np.frombuffer(data, dtype=dtype.numpy).reshape(shape)


def _bytes_array_from_raw(name: str, shape: tuple[int, ...], count: int, data: memoryview) -> np.ndarray:
    elements = bytes_elements(name, data)
    if len(elements) != count:
        raise InvalidInput(
            f"input '{name}': raw content holds {len(elements)} BYTES elements, expected {count} for shape "
            f"{list(shape)}"
        )
    return _object_array(elements, shape)


def bytes_elements(name: str, data: memoryview) -> list[str]:
    """The elements of a raw BYTES tensor (each a 4-byte little-endian length, then that many UTF-8 bytes)."""
    elements: list[str] = []
    pos = 0
    size = data.nbytes
    while pos < size:
        if pos + 4 > size:
            raise InvalidInput(f"input '{name}': BYTES element length prefix truncated at offset {pos}")
        (length,) = _LENGTH_PREFIX.unpack_from(data, pos)
        pos += 4
        if pos + length > size:
            raise InvalidInput(
                f"input '{name}': BYTES element {len(elements)} runs past the end of the content"
            )
        elements.append(_utf8(name, data[pos : pos + length]))
        pos += length
    return elements


def _utf8(name: str, value: bytes | memoryview) -> str:
    # ONNX Runtime's Python API takes string tensors as str only (bytes would be fed as "b'..'").
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"input '{name}': BYTES element is not valid UTF-8, which ONNX string tensors require"
        ) from None


def _object_array(elements: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _array_from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, dtype: datatypes.Datatype, shape: tuple[int, ...]
) -> np.ndarray:
    if dtype.contents_field is None:
        raise InvalidInput(
            f"input '{tensor.name}': {dtype.name} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, dtype.contents_field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{tensor.name}': contents holds {len(values)} elements in {dtype.contents_field}, "
            f"expected {count} for shape {list(shape)}"
        )
    for other in pb.InferTensorContents.DESCRIPTOR.fields:
        if other.name != dtype.contents_field and len(getattr(tensor.contents, other.name)):
            raise InvalidInput(
                f"input '{tensor.name}': datatype {dtype.name} expects {dtype.contents_field}, got "
                f"{other.name}"
            )
    if dtype.name == "BYTES":
        return _object_array([_utf8(tensor.name, v) for v in values], shape)
    if dtype.name != "BOOL" and dtype.numpy.kind in "iu":
        info = np.iinfo(dtype.numpy)
        if count and (min(values) < info.min or max(values) > info.max):
            raise InvalidInput(f"input '{tensor.name}': a value is out of range for {dtype.name}")
    return np.array(values, dtype=dtype.numpy).reshape(shape)


# ------------------------------------------------------------------------------------------------------------
# encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def raw_bytes(array: np.ndarray, dtype: datatypes.Datatype) -> bytes | memoryview:
    """The raw_output_contents form of an output array: a view when it is already contiguous little-endian."""
    if dtype.name == "BYTES":
        parts: list[bytes] = []
        for element in array.reshape(-1):
            encoded = element.encode("utf-8") if isinstance(element, str) else bytes(element)
            parts.append(_LENGTH_PREFIX.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    if array.nbytes <= _SMALL_OUTPUT_BYTES:
        # one small copy is cheaper than building a view
        return array.astype(dtype.numpy, copy=False).tobytes()
    contiguous = np.ascontiguousarray(array, dtype=dtype.numpy)
    # A flat uint8 view rather than memoryview.cast, which refuses shapes with a zero dimension.
    return memoryview(contiguous.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy stubs: no buffer protocol


def _set_parameter(target: pb.InferParameter, value: ParamValue) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _string_field(tag: bytes, value: str) -> bytes:
    encoded = value.encode("utf-8")
    return tag + _varint(len(encoded)) + encoded if encoded else b""


def _nbytes(part: bytes | memoryview) -> int:
    return part.nbytes if isinstance(part, memoryview) else len(part)


class ResponseEncoder:
    """Builds ModelInferResponse bytes for one model version, field by field in field-number order.

    model_name and model_version are encoded once; the `outputs` metadata (names, datatypes, shapes) is
    serialized once per distinct layout and cached; each output's data is framed as a raw_output_contents
    entry and copied once into the response (small outputs take one extra, cheaper-than-a-view copy).
    """

    LAYOUT_CACHE_SIZE = 256

    def __init__(self, model_name: str, model_version: str) -> None:
        self._prefix = _string_field(b"\x0a", model_name) + _string_field(b"\x12", model_version)
        self._layouts: OrderedDict[tuple, tuple[bytes, tuple[datatypes.Datatype, ...]]] = OrderedDict()

    def _layout(
        self, names: list[str], outputs: list[np.ndarray]
    ) -> tuple[bytes, tuple[datatypes.Datatype, ...]]:
        key = tuple((name, a.dtype.str, a.shape) for name, a in zip(names, outputs))
        cached = self._layouts.get(key)
        if cached is None:
            dtypes = tuple(datatypes.from_numpy(a.dtype) for a in outputs)
            message = pb.ModelInferResponse()
            for name, array, dtype in zip(names, outputs, dtypes):
                message.outputs.add(name=name, datatype=dtype.name, shape=array.shape)
            cached = (message.SerializeToString(), dtypes)
            self._layouts[key] = cached
            if len(self._layouts) > self.LAYOUT_CACHE_SIZE:
                self._layouts.popitem(last=False)
        return cached

    def parts(self, response: InferResponse) -> list[bytes | memoryview]:
        layout, dtypes = self._layout(response.output_names, response.outputs)
        parts: list[bytes | memoryview] = [self._prefix, _string_field(b"\x1a", response.id)]
        if response.parameters:
            message = pb.ModelInferResponse()
            for key, value in response.parameters.items():
                _set_parameter(message.parameters[key], value)
            parts.append(message.SerializeToString())
        parts.append(layout)
        for array, dtype in zip(response.outputs, dtypes):
            payload = raw_bytes(array, dtype)
            parts.append(_RAW_OUTPUT_TAG + _varint(_nbytes(payload)))
            parts.append(payload)
        return parts

    def encode(self, response: InferResponse) -> bytes:
        """A serialized ModelInferResponse: every output in raw_output_contents, one entry per output, in
        order."""
        return b"".join(self.parts(response))

    def encode_stream(self, response: InferResponse) -> bytes:
        """A serialized ModelStreamInferResponse wrapping the response, with the same single copy."""
        parts = self.parts(response)
        return b"".join([_STREAM_RESPONSE_TAG, _varint(sum(_nbytes(p) for p in parts)), *parts])
