"""The one element-count helper: exact for any shape, whatever integer type its dims come in."""

from __future__ import annotations

import numpy as np
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import datatypes, wire
from hotwire.server.errors import InvalidInput


@pytest.mark.parametrize(("shape", "count"), [((), 1), ((0,), 0), ((3,), 3), ((2, 3, 4), 24), ([5, 0, 7], 0)])
def test_element_count(shape, count):
    assert datatypes.element_count(shape) == count


def test_element_count_is_exact_where_int64_wraps_around():
    huge = (2**32, 2**32)  # 2**64 elements: np.prod's int64 says 0
    assert int(np.prod(np.array(huge, dtype=np.int64))) == 0
    assert datatypes.element_count(huge) == 2**64
    assert datatypes.element_count(np.array(huge, dtype=np.int64)) == 2**64  # NumPy dims become Python ints
    assert datatypes.element_count((np.int64(2), 5)) == 10


def test_element_count_refuses_fractional_dims():
    with pytest.raises(TypeError):
        datatypes.element_count((2.0, 3))


def test_a_request_whose_shape_overflows_int64_is_refused_naming_the_shape():
    """2**32 x 2**32 elements wrap to 0 in int64 arithmetic: counted exactly, the shape is too large for any
    tensor, and the request is refused before its data is looked at."""
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2**32, 2**32])
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match=r"input 'x': shape \[4294967296, 4294967296\] is too large"):
        wire.decode_request(request.SerializeToString())
