"""Dynamic batching: a bounded queue per model version, a pure batching decision, one dispatch loop per instance.

`plan_batch` decides, from the queue's state and the clock alone, how many queued requests to take now or how long
to wait; it is unit-tested with a fake clock. Each instance runs a dispatch loop that takes the next batch when it
is free, so a batch always goes to the next free instance (work-conserving: an idle instance with delay 0 takes a
lone request at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from hotwire.server.errors import ResourceExhausted, Unavailable
from hotwire.server.runner import Instance

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int  # 0: no batch dimension, every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 1024  # bounded: a full queue fails fast with RESOURCE_EXHAUSTED
    enabled: bool = True  # dynamic_batching present in the config


@dataclass
class WorkItem:
    """One request waiting for an instance. Its future travels with it (DESIGN.md §2.5)."""

    feeds: dict[str, np.ndarray]  # model input name -> array shaped as the model takes it
    rows: int  # batch-dimension size (1 for models without a batch dimension)
    shape_key: tuple  # non-batch shapes of every input: only equal keys batch together
    output_names: tuple[str, ...]
    future: asyncio.Future[list[np.ndarray]]
    enqueued_at: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """What plan_batch sees of a queued item."""

    rows: int
    shape_key: tuple
    enqueued_at: float


def plan_batch(queue: Sequence[Pending], policy: BatchingPolicy, now: float) -> tuple[int, float]:
    """(items to take from the head now, 0) or (0, seconds to wait before asking again).

    Only a run of items from the head with the head's shapes can batch together (FIFO order is kept).
    """
    if not queue:
        return 0, 0.0
    if policy.max_batch_size == 0 or not policy.enabled:
        return 1, 0.0
    head = queue[0]
    rows = 0
    count = 0
    largest_preferred = 0
    can_grow = True
    for item in queue:
        if item.shape_key != head.shape_key or rows + item.rows > policy.max_batch_size:
            can_grow = False
            break
        rows += item.rows
        count += 1
        if rows in policy.preferred_batch_sizes:
            largest_preferred = count
    if rows >= policy.max_batch_size:
        can_grow = False
    if not can_grow or policy.max_queue_delay_s <= 0:
        return count, 0.0
    if largest_preferred:
        return largest_preferred, 0.0
    waited = now - head.enqueued_at
    if waited >= policy.max_queue_delay_s:
        return count, 0.0
    return 0, policy.max_queue_delay_s - waited


class Batcher:
    """Owns one model version's queue and the dispatch loops of its instances. Lives on the event loop."""

    def __init__(self, name: str, policy: BatchingPolicy, instances: list[Instance], output_names: Sequence[str],
                 clock: Clock = time.monotonic) -> None:
        self.name = name
        self.policy = policy
        self._instances = instances
        self._all_outputs = tuple(output_names)
        self._clock = clock
        self._queue: deque[WorkItem] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._dispatch_loop(inst), name=f"{self.name}:{inst.name}") for inst in self._instances]

    def submit(self, feeds: dict[str, np.ndarray], rows: int, shape_key: tuple,
               output_names: tuple[str, ...]) -> asyncio.Future[list[np.ndarray]]:
        if self._closed:
            raise Unavailable(f"model '{self.name}' is shutting down")
        if len(self._queue) >= self.policy.max_queue_size:
            raise ResourceExhausted(f"model '{self.name}': queue full ({self.policy.max_queue_size} requests waiting)")
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(WorkItem(feeds, rows, shape_key, output_names, future, self._clock()))
        self._wakeup.set()
        return future

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Stop taking work; queued requests still run to completion (drain), then the loops end."""
        self._closed = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _take(self) -> tuple[list[WorkItem], float]:
        while self._queue and self._queue[0].future.cancelled():
            self._queue.popleft()  # a cancelled client frees its slot without being computed
        pending = [Pending(i.rows, i.shape_key, i.enqueued_at) for i in self._queue]
        count, wait = plan_batch(pending, self.policy, self._clock())
        return [self._queue.popleft() for _ in range(count)], wait

    async def _dispatch_loop(self, instance: Instance) -> None:
        while True:
            batch, wait = self._take()
            if batch:
                await self._run(instance, batch)
                continue
            if self._closed and not self._queue:
                return
            self._wakeup.clear()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._wakeup.wait()

    async def _run(self, instance: Instance, batch: list[WorkItem]) -> None:
        # Another loop may be waiting on a delay that this batch just changed: let it re-plan.
        if self._queue:
            self._wakeup.set()
        try:
            if len(batch) == 1:
                item = batch[0]
                outputs = await instance.run(item.feeds, item.output_names)
                _resolve(item.future, outputs)
                return
            feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in batch[0].feeds}
            outputs = await instance.run(feeds, self._all_outputs)
            start = 0
            for item in batch:
                rows = slice(start, start + item.rows)
                start += item.rows
                by_name = dict(zip(self._all_outputs, outputs))
                _resolve(item.future, [by_name[name][rows] for name in item.output_names])
        except Exception as exc:  # an ORT failure fails this batch only, never the loop
            log.warning("model %s: inference failed on %s: %s", self.name, instance.name, exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)


def _resolve(future: asyncio.Future[list[np.ndarray]], outputs: list[np.ndarray]) -> None:
    if not future.done():
        future.set_result(outputs)
