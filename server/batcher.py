"""Dynamic batching with Triton's semantics: one bounded queue per priority level, a pure batching decision,
one dispatch loop per instance.

`plan_batch` decides from the queue's head, the policy and the clock alone how many requests to take now or
how long to wait; it is unit-tested with a fake clock. Each instance runs a dispatch loop that takes the next
batch when it is free, so a batch always goes to the next free instance, and with delay 0 an idle instance
takes a lone request at once (work-conserving).

Everything here runs on the event loop except `BatchAssembler.assemble`, which runs on an instance's thread.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hotwire.server.assembly import BatchAssembler
from hotwire.server.errors import (
    BackendError,
    DeadlineExceeded,
    RequestsFailed,
    ResourceExhausted,
    Unavailable,
)
from hotwire.server.runner import Instance
from hotwire.server.stats import ComputeTimes

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# per priority level, when the config leaves max_queue_size at 0 (unbounded in Triton)
DEFAULT_MAX_QUEUE_SIZE = 4096


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level."""

    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    default_timeout_s: float = 0.0  # 0: requests never time out in the queue
    allow_timeout_override: bool = False  # a request's `timeout` parameter may shorten the default
    delay_on_timeout: bool = False  # timeout_action DELAY: an expired request runs after its level's others


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int  # 0: no batch dimension, every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    enabled: bool = True  # dynamic_batching present in the config
    preserve_ordering: bool = False  # responses leave in the order batches took them, whatever finishes first
    priority_levels: int = 0  # 0: a single level
    default_priority_level: int = 0  # 0: the lowest priority (highest number)
    queue_policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)  # one per level, level 1 first

    @property
    def levels(self) -> int:
        return max(1, self.priority_levels)

    def level_index(self, priority: int) -> int:
        """Queue index of a request's `priority` parameter (1 = highest). As in Triton, 0 or a priority above
        priority_levels means the default level."""
        if priority <= 0 or priority > self.levels:
            return min(self.default_priority_level or self.levels, self.levels) - 1
        return priority - 1

    @property
    def window(self) -> int:
        """How many queued requests a batch can hold at most (each has at least one row)."""
        return self.max_batch_size if self.enabled and self.max_batch_size > 0 else 1


@dataclass(frozen=True)
class Pending:
    """What plan_batch sees of a queued request."""

    rows: int
    shape_key: tuple
    enqueued_at: float


def plan_batch(queue: Sequence[Pending], policy: BatchingPolicy, now: float) -> tuple[int, float]:
    """(requests to take from the head now, 0) or (0, seconds to wait before asking again).

    Triton's dynamic batcher decision. Only a run from the head with the head's shapes can batch together
    (queue order is kept). With preferred sizes, while the oldest request is within max_queue_delay the batch
    is the largest preferred size reached (or, when the next request would overshoot the largest preferred
    size, what came before it), so a backlog leaves in preferred-size batches. Otherwise the whole run goes at
    once when it can't grow (max_batch_size reached, or the next request doesn't fit or has other shapes),
    when the delay is 0, or when the oldest request has waited max_queue_delay; else the batch waits for
    company.
    """
    if not queue:
        return 0, 0.0
    if policy.window == 1:
        return 1, 0.0
    head = queue[0]
    preferred = policy.preferred_batch_sizes
    largest_preferred = max(preferred, default=0)
    rows = 0
    count = 0
    best = 0  # requests in the preferred batch found so far (0: none)
    can_grow = True
    for item in queue:
        if count:
            if preferred and not best and rows + item.rows > largest_preferred:
                best = count
            if item.shape_key != head.shape_key or rows + item.rows > policy.max_batch_size:
                can_grow = False
                break
        rows += item.rows
        count += 1
        if rows in preferred:
            best = count
    # the batch's oldest, as Triton (not the head)
    waited = now - min(item.enqueued_at for item in queue[:count])
    delay_exceeded = 0 < policy.max_queue_delay_s <= waited
    if best and not delay_exceeded:
        return best, 0.0
    if not can_grow or rows >= policy.max_batch_size or policy.max_queue_delay_s <= 0 or delay_exceeded:
        return count, 0.0
    return 0, policy.max_queue_delay_s - waited


@dataclass(eq=False)
class WorkItem:
    """One request waiting for an instance. Its future travels with it, so whichever loop runs it settles
    it."""

    feeds: dict[str, np.ndarray]  # model input name -> array shaped as the model takes it
    output_names: tuple[str, ...]
    future: asyncio.Future[list[np.ndarray]]
    pending: Pending
    level: int
    deadline: float  # monotonic; inf: none
    delay_on_timeout: bool
    seq: int
    times: ComputeTimes = ComputeTimes()
    queued: bool = True  # False once taken, expired or cancelled
    delayed: bool = False  # timed out under DELAY: runs after its level's other requests, before lower levels
    released: bool = False
    batched_at: float | None = None  # when a dispatch loop took it (queued at: pending.enqueued_at)
    order: int = -1  # preserve_ordering: its response slot, given when a batch takes it (-1: never taken)


@dataclass(frozen=True)
class BatchResult:
    """What a dispatch loop reports per executed batch (for statistics)."""

    rows: int
    requests: int
    times: ComputeTimes


class _OrderedRelease:
    """preserve_ordering: settle futures strictly in dispatch order (Triton gives a request its response slot
    when a batch takes it, so priorities and DELAY decide the order, and a rejected request holds no slot)."""

    def __init__(self) -> None:
        self._next = 0
        self._held: dict[int, Callable[[], None]] = {}

    def done(self, order: int, settle: Callable[[], None]) -> None:
        self._held[order] = settle
        while self._next in self._held:
            self._held.pop(self._next)()
            self._next += 1


class Batcher:
    """Owns one model version's queues and the dispatch loops of its instances. Lives on the event loop."""

    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        instances: list[Instance],
        output_names: Sequence[str],
        assemblers: list[BatchAssembler],
        clock: Clock = time.monotonic,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._instances = instances
        self._assemblers = assemblers
        self._all_outputs = tuple(output_names)
        self._clock = clock
        self._on_batch = on_batch
        self._queues: list[deque[WorkItem]] = [deque() for _ in range(policy.levels)]
        self._delayed: list[deque[WorkItem]] = [deque() for _ in range(policy.levels)]
        self._queued_per_level = [0] * policy.levels
        # Deadlines of queued requests (a heap; entries of requests taken since are dropped lazily, and the
        # heap is rebuilt when they dominate, so finished requests and their buffers are not held until their
        # deadline).
        self._deadlines: list[tuple[float, int, WorkItem]] = []
        self._live_deadlines = 0
        self._expiry: asyncio.TimerHandle | None = None  # one timer, armed for the earliest deadline
        self._expiry_at = math.inf
        self._release = _OrderedRelease() if policy.preserve_ordering else None
        self._seq = 0
        self._dispatched = 0  # response slots given out (preserve_ordering)
        # Inline instances run on the loop: a request that finds the queue empty (and no delay to wait out)
        # runs at once in its own handler, which is what plan_batch would decide, minus the hand-offs.
        self._inline = bool(instances) and all(getattr(i, "inline", False) for i in instances)
        self._immediate = self._inline and (policy.window == 1 or policy.max_queue_delay_s <= 0)
        self._wakeup = asyncio.Event()
        self._queued_rows = 0
        self._row_s = -1.0  # moving average of a batch's compute time per row; -1: no batch yet
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(inst, asm), name=f"{self.name}:{inst.name}")
            for inst, asm in zip(self._instances, self._assemblers)
        ]

    @property
    def queued(self) -> int:
        return sum(self._queued_per_level)

    def expected_wait_s(self) -> float:
        """About how long a request queued now waits: the rows ahead of it times the recent compute time per
        row, shared by the instances (what deadline shedding weighs against a deadline)."""
        return self._queued_rows * max(0.0, self._row_s) / max(1, len(self._instances))

    # ----- submitting ---------------------------------------------------------------------------------------

    def run_now(
        self, feeds: dict[str, np.ndarray], rows: int, output_names: tuple[str, ...]
    ) -> tuple[list[np.ndarray], ComputeTimes] | None:
        """(outputs, compute times) computed right here when an inline instance may take the request at once;
        None when it must queue. Runs on the event loop."""
        if not self._immediate or self._closed or self.queued:
            return None
        try:
            outputs, _, input_s, infer_s = _assemble_and_run(
                self._instances[0], self._assemblers[0], [feeds], output_names
            )
        except RequestsFailed as exc:  # its own preprocessing failed: its own error
            raise exc.failures[0] from None
        except Exception as exc:
            raise BackendError(f"model '{self.name}': onnxruntime failed: {exc}") from exc
        times = ComputeTimes(input_s, infer_s, 0.0)
        if self._on_batch is not None:
            self._on_batch(BatchResult(rows, 1, times))
        return outputs, times

    def submit(
        self,
        feeds: dict[str, np.ndarray],
        rows: int,
        shape_key: tuple,
        output_names: tuple[str, ...],
        priority: int = 0,
        timeout_us: int = 0,
    ) -> WorkItem:
        if self._closed:
            raise Unavailable(f"model '{self.name}' is shutting down")
        level = self.policy.level_index(priority)
        queue_policy = self.policy.queue_policies[level]
        if self._queued_per_level[level] >= queue_policy.max_queue_size:
            raise ResourceExhausted(
                f"model '{self.name}': queue full ({queue_policy.max_queue_size} requests waiting at "
                f"priority {level + 1})"
            )
        timeout_s = queue_policy.default_timeout_s
        if timeout_us > 0 and queue_policy.allow_timeout_override:
            timeout_s = min(timeout_s, timeout_us / 1e6) if timeout_s else timeout_us / 1e6
        now = self._clock()
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        item = WorkItem(
            feeds,
            output_names,
            future,
            Pending(rows, shape_key, now),
            level,
            now + timeout_s if timeout_s else math.inf,
            queue_policy.delay_on_timeout,
            self._seq,
        )
        self._seq += 1
        self._queues[level].append(item)
        self._queued_per_level[level] += 1
        self._queued_rows += rows
        if timeout_s:
            heapq.heappush(self._deadlines, (item.deadline, item.seq, item))
            self._live_deadlines += 1
            self._arm_expiry()
        future.add_done_callback(functools.partial(self._on_future_done, item))
        self._wakeup.set()
        return item

    def _on_future_done(self, item: WorkItem, _future: asyncio.Future[list[np.ndarray]]) -> None:
        if item.future.cancelled() and item.queued:
            # A cancelled client frees its queue slot at once; the item is skipped, never computed.
            self._dequeue(item)
            self._settle(item, lambda: None)

    def _dequeue(self, item: WorkItem) -> None:
        item.queued = False
        self._queued_per_level[item.level] -= 1
        self._queued_rows -= item.pending.rows
        if item.deadline < math.inf and not item.delayed:
            self._forget_deadline()

    def _forget_deadline(self) -> None:
        """A request with a deadline left the deadline heap's concern (taken, cancelled, expired or
        delayed)."""
        self._live_deadlines -= 1
        if not self._live_deadlines:
            self._deadlines.clear()
        elif len(self._deadlines) > 64 and len(self._deadlines) > 2 * self._live_deadlines:
            self._deadlines = [entry for entry in self._deadlines if entry[2].queued and not entry[2].delayed]
            heapq.heapify(self._deadlines)

    def _settle(self, item: WorkItem, settle: Callable[[], None]) -> None:
        """Settle an item's future; under preserve_ordering, a request a batch took waits for every
        earlier-taken one's, while one that never ran (expired, cancelled) is answered at once."""
        if item.released:
            return
        item.released = True
        if self._release is None or item.order < 0:
            settle()
        else:
            self._release.done(item.order, settle)

    # ----- dispatching --------------------------------------------------------------------------------------

    def _arm_expiry(self) -> None:
        """Expire on time even when every instance is busy and no dispatch loop is planning."""
        if not self._deadlines or self._deadlines[0][0] >= self._expiry_at:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = self._deadlines[0][0]
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, self._expiry_at - self._clock()), self._expire_due
        )

    def _expire_due(self) -> None:
        self._expiry, self._expiry_at = None, math.inf
        self._expire(self._clock())
        self._arm_expiry()

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, item = heapq.heappop(self._deadlines)
            if not item.queued or item.delayed:
                continue
            if item.delay_on_timeout:
                item.delayed = True
                self._delayed[item.level].append(item)
                self._forget_deadline()
                continue
            self._dequeue(item)
            error = DeadlineExceeded(
                f"model '{self.name}': request timed out after waiting "
                f"{(now - item.pending.enqueued_at) * 1e3:.1f} ms in the queue"
            )
            self._settle(item, functools.partial(_fail, item.future, error))

    def _window(self) -> list[WorkItem]:
        """The queued requests a batch may be formed from: level by level, each level's requests in arrival
        order and then its delayed (timed-out under DELAY) ones, as Triton orders them. Prunes settled
        heads."""
        limit = self.policy.window
        window: list[WorkItem] = []
        for queue, delayed_queue in [
            (q, delayed)
            for level in zip(self._queues, self._delayed)
            for q, delayed in zip(level, (False, True))
        ]:
            while queue and (not queue[0].queued or queue[0].delayed != delayed_queue):
                queue.popleft()
            for item in queue:
                if item.queued and item.delayed == delayed_queue:
                    window.append(item)
                    if len(window) == limit:
                        return window
        return window

    def _take(self) -> tuple[list[WorkItem], float]:
        now = self._clock()
        self._expire(now)
        window = self._window()
        count, wait = plan_batch([item.pending for item in window], self.policy, now)
        batch = window[:count]
        for item in batch:
            self._dequeue(item)
            item.batched_at = now
            item.order = self._dispatched
            self._dispatched += 1
        if not batch and self._deadlines:
            wait = min(wait or math.inf, self._deadlines[0][0] - now)
        return batch, wait

    async def _dispatch_loop(self, instance: Instance, assembler: BatchAssembler) -> None:
        while True:
            batch, wait = self._take()
            if batch:
                await self._run(instance, assembler, batch)
                continue
            if self._closed and not self.queued:
                return
            self._wakeup.clear()
            if 0 < wait < math.inf:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._wakeup.wait()

    async def _run(self, instance: Instance, assembler: BatchAssembler, batch: list[WorkItem]) -> None:
        if self.queued:
            self._wakeup.set()  # another idle instance may take the next batch meanwhile
        parts = [item.feeds for item in batch]
        names = batch[0].output_names if len(batch) == 1 else self._all_outputs
        try:
            outputs, padded, input_s, infer_s = await instance.call(
                _assemble_and_run, instance, assembler, parts, names
            )
            self._deliver(batch, assembler, names, outputs, padded, input_s, infer_s)
        except RequestsFailed as exc:
            # per-request preprocessing failed for some: they fail alone, the others run
            for index, error in exc.failures.items():
                self._settle(batch[index], functools.partial(_fail, batch[index].future, error))
            rest = [item for index, item in enumerate(batch) if index not in exc.failures]
            if rest:
                await self._run(instance, assembler, rest)
        except Exception as exc:  # a failure fails this batch only, never the dispatch loop
            log.warning("model %s: batch of %d failed on %s: %s", self.name, len(batch), instance.name, exc)
            error = BackendError(f"model '{self.name}': onnxruntime failed: {exc}")
            for item in batch:
                self._settle(item, functools.partial(_fail, item.future, error))

    def _deliver(
        self,
        batch: list[WorkItem],
        assembler: BatchAssembler,
        names: Sequence[str],
        outputs: list[np.ndarray],
        padded: tuple[int, ...],
        input_s: float,
        infer_s: float,
    ) -> None:
        started = time.perf_counter()
        if len(batch) == 1:
            results = [outputs]
        else:
            by_name = dict(zip(names, outputs))
            results = []
            start = 0
            for item in batch:
                stop = start + item.pending.rows
                results.append(
                    [
                        assembler.slice_output(name, by_name[name], start, stop, item.feeds, padded)
                        for name in item.output_names
                    ]
                )
                start = stop
        times = ComputeTimes(input_s, infer_s, time.perf_counter() - started)
        rows = sum(item.pending.rows for item in batch)
        per_row = (input_s + infer_s) / max(1, rows)
        self._row_s = per_row if self._row_s < 0 else self._row_s + 0.2 * (per_row - self._row_s)
        if self._on_batch is not None:
            self._on_batch(BatchResult(rows, len(batch), times))
        for item, result in zip(batch, results):
            item.times = times
            self._settle(item, functools.partial(_resolve, item.future, result))

    async def close(self) -> None:
        """Stop taking work; queued requests still run to completion (drain), then the loops end."""
        self._closed = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # drained: nothing left to expire, and the timer would keep this batcher alive
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry, self._expiry_at = None, math.inf


def _assemble_and_run(
    instance: Instance,
    assembler: BatchAssembler,
    parts: list[dict[str, np.ndarray]],
    output_names: Sequence[str],
) -> tuple[list[np.ndarray], tuple[int, ...], float, float]:
    """Runs on the instance's thread: gather and preprocess the batch (numba, nogil), run ORT
    (releases the GIL). Returns (outputs, padded item shape, input seconds, inference seconds)."""
    started = time.perf_counter()
    feeds, padded = assembler.assemble(parts)
    assembled = time.perf_counter()
    outputs = instance.run_sync(feeds, output_names)
    return outputs, padded, assembled - started, time.perf_counter() - assembled


def _resolve(future: asyncio.Future[Any], outputs: list[np.ndarray]) -> None:
    if not future.done():
        future.set_result(outputs)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
