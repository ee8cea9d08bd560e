"""What `stream()` yields, and the ids that match answers to requests."""

from __future__ import annotations

import itertools
import os

from hotwire.clients.errors import InferenceServerError
from hotwire.clients.protocol import StreamRequest
from hotwire.clients.tensors import InferResult

__all__ = ["StreamResponse", "RequestIds"]


class StreamResponse:
    """The server's answer to one stream request: `result()` returns it, or raises its in-band error."""

    __slots__ = ("_answer", "request")

    def __init__(self, request: StreamRequest | None, answer: InferResult | InferenceServerError) -> None:
        self.request = request  # None only when the server answered an id this stream never sent
        self._answer = answer

    @property
    def error(self) -> InferenceServerError | None:
        return self._answer if isinstance(self._answer, InferenceServerError) else None

    def result(self) -> InferResult:
        if isinstance(self._answer, InferenceServerError):
            raise self._answer
        return self._answer


class RequestIds:
    """Fresh request ids, unique per client (a random prefix) and thread-safe: itertools.count's next is one
    C call, where a generator's next from two threads at once raises "generator already executing"."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex() + "-"
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return self._prefix + str(next(self._count))
