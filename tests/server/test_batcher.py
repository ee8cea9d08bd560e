"""plan_batch is a pure function of the queue, the policy and the clock: tested here with explicit times."""

from __future__ import annotations

from hotwire.server.batcher import BatchingPolicy, Pending, plan_batch

SHAPE_A = (("x", (16,)),)
SHAPE_B = (("x", (8,)),)


def queue(*items: tuple[int, float], shape: tuple = SHAPE_A) -> list[Pending]:
    return [Pending(rows, shape, at) for rows, at in items]


def test_lone_request_is_not_delayed_when_delay_is_zero():
    assert plan_batch(queue((1, 0.0)), BatchingPolicy(max_batch_size=8), now=0.0) == (1, 0.0)


def test_everything_queued_goes_in_one_batch_up_to_max_batch_size():
    policy = BatchingPolicy(max_batch_size=8)
    assert plan_batch(queue(*[(1, 0.0)] * 5), policy, now=0.0) == (5, 0.0)
    assert plan_batch(queue((3, 0.0), (4, 0.0), (2, 0.0)), policy, now=0.0) == (2, 0.0)


def test_requests_with_other_shapes_are_never_batched_together():
    pending = queue((1, 0.0), (1, 0.0)) + queue((1, 0.0), shape=SHAPE_B) + queue((1, 0.0))
    assert plan_batch(pending, BatchingPolicy(max_batch_size=8), now=0.0) == (2, 0.0)


def test_with_a_delay_a_lone_request_waits_for_company_at_most_the_delay():
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.002)
    take, wait = plan_batch(queue((1, 10.0)), policy, now=10.0005)
    assert take == 0 and abs(wait - 0.0015) < 1e-9
    assert plan_batch(queue((1, 10.0)), policy, now=10.002) == (1, 0.0)


def test_a_full_batch_goes_at_once_even_with_a_delay():
    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=1.0)
    assert plan_batch(queue(*[(1, 0.0)] * 4), policy, now=0.0) == (4, 0.0)


def test_the_largest_reachable_preferred_size_goes_at_once():
    policy = BatchingPolicy(max_batch_size=16, preferred_batch_sizes=(2, 4), max_queue_delay_s=1.0)
    assert plan_batch(queue(*[(1, 0.0)] * 5), policy, now=0.0) == (4, 0.0)
    assert plan_batch(queue((1, 0.0)), policy, now=0.0)[0] == 0


def test_a_backlog_leaves_in_preferred_sizes_while_within_the_delay():
    # Triton's rule: the batch never grows past the largest preferred size while the delay hasn't run out.
    policy = BatchingPolicy(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_s=1.0)
    assert plan_batch(queue(*[(1, 0.0)] * 16), policy, now=0.0) == (8, 0.0)
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=1.0)
    assert plan_batch(queue(*[(1, 0.0)] * 8), policy, now=0.0) == (4, 0.0)
    assert plan_batch(queue(*[(1, 0.0)] * 5) + queue((1, 0.0), shape=SHAPE_B), policy, now=0.0) == (4, 0.0)


def test_requests_that_would_overshoot_the_largest_preferred_size_stay_queued():
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=1.0)
    assert plan_batch(queue((3, 0.0), (3, 0.0)), policy, now=0.0) == (1, 0.0)


def test_once_the_delay_has_run_out_everything_that_fits_goes():
    policy = BatchingPolicy(max_batch_size=16, preferred_batch_sizes=(4,), max_queue_delay_s=0.01)
    assert plan_batch(queue(*[(1, 0.0)] * 6), policy, now=0.0) == (4, 0.0)
    assert plan_batch(queue(*[(1, 0.0)] * 6), policy, now=0.01) == (6, 0.0)


def test_with_delay_zero_a_preferred_size_still_caps_the_batch():
    policy = BatchingPolicy(max_batch_size=16, preferred_batch_sizes=(4,))
    assert plan_batch(queue(*[(1, 0.0)] * 6), policy, now=0.0) == (4, 0.0)
    assert plan_batch(queue(*[(1, 0.0)] * 3), policy, now=0.0) == (3, 0.0)  # work-conserving below it


def test_the_delay_counts_from_the_oldest_request_of_the_batch_not_the_head():
    # a high-priority request (at the head) arrived after a low-priority one that has already waited past the
    # delay
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.1)
    assert plan_batch(queue((1, 0.14), (1, 0.0)), policy, now=0.15) == (2, 0.0)
    take, wait = plan_batch(queue((1, 0.14), (1, 0.1)), policy, now=0.15)
    assert take == 0 and abs(wait - 0.05) < 1e-9


def test_without_dynamic_batching_requests_run_one_at_a_time():
    assert plan_batch(
        queue((2, 0.0), (2, 0.0)), BatchingPolicy(max_batch_size=8, enabled=False), now=0.0
    ) == (1, 0.0)
    assert plan_batch(queue((1, 0.0), (1, 0.0)), BatchingPolicy(max_batch_size=0), now=0.0) == (1, 0.0)


def test_empty_queue_takes_nothing():
    assert plan_batch([], BatchingPolicy(max_batch_size=8), now=0.0) == (0, 0.0)
