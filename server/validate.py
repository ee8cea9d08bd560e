"""Check a decoded request against the model's signature; produce what the batcher needs.

Every failure is InvalidInput naming the tensor and what was expected. The outcome depends only on the
request's header (names, datatypes, shapes, parameters), so it is a `RequestPlan` that a model version caches
per header key and binds to each request's arrays.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hotwire.server.datatypes import element_count
from hotwire.server.errors import InvalidInput
from hotwire.server.model_config import Signature
from hotwire.server.repository import shown
from hotwire.server.wire import InferRequest

PLAN_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class RequestPlan:
    # per request input: the shape the model takes (None: as sent)
    model_shapes: tuple[tuple[int, ...] | None, ...]
    rows: int
    shape_key: tuple
    output_names: tuple[str, ...]
    priority: int
    timeout_us: int
    # the response's output bytes when the config and the input shapes fix them (None: known after compute)
    response_bytes: int | None = None

    def bind(self, request: InferRequest) -> ValidRequest:
        feeds = {
            tensor.name: tensor.array if shape is None else tensor.array.reshape(shape)
            for tensor, shape in zip(request.inputs, self.model_shapes)
        }
        return ValidRequest(
            feeds,
            self.rows,
            self.shape_key,
            self.output_names,
            self.priority,
            self.timeout_us,
            self.response_bytes,
        )


class PlanCache:
    """Request plans by header key, bounded; owned by one model version (plans depend on its signature)."""

    def __init__(
        self, signature: Signature, model: str, check: Callable[[InferRequest], None] | None = None
    ) -> None:
        """`check`: more validation of a request's header (a preprocessing pipeline's minimum image size)."""
        self._signature = signature
        self._model = model
        self._check = check
        self._plans: OrderedDict[bytes, RequestPlan] = OrderedDict()

    def validate(self, request: InferRequest) -> ValidRequest:
        key = request.header_key
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            plan = make_plan(request, self._signature, self._model)
            if self._check is not None:
                self._check(request)
            if key is not None:
                self._plans[key] = plan
                if len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)
        return plan.bind(request)


@dataclass(slots=True)
class ValidRequest:
    # model input name -> array in the model's shape (still a view of the request)
    feeds: dict[str, np.ndarray]
    rows: int
    shape_key: tuple
    output_names: tuple[str, ...]
    priority: int = 0
    timeout_us: int = 0
    response_bytes: int | None = None


def make_plan(request: InferRequest, signature: Signature, model: str) -> RequestPlan:
    seen: set[str] = set()
    model_shapes: list[tuple[int, ...] | None] = []
    # per input: its item shape, or only its rank where ragged or resized inputs of any extent batch together
    shape_key: list[tuple[str, int | tuple[int, ...]]] = []
    rows: int | None = None
    batched = signature.batched
    for tensor in request.inputs:
        spec = signature.input(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"model '{model}' has no input '{shown(tensor.name)}'; expected inputs: "
                f"{[s.name for s in signature.inputs]}"
            )
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        seen.add(tensor.name)
        if tensor.datatype is not spec.datatype:
            raise InvalidInput(
                f"input '{tensor.name}': datatype {tensor.datatype.name} does not match the model's "
                f"{spec.datatype.name}"
            )
        shape = tensor.shape
        expected = signature.full_shape(spec)
        if len(shape) != len(expected) or any(e != -1 and s != e for s, e in zip(shape, expected)):
            raise InvalidInput(
                f"input '{tensor.name}': shape {list(shape)} does not match the model's {expected}"
            )
        item_shape = shape[1:] if batched else shape
        if spec.resized and 0 in item_shape:
            raise InvalidInput(
                f"input '{tensor.name}': shape {list(shape)} has an empty dimension; "
                "its preprocessing pipeline needs at least one element per axis"
            )
        if batched:
            if shape[0] < 1 or shape[0] > signature.max_batch_size:
                raise InvalidInput(
                    f"input '{tensor.name}': batch size {shape[0]} is outside 1..{signature.max_batch_size} "
                    "(the model's max_batch_size)"
                )
            if rows is not None and shape[0] != rows:
                raise InvalidInput(
                    f"input '{tensor.name}': batch size {shape[0]} differs from the other inputs' {rows}"
                )
            rows = shape[0]
        model_shape: tuple[int, ...] | None = None
        # config `reshape`: the model takes another shape of the same elements
        if spec.model_dims != spec.dims:
            model_shape = _reshaped(
                tensor.name, shape, ((shape[0],) if batched else ()) + tuple(spec.model_dims)
            )
        model_shapes.append(model_shape)
        shape_key.append((tensor.name, len(item_shape) if spec.ragged or spec.resized else item_shape))
    missing = [s.name for s in signature.inputs if s.name not in seen and not s.optional]
    if missing:
        raise InvalidInput(f"model '{model}' expects input(s) {missing}, which the request lacks")
    if request.requested_outputs is None:
        output_names = tuple(s.name for s in signature.outputs)
    else:
        if len(set(request.requested_outputs)) != len(request.requested_outputs):
            repeated = next(n for n in request.requested_outputs if request.requested_outputs.count(n) > 1)
            # each copy would be computed and sent again: 25,000 copies made a 266 KB request a 64 MB answer
            raise InvalidInput(f"output '{repeated}' is requested more than once")
        for name in request.requested_outputs:
            if signature.output(name) is None:
                raise InvalidInput(
                    f"model '{model}' has no output '{shown(name)}'; expected outputs: "
                    f"{[s.name for s in signature.outputs]}"
                )
        output_names = tuple(request.requested_outputs)
    return RequestPlan(
        tuple(model_shapes),
        rows or 1,
        tuple(sorted(shape_key)),
        output_names,
        _int_parameter(request, "priority"),
        _int_parameter(request, "timeout"),
        _response_bytes(signature, output_names, rows or 1),
    )


def _reshaped(name: str, shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """The request's shape as the config `reshape` target, its variable dimension resolved here.

    Only a fully known target used to be checked: one with a -1 went to np.reshape in `bind`, so 3 elements
    for [-1, 2], or any for [-1, 0] or [-1, -1], was a ValueError ("cannot reshape array of size 3 into
    shape (1,newaxis,2)"), INTERNAL for the client's mistake."""
    count = element_count(shape)
    variable = [i for i, d in enumerate(target) if d == -1]
    known = element_count(d for d in target if d != -1)
    if not variable and known == count:
        return target
    if len(variable) == 1 and known and count % known == 0:
        return target[: variable[0]] + (count // known,) + target[variable[0] + 1 :]
    why = " (more than one variable dimension)" if len(variable) > 1 else ""
    raise InvalidInput(
        f"input '{name}': shape {list(shape)} ({count} elements) cannot be reshaped to the model's "
        f"{list(target)}{why}"
    )


def _response_bytes(signature: Signature, output_names: tuple[str, ...], rows: int) -> int | None:
    """The outputs' bytes when the config fixes every output dimension (None: a dynamic one, or BYTES)."""
    total = 0
    for name in output_names:
        spec = signature.output(name)
        assert spec is not None  # checked by make_plan
        if spec.datatype.itemsize == 0 or any(d < 0 for d in spec.dims):
            return None
        total += (rows if signature.batched else 1) * element_count(spec.dims) * spec.datatype.itemsize
    return total


def _int_parameter(request: InferRequest, key: str) -> int:
    """The reserved `priority` (uint64) and `timeout` (int64, microseconds) request parameters."""
    value = request.parameters.get(key, 0)
    # gRPC's int64/uint64 fields bound these; JSON (HTTP) does not: a huge one would fail deep in the batcher
    limit = 2**64 - 1 if key == "priority" else 2**63 - 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise InvalidInput(f"parameter '{key}': expected an integer from 0 to {limit}, got {value!r}")
    return value
