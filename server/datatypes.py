"""The one table relating the protocol's datatype names to NumPy, ONNX Runtime and model_config.proto.

Every other module asks this one: the protocol name ("FP32") is the canonical key.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    name: str  # Open Inference Protocol name, e.g. "FP32"
    numpy: np.dtype  # dtype of the raw little-endian elements (object for BYTES)
    onnx: str  # onnxruntime NodeArg.type, e.g. "tensor(float)"
    config: str  # model_config.proto DataType enum name, e.g. "TYPE_FP32"
    contents_field: str | None  # InferTensorContents field for typed contents; None: raw only (FP16)

    @property
    def itemsize(self) -> int:
        """Bytes per element in raw form; 0 for BYTES (variable length)."""
        return 0 if self.name == "BYTES" else self.numpy.itemsize


_ALL = (
    Datatype("BOOL", np.dtype(np.bool_), "tensor(bool)", "TYPE_BOOL", "bool_contents"),
    Datatype("UINT8", np.dtype("<u1"), "tensor(uint8)", "TYPE_UINT8", "uint_contents"),
    Datatype("UINT16", np.dtype("<u2"), "tensor(uint16)", "TYPE_UINT16", "uint_contents"),
    Datatype("UINT32", np.dtype("<u4"), "tensor(uint32)", "TYPE_UINT32", "uint_contents"),
    Datatype("UINT64", np.dtype("<u8"), "tensor(uint64)", "TYPE_UINT64", "uint64_contents"),
    Datatype("INT8", np.dtype("<i1"), "tensor(int8)", "TYPE_INT8", "int_contents"),
    Datatype("INT16", np.dtype("<i2"), "tensor(int16)", "TYPE_INT16", "int_contents"),
    Datatype("INT32", np.dtype("<i4"), "tensor(int32)", "TYPE_INT32", "int_contents"),
    Datatype("INT64", np.dtype("<i8"), "tensor(int64)", "TYPE_INT64", "int64_contents"),
    Datatype("FP16", np.dtype("<f2"), "tensor(float16)", "TYPE_FP16", None),
    Datatype("FP32", np.dtype("<f4"), "tensor(float)", "TYPE_FP32", "fp32_contents"),
    Datatype("FP64", np.dtype("<f8"), "tensor(double)", "TYPE_FP64", "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "tensor(string)", "TYPE_STRING", "bytes_contents"),
)

BY_NAME: dict[str, Datatype] = {d.name: d for d in _ALL}
BY_ONNX: dict[str, Datatype] = {d.onnx: d for d in _ALL}
BY_CONFIG: dict[str, Datatype] = {d.config: d for d in _ALL}


def from_numpy(dtype: np.dtype) -> Datatype:
    """The datatype of an ONNX Runtime output array (str/bytes object arrays are BYTES)."""
    if dtype.kind in ("O", "U", "S"):
        return BY_NAME["BYTES"]
    for d in _ALL:
        if d.name != "BYTES" and d.numpy == dtype.newbyteorder("<"):
            return d
    raise KeyError(f"no protocol datatype for numpy dtype {dtype}")


def element_count(shape: Iterable[int]) -> int:
    """The number of elements of a tensor of this shape: exact Python int arithmetic, so huge dims (a client's
    shape, say) give their true product, never a wrapped-around one as np.prod's int64 would."""
    return math.prod(map(operator.index, shape))  # index: NumPy ints become Python ints, floats are refused
