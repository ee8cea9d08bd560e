"""The Batcher's queue semantics, driven with instances that block until the test lets them run, so each
scenario is deterministic: queue full, timeouts (REJECT and DELAY), priorities, cancellation,
preserve_ordering, concurrent instances, and shapes that never mix."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from hotwire.server.assembly import BatchAssembler
from hotwire.server.batcher import Batcher, BatchingPolicy, QueuePolicy
from hotwire.server.errors import DeadlineExceeded, ResourceExhausted


class GatedInstance:
    """Stands in for runner.Instance: records every batch it runs and blocks until `gate` is set. Like the
    real one, it runs calls on its own single-thread executor."""

    def __init__(
        self, name: str, gate: threading.Event | None = None, barrier: threading.Barrier | None = None
    ) -> None:
        self.name = name
        self.gate = gate or threading.Event()
        self.barrier = barrier
        self.batches: list[dict[str, np.ndarray]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def idle(self) -> None:
        """Wait until the executor thread has let go of its last call. A worker thread resolves a call's
        future before it drops the work item holding the call's arguments (the batch), so for a moment after a
        response the batch is still referenced from that thread; a no-op queued behind it returns only after
        that."""
        await self.call(lambda: None)

    def run_sync(self, feeds: dict[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        with self._lock:
            self.batches.append({k: v.copy() for k, v in feeds.items()})
        self.started.set()
        if self.barrier is not None:
            # raises BrokenBarrierError unless the other instance runs at the same time
            self.barrier.wait(timeout=5)
        assert self.gate.wait(timeout=10), "test never opened the gate"
        return [feeds["x"] * 2]


def make_batcher(policy: BatchingPolicy, instances: list[GatedInstance]) -> Batcher:
    assemblers = [BatchAssembler(policy.max_batch_size) for _ in instances]
    batcher = Batcher("m:1", policy, instances, ["y"], assemblers)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def submit(batcher: Batcher, value: float, rows: int = 1, width: int = 4, **kwargs: Any) -> asyncio.Future:
    x = np.full((rows, width), value, np.float32)
    return batcher.submit({"x": x}, rows, (("x", (width,)),), ("y",), **kwargs).future


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_queue_full_fails_fast_and_a_cancelled_client_frees_its_slot():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        batcher = make_batcher(
            BatchingPolicy(max_batch_size=1, queue_policies=(QueuePolicy(max_queue_size=2),)), [instance]
        )
        running = submit(batcher, 0)
        await until(instance.started.is_set)
        waiting = [submit(batcher, 1), submit(batcher, 2)]
        with pytest.raises(ResourceExhausted, match="queue full"):
            submit(batcher, 3)
        waiting[0].cancel()
        await asyncio.sleep(0)
        replacement = submit(batcher, 4)  # the cancelled request's slot is free again
        instance.gate.set()
        await asyncio.gather(running, waiting[1], replacement)
        ran = [float(b["x"][0, 0]) for b in instance.batches]
        assert ran == [0.0, 2.0, 4.0]  # the cancelled request was never computed
        await batcher.close()

    run(scenario())


@pytest.mark.parametrize("delay_on_timeout", [False, True])
def test_expired_requests_are_rejected_uncomputed_or_delayed_behind_the_others(delay_on_timeout):
    async def scenario() -> None:
        instance = GatedInstance("i0")
        policy = BatchingPolicy(
            max_batch_size=1,
            queue_policies=(
                QueuePolicy(
                    default_timeout_s=0.05, delay_on_timeout=delay_on_timeout, allow_timeout_override=True
                ),
            ),
        )
        batcher = make_batcher(policy, [instance])
        blocker = submit(batcher, 0, timeout_us=10_000_000)
        await until(instance.started.is_set)
        doomed = submit(batcher, 1)  # default timeout 50 ms: expires while the instance is busy
        patient = submit(batcher, 2, timeout_us=10_000_000)  # may not lengthen the 50 ms default...
        await asyncio.sleep(0.15)
        if delay_on_timeout:
            late = submit(batcher, 3, timeout_us=1_000)  # ...and may shorten it
            await asyncio.sleep(0.05)
            fresh = submit(batcher, 4, timeout_us=40_000)
            instance.gate.set()
            await asyncio.gather(blocker, doomed, patient, late, fresh)
            # all expired under DELAY, so they run after the request that never expired, in expiry order
            assert [float(b["x"][0, 0]) for b in instance.batches] == [0.0, 4.0, 1.0, 2.0, 3.0]
        else:
            with pytest.raises(DeadlineExceeded, match="timed out"):
                await doomed
            with pytest.raises(DeadlineExceeded):
                await patient
            instance.gate.set()
            await blocker
            assert [float(b["x"][0, 0]) for b in instance.batches] == [0.0]  # expired requests never computed
        await batcher.close()

    run(scenario())


def test_a_delayed_request_runs_after_its_own_level_but_before_lower_levels():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        policy = BatchingPolicy(
            max_batch_size=1,
            priority_levels=2,
            default_priority_level=2,
            queue_policies=(QueuePolicy(default_timeout_s=0.05, delay_on_timeout=True), QueuePolicy()),
        )
        batcher = make_batcher(policy, [instance])
        blocker = submit(batcher, 0, priority=2)
        await until(instance.started.is_set)
        expired = submit(batcher, 1, priority=1)
        await asyncio.sleep(0.1)  # its 50 ms ran out: delayed, not rejected
        lower = submit(batcher, 2, priority=2)
        instance.gate.set()
        await asyncio.gather(blocker, expired, lower)
        assert [float(b["x"][0, 0]) for b in instance.batches] == [0.0, 1.0, 2.0]  # as Triton orders them
        await batcher.close()

    run(scenario())


def test_an_expired_request_is_answered_at_once_under_preserve_ordering():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        policy = BatchingPolicy(
            max_batch_size=1, preserve_ordering=True, queue_policies=(QueuePolicy(default_timeout_s=0.05),)
        )
        batcher = make_batcher(policy, [instance])
        blocker = submit(batcher, 0)
        await until(instance.started.is_set)
        doomed = submit(batcher, 1)
        await until(doomed.done, timeout=2.0)  # not held back behind the still-running earlier request
        assert not blocker.done()
        with pytest.raises(DeadlineExceeded):
            await doomed
        after = submit(batcher, 2)
        instance.gate.set()
        await asyncio.gather(blocker, after)  # the order's later places are still released
        await batcher.close()

    run(scenario())


def test_finished_requests_are_not_held_until_their_deadline():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        instance.gate.set()
        policy = BatchingPolicy(max_batch_size=4, queue_policies=(QueuePolicy(default_timeout_s=60.0),))
        batcher = make_batcher(policy, [instance])
        inputs = [np.full((1, 4), i, np.float32) for i in range(100)]
        alive = [weakref.ref(x) for x in inputs]
        futures = [batcher.submit({"x": x}, 1, (("x", (4,)),), ("y",)).future for x in inputs]
        await asyncio.gather(*futures)
        del inputs, futures
        instance.batches.clear()
        await instance.idle()
        # the 60 s deadlines don't pin the request buffers
        assert sum(ref() is not None for ref in alive) == 0
        await batcher.close()

    run(scenario())


def test_higher_priority_requests_run_first_and_out_of_range_ones_get_the_default_level():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        policy = BatchingPolicy(
            max_batch_size=1, priority_levels=3, default_priority_level=2, queue_policies=(QueuePolicy(),) * 3
        )
        batcher = make_batcher(policy, [instance])
        blocker = submit(batcher, 0)
        await until(instance.started.is_set)
        futures = [
            submit(batcher, 3, priority=3),
            submit(batcher, 2),
            submit(batcher, 1, priority=1),
            submit(batcher, 2.5, priority=2),
            submit(batcher, 2.75, priority=9),  # 9: out of range, default
        ]
        instance.gate.set()
        await asyncio.gather(blocker, *futures)
        assert [float(b["x"][0, 0]) for b in instance.batches] == [0.0, 1.0, 2.0, 2.5, 2.75, 3.0]
        await batcher.close()

    run(scenario())


def test_queued_requests_batch_together_and_each_gets_its_own_rows():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        batcher = make_batcher(BatchingPolicy(max_batch_size=8), [instance])
        blocker = submit(batcher, 0)
        await until(instance.started.is_set)
        futures = [submit(batcher, v, rows=r) for v, r in ((1, 1), (2, 3), (3, 2), (4, 3))]
        instance.gate.set()
        results = await asyncio.gather(*futures)
        # 1+3+2 fit in 8; the last 3 would not
        assert [b["x"].shape[0] for b in instance.batches] == [1, 6, 3]
        for (value, rows), result in zip(((1, 1), (2, 3), (3, 2), (4, 3)), results):
            np.testing.assert_array_equal(result[0], np.full((rows, 4), value * 2, np.float32))
        await blocker
        await batcher.close()

    run(scenario())


def test_requests_with_different_shapes_are_never_batched_together():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        batcher = make_batcher(BatchingPolicy(max_batch_size=8), [instance])
        blocker = submit(batcher, 0)
        await until(instance.started.is_set)
        futures = [
            submit(batcher, 1, width=4),
            submit(batcher, 2, width=4),
            submit(batcher, 3, width=5),
            submit(batcher, 4, width=4),
        ]
        instance.gate.set()
        await asyncio.gather(blocker, *futures)
        shapes = [b["x"].shape for b in instance.batches]
        assert shapes == [(1, 4), (2, 4), (1, 5), (1, 4)]
        await batcher.close()

    run(scenario())


def test_instances_run_batches_concurrently():
    async def scenario() -> None:
        barrier = threading.Barrier(2)  # each run waits for the other: both must be running at the same time
        gate = threading.Event()
        gate.set()
        instances = [GatedInstance("i0", gate, barrier), GatedInstance("i1", gate, barrier)]
        batcher = make_batcher(BatchingPolicy(max_batch_size=1), instances)
        results = await asyncio.gather(submit(batcher, 1), submit(batcher, 2))
        assert sorted(float(r[0][0, 0]) for r in results) == [2.0, 4.0]
        assert all(len(i.batches) == 1 for i in instances)
        await batcher.close()

    run(scenario())


def test_preserve_ordering_releases_responses_in_arrival_order():
    async def scenario() -> None:
        first_gate, second_gate = threading.Event(), threading.Event()
        instances = [GatedInstance("i0", first_gate), GatedInstance("i1", second_gate)]
        batcher = make_batcher(BatchingPolicy(max_batch_size=1, preserve_ordering=True), instances)
        first, second = submit(batcher, 1), submit(batcher, 2)
        await until(lambda: all(i.started.is_set() for i in instances))
        second_gate.set()  # the later request finishes first...
        await asyncio.sleep(0.1)
        assert not second.done()  # ...but is held until the earlier one is answered
        first_gate.set()
        await asyncio.gather(first, second)
        await batcher.close()

    run(scenario())


def test_preserve_ordering_answers_in_the_order_batches_took_the_requests():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        policy = BatchingPolicy(
            max_batch_size=1,
            preserve_ordering=True,
            priority_levels=2,
            default_priority_level=2,
            queue_policies=(QueuePolicy(),) * 2,
        )
        batcher = make_batcher(policy, [instance])
        answered: list[float] = []
        blocker = submit(batcher, 0)
        await until(instance.started.is_set)
        low = submit(batcher, 2, priority=2)
        high = submit(batcher, 1, priority=1)  # arrives later, runs first: it must not wait for `low`
        for future, value in ((blocker, 0.0), (low, 2.0), (high, 1.0)):
            future.add_done_callback(lambda _, value=value: answered.append(value))
        instance.gate.set()
        await asyncio.gather(blocker, low, high)
        assert [float(b["x"][0, 0]) for b in instance.batches] == [0.0, 1.0, 2.0]
        assert answered == [0.0, 1.0, 2.0]
        await batcher.close()

    run(scenario())


def test_close_drains_queued_requests_before_ending():
    async def scenario() -> None:
        instance = GatedInstance("i0")
        batcher = make_batcher(BatchingPolicy(max_batch_size=1), [instance])
        futures = [submit(batcher, v) for v in (1, 2, 3)]
        await until(instance.started.is_set)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        instance.gate.set()
        await closing
        assert all(f.done() and not f.exception() for f in futures)

    run(scenario())
