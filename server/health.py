"""grpc.health.v1 for hotwire: grpc's asyncio HealthServicer, plus an end to `Watch` streams at shutdown.

grpc's Watch never returns, so one idle watcher would hold a graceful shutdown for the whole grace period
(and a 30 s grace matches Kubernetes' default, after which the pod is killed rather than exiting 0). At
shutdown every watcher is first sent NOT_SERVING (`enter_graceful_shutdown`), then its stream ends with OK
(`end_watches`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
FINAL_STATUSES = (NOT_SERVING, SERVICE_UNKNOWN)  # what a watcher has been told last before its stream may end


class _RecordingContext:
    """The Watch call's context, noting each status written to the client."""

    def __init__(self, context: Any, sent: list[int]) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        self._sent.append(message.status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class HealthServicer(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._watches: dict[asyncio.Task[Any], list[int]] = {}
        self._ending = False

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802 - gRPC name
        task = asyncio.current_task()
        assert task is not None
        sent: list[int] = []
        self._watches[task] = sent
        try:
            await super().Watch(request, _RecordingContext(context, sent))
        except asyncio.CancelledError:
            if not self._ending:
                raise  # the client went away
        finally:
            self._watches.pop(task, None)

    async def end_watches(self, timeout_s: float = 1.0) -> None:
        """After enter_graceful_shutdown: once every watcher was sent NOT_SERVING (at most `timeout_s`), end
        their streams with OK."""
        self._ending = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and any(
            not sent or sent[-1] not in FINAL_STATUSES for sent in self._watches.values()
        ):
            await asyncio.sleep(0.005)
        for task in list(self._watches):
            task.cancel()
