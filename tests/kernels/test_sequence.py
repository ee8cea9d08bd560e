"""hotwire.kernels.sequence.pad_truncate against a pure-Python reference.

Tolerance: none (integer copies: ids and masks must be equal). Covered: N = 0, empty rows, length 0, rows
shorter, equal and longer than length, int64 extremes as ids and pad_id, both truncation and padding sides,
both input forms (list of rows and flat + offsets), rows of other integer dtypes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotwire.kernels import sequence

SETTINGS = settings(max_examples=80, deadline=None)
INT64 = st.integers(-(2**63), 2**63 - 1)


@pytest.fixture(scope="module", autouse=True)
def warmed() -> list[int]:
    sequence.warm()
    return [len(core.signatures) for core in sequence.CORES]


def ref_pad_truncate(rows: list[list[int]], length: int, pad_id: int, trunc: str, pad: str):
    ids, mask = [], []
    for row in rows:
        kept = row[:length] if trunc == "right" else row[max(0, len(row) - length) :]
        padding = length - len(kept)
        if pad == "right":
            ids.append(kept + [pad_id] * padding)
            mask.append([1] * len(kept) + [0] * padding)
        else:
            ids.append([pad_id] * padding + kept)
            mask.append([0] * padding + [1] * len(kept))
    return np.array(ids, np.int64).reshape(len(rows), length), np.array(mask, np.int64).reshape(
        len(rows), length
    )


@SETTINGS
@given(
    rows=st.lists(st.lists(st.one_of(INT64, st.integers(0, 50)), max_size=12), max_size=6),
    length=st.integers(0, 10),
    pad_id=st.one_of(st.integers(-1, 3), INT64),
    trunc=st.sampled_from(sequence.SIDES),
    pad=st.sampled_from(sequence.SIDES),
    ragged=st.booleans(),
)
def test_pad_truncate_matches_reference(
    rows: list[list[int]], length: int, pad_id: int, trunc: str, pad: str, ragged: bool
) -> None:
    if ragged:
        flat = np.array([t for row in rows for t in row], np.int64)
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
        ids, mask = sequence.pad_truncate(flat, length, pad_id, trunc, pad, offsets=offsets)
    else:
        tokens = [np.array(row, np.int64) for row in rows]
        ids, mask = sequence.pad_truncate(tokens, length, pad_id, truncation_side=trunc, padding_side=pad)
    want_ids, want_mask = ref_pad_truncate(rows, length, pad_id, trunc, pad)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (len(rows), length)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)


def test_examples_and_input_forms() -> None:
    rows = [np.array([1, 2, 3, 4, 5], np.int32), np.array([7], np.uint16), np.array([], np.int64)]
    ids, mask = sequence.pad_truncate(rows, 3, pad_id=-1)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [7, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    ids, mask = sequence.pad_truncate([[1, 2, 3, 4, 5], [7]], 3, truncation_side="left", padding_side="left")
    np.testing.assert_array_equal(ids, [[3, 4, 5], [0, 0, 7]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    flat = np.array([1, 2, 3, 4, 5, 7], np.int64)
    flat.flags.writeable = False
    ids, _ = sequence.pad_truncate(flat, 3, pad_id=-1, offsets=np.array([0, 5, 6, 6]))
    np.testing.assert_array_equal(ids, [[1, 2, 3], [7, -1, -1], [-1, -1, -1]])
    ids, mask = sequence.pad_truncate([], 4)
    assert ids.shape == mask.shape == (0, 4)
    ids, mask = sequence.pad_truncate(np.zeros(0, np.int64), 2, offsets=np.zeros(1, np.int64))
    assert ids.shape == (0, 2)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        sequence.pad_truncate([[1]], -1)
    with pytest.raises(ValueError):
        sequence.pad_truncate([[1]], 2, truncation_side="middle")
    with pytest.raises(ValueError):
        sequence.pad_truncate([np.zeros((2, 2), np.int64)], 2)
    with pytest.raises(TypeError):
        sequence.pad_truncate([np.array([1.5])], 2)
    with pytest.raises(ValueError):
        sequence.pad_truncate(np.arange(3), 2, offsets=np.array([0, 2]))  # offsets must end at len(flat)
    with pytest.raises(ValueError):
        sequence.pad_truncate(np.arange(3), 2, offsets=np.array([0, 2, 1, 3]))  # decreasing
    with pytest.raises(ValueError):
        sequence.pad_truncate(np.arange(3), 2, offsets=np.array([1, 3]))  # must start at 0
    with pytest.raises(TypeError):
        sequence.pad_truncate(np.arange(3.0), 2, offsets=np.array([0, 3]))
    with pytest.raises(ValueError):
        sequence.pad_truncate([[1]], 2, pad_id=2**63)


def test_concurrent_calls_match_serial() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 30000, rng.integers(0, 300)) for _ in range(256)]
    flat, offsets = sequence.to_ragged(rows)
    serial = [sequence.pad_truncate(flat, 128, 0, side, side, offsets) for side in sequence.SIDES]
    barrier = threading.Barrier(4)

    def run(_: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        barrier.wait()
        return [
            [sequence.pad_truncate(flat, 128, 0, s, s, offsets) for s in sequence.SIDES] for _ in range(50)
        ]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for per_thread in results:
        for outputs in per_thread:
            for (ids, mask), (want_ids, want_mask) in zip(outputs, serial):
                np.testing.assert_array_equal(ids, want_ids)
                np.testing.assert_array_equal(mask, want_mask)


def test_warm_leaves_nothing_to_compile(warmed: list[int]) -> None:
    """No call in this module (the property tests above included) compiled anything after warm()."""
    sequence.warm()
    assert [len(core.signatures) for core in sequence.CORES] == warmed
    sequence.pad_truncate([np.arange(5, dtype=np.int32), [1, 2]], 3, truncation_side="left")
    sequence.pad_truncate(np.arange(10)[::2], 4, padding_side="left", offsets=np.array([0, 2, 5], np.int32))
    sequence.pad_truncate(np.arange(4, dtype=np.uint32), 0, offsets=np.array([0, 4]))
    readonly = np.arange(4)
    readonly.flags.writeable = False
    sequence.pad_truncate(readonly, 3, offsets=readonly[:2] * 0 + np.array([0, 4]))
    sequence.pad_truncate(
        np.arange(4), 3, offsets=np.frombuffer(np.array([0, 4], np.int64).tobytes(), np.int64)
    )
    assert [len(core.signatures) for core in sequence.CORES] == warmed
