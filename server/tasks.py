"""The owner of fire-and-forget tasks: each held until it ends, and all awaited or cancelled at shutdown.

The event loop keeps only weak references to tasks, so a task nobody holds can vanish half-done; and a task
nobody awaits hides its exception until garbage collection. Every background task of the server
(draining versions, shadow requests, health updates, stream readers) is started through one of these.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTasks:
    def __init__(self, owner: str, log_failures: bool = True) -> None:
        """`log_failures`: False where the starter awaits each task itself and handles its exception."""
        self._owner = owner
        self._log_failures = log_failures
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._log_failures:
            log.error(
                "%s: background task %s failed", self._owner, task.get_name(), exc_info=task.exception()
            )

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def wait(self) -> None:
        """Until every task has ended, those started meanwhile included."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel what is still running and wait for it to end."""
        self.cancel_all()
        await self.wait()
