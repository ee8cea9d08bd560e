"""Protobuf bytes ⇄ request/response objects, without copying tensor payloads.

protobuf copies a bytes field on every access, so ModelInfer is served by a generic handler that receives the raw
request bytes: `decode_request` scans the top-level fields once, keeps each `raw_input_contents` entry (field 7) as
a memoryview of the request and lets protobuf parse only the small rest. `encode_response` serializes the response
header with protobuf and frames `raw_output_contents` (field 6) itself, so output arrays are copied exactly once,
into the response bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from google.protobuf.message import DecodeError

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import datatypes
from hotwire.server.errors import InvalidInput

_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited
_STREAM_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited
_LENGTH_PREFIX = struct.Struct("<I")  # BYTES elements in raw form: 4-byte little-endian length, then the bytes

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
    parameters: dict[str, ParamValue]
    inputs: list[InputTensor]
    requested_outputs: list[str] | None  # None: every output of the model


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    output_names: list[str]
    outputs: list[np.ndarray]
    parameters: dict[str, ParamValue] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# decoding


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


def split_raw_inputs(data: bytes) -> tuple[bytes, list[memoryview]]:
    """Split a serialized ModelInferRequest into (everything but field 7, the field-7 payloads as views)."""
    view = memoryview(data)
    raw: list[memoryview] = []
    rest: list[memoryview] = []
    rest_start = 0
    pos = 0
    end_of_data = len(data)
    try:
        while pos < end_of_data:
            field_start = pos
            key, pos = _read_varint(data, pos)
            wire_type = key & 7
            if wire_type == 2:
                length, pos = _read_varint(data, pos)
                end = pos + length
                if end > end_of_data:
                    raise InvalidInput("malformed ModelInferRequest: field runs past the end of the message")
                if key >> 3 == _RAW_INPUT_FIELD:
                    rest.append(view[rest_start:field_start])
                    raw.append(view[pos:end])
                    rest_start = end
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
    if not raw:
        return data, raw
    rest.append(view[rest_start:])
    return b"".join(rest), raw


def parameter_value(param: pb.InferParameter) -> ParamValue:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else ""


def decode_request(data: bytes) -> InferRequest:
    """Parse a serialized ModelInferRequest; raw numeric inputs become read-only views over `data`."""
    header_bytes, raw = split_raw_inputs(data)
    try:
        header = pb.ModelInferRequest.FromString(header_bytes)
    except DecodeError as exc:
        raise InvalidInput(f"malformed ModelInferRequest: {exc}") from None
    return decode_parsed(header, raw)


def decode_parsed(header: pb.ModelInferRequest, raw: list[memoryview]) -> InferRequest:
    if raw and len(raw) != len(header.inputs):
        raise InvalidInput(
            f"expected one raw_input_contents entry per input: got {len(raw)} for {len(header.inputs)} inputs"
        )
    inputs: list[InputTensor] = []
    for i, tensor in enumerate(header.inputs):
        dtype = datatypes.BY_NAME.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(
                f"input '{tensor.name}': unknown datatype '{tensor.datatype}', "
                f"expected one of {', '.join(datatypes.BY_NAME)}"
            )
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input '{tensor.name}': shape {list(shape)} has a negative dimension")
        has_contents = tensor.HasField("contents")
        if raw:
            if has_contents:
                raise InvalidInput(
                    f"input '{tensor.name}': typed contents and raw_input_contents must not be mixed in one request"
                )
            array = _array_from_raw(tensor.name, dtype, shape, raw[i])
        elif has_contents:
            array = _array_from_contents(tensor, dtype, shape)
        else:
            raise InvalidInput(f"input '{tensor.name}': no data (neither contents nor raw_input_contents)")
        inputs.append(InputTensor(tensor.name, dtype, shape, array))
    requested = [out.name for out in header.outputs] if header.outputs else None
    params = {key: parameter_value(value) for key, value in header.parameters.items()}
    return InferRequest(header.model_name, header.model_version, header.id, params, inputs, requested)


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _array_from_raw(name: str, dtype: datatypes.Datatype, shape: tuple[int, ...], data: memoryview) -> np.ndarray:
    count = _element_count(shape)
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
    elements: list[str] = []
    pos = 0
    size = data.nbytes
    while pos < size:
        if pos + 4 > size:
            raise InvalidInput(f"input '{name}': BYTES element length prefix truncated at offset {pos}")
        (length,) = _LENGTH_PREFIX.unpack_from(data, pos)
        pos += 4
        if pos + length > size:
            raise InvalidInput(f"input '{name}': BYTES element {len(elements)} runs past the end of the content")
        elements.append(_utf8(name, data[pos : pos + length]))
        pos += length
    if len(elements) != count:
        raise InvalidInput(
            f"input '{name}': raw content holds {len(elements)} BYTES elements, expected {count} for shape {list(shape)}"
        )
    return _object_array(elements, shape)


def _utf8(name: str, value: bytes | memoryview) -> str:
    # ONNX Runtime's Python API takes string tensors as str only (bytes would be fed as "b'..'").
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': BYTES element is not valid UTF-8, which ONNX string tensors require") from None


def _object_array(elements: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _array_from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, dtype: datatypes.Datatype, shape: tuple[int, ...]
) -> np.ndarray:
    if dtype.contents_field is None:
        raise InvalidInput(f"input '{tensor.name}': {dtype.name} has no typed contents field; send it in raw_input_contents")
    values = getattr(tensor.contents, dtype.contents_field)
    count = _element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{tensor.name}': contents holds {len(values)} elements in {dtype.contents_field}, "
            f"expected {count} for shape {list(shape)}"
        )
    for other in pb.InferTensorContents.DESCRIPTOR.fields:
        if other.name != dtype.contents_field and len(getattr(tensor.contents, other.name)):
            raise InvalidInput(
                f"input '{tensor.name}': datatype {dtype.name} expects {dtype.contents_field}, got {other.name}"
            )
    if dtype.name == "BYTES":
        return _object_array([_utf8(tensor.name, v) for v in values], shape)
    if dtype.name != "BOOL" and dtype.numpy.kind in "iu":
        info = np.iinfo(dtype.numpy)
        if count and (min(values) < info.min or max(values) > info.max):
            raise InvalidInput(f"input '{tensor.name}': a value is out of range for {dtype.name}")
    return np.array(values, dtype=dtype.numpy).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
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
    contiguous = np.ascontiguousarray(array, dtype=dtype.numpy)
    # A flat uint8 view rather than memoryview.cast, which refuses shapes with a zero dimension.
    return memoryview(contiguous.reshape(-1).view(np.uint8))


def _set_parameter(target: pb.InferParameter, value: ParamValue) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _response_parts(response: InferResponse) -> tuple[list[bytes | memoryview], int]:
    header = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for key, value in response.parameters.items():
        _set_parameter(header.parameters[key], value)
    parts: list[bytes | memoryview] = []
    payloads: list[bytes | memoryview] = []
    for name, array in zip(response.output_names, response.outputs):
        dtype = datatypes.from_numpy(array.dtype)
        header.outputs.add(name=name, datatype=dtype.name, shape=array.shape)
        payloads.append(raw_bytes(array, dtype))
    parts.append(header.SerializeToString())
    for payload in payloads:
        parts.append(_RAW_OUTPUT_TAG + _varint(payload.nbytes if isinstance(payload, memoryview) else len(payload)))
        parts.append(payload)
    total = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
    return parts, total


def encode_response(response: InferResponse) -> bytes:
    """A serialized ModelInferResponse with every output in raw_output_contents, one entry per output, in order."""
    parts, _ = _response_parts(response)
    return b"".join(parts)


def encode_stream_response(response: InferResponse) -> bytes:
    """A serialized ModelStreamInferResponse wrapping the response, built with the same single copy."""
    parts, total = _response_parts(response)
    return b"".join([_STREAM_RESPONSE_TAG, _varint(total), *parts])


def encode_stream_error(message: str) -> bytes:
    return pb.ModelStreamInferResponse(error_message=message).SerializeToString()


def join(parts: Iterable[bytes]) -> bytes:
    return b"".join(parts)
