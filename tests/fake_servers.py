"""V2 servers for the bench's tests, in a thread of the test process: the echo reference server's servicer
(metadata, config, zeros of the right shape) with a delay chosen per request, so that tests can make a server
that stalls or slows down with load and check what the bench reports of it."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from hotwire.bench.reference_servers import (
    GRPC_OPTIONS,
    ReferenceServicer,
    make_session,
    signature_from_session,
)
from hotwire.proto import grpc_service_pb2_grpc

CLASSIFIER = (
    Path(__file__).resolve().parents[1] / "server" / "example_repository" / "classifier" / "1" / "model.onnx"
)


class DelayedEcho(ReferenceServicer):
    """Echo, each ModelInfer answered after `delay()` seconds (awaited: other requests go on meanwhile)."""

    def __init__(
        self, delay: Callable[[], float], model: Path = CLASSIFIER, name: str = "classifier"
    ) -> None:
        super().__init__(signature_from_session(name, make_session(str(model))), None, "echo")
        self.delay = delay

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 (the RPC's name)
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)
        return await super().ModelInfer(request, context)


def stall_each_second(stall_s: float) -> Callable[[], float]:
    """A request arriving in the first `stall_s` of a second waits until that stall is over."""

    def delay() -> float:
        return max(0.0, stall_s - time.monotonic() % 1.0)

    return delay


def slower_over(knee_rps: float, fast_s: float, slow_s: float, window_s: float = 0.5) -> Callable[[], float]:
    """`fast_s` while requests arrive at under `knee_rps` (counted over `window_s`), else `slow_s`."""
    arrivals: collections.deque[float] = collections.deque()

    def delay() -> float:
        now = time.monotonic()
        arrivals.append(now)
        while arrivals[0] < now - window_s:
            arrivals.popleft()
        return fast_s if len(arrivals) / window_s < knee_rps else slow_s

    return delay


@contextmanager
def serve_in_thread(servicer: ReferenceServicer) -> Iterator[str]:
    """Serve `servicer` on 127.0.0.1 (an ephemeral port) from a thread of its own; yields the address."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    address: list[str] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        server = grpc.aio.server(options=GRPC_OPTIONS)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        address.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        ready.set()
        await stop[0].wait()
        await server.stop(0.5)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the fake server did not start")
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
