"""Batch assembly (hotwire.server.assembly): gathers equal a row-by-row reference for every rank."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hotwire.server.assembly import BatchAssembler, gather_padded, gather_rows


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # request tensors are read-only views of the received bytes
    return array


def _padded_reference(parts: list[np.ndarray], item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    rows = [row for part in parts for row in part]
    out = np.zeros((len(rows), *item_shape), dtype)
    for r, row in enumerate(rows):
        for index in itertools.product(*(range(extent) for extent in row.shape)):
            out[(r, *index)] = row[index]
    return out


@pytest.mark.parametrize("item_shape", [(), (5,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, np.float16, np.bool_])
def test_gather_rows_is_the_parts_one_after_another_in_the_buffer(item_shape, dtype):
    rng = np.random.default_rng(7)
    parts = [_read_only((rng.random((rows, *item_shape)) * 100).astype(dtype)) for rows in (1, 3, 2)]
    stale = np.array(99).astype(dtype)  # what an earlier batch left in the buffer
    buffer = np.full((8, *item_shape), stale, dtype)
    batch = gather_rows(buffer, parts)
    assert batch.shape == (6, *item_shape) and np.shares_memory(batch, buffer)
    np.testing.assert_array_equal(batch, np.concatenate(parts))
    np.testing.assert_array_equal(buffer[6:], stale)  # rows past the batch untouched


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gather_padded_puts_each_part_in_its_corner_and_zeroes_the_rest(rank):
    rng = np.random.default_rng(rank)
    parts = [
        _read_only(rng.integers(1, 9, (rows, *rng.integers(1, 5, rank))).astype(np.float32))
        for rows in (2, 1, 3)
    ]
    item_shape = tuple(int(d) for d in np.max([p.shape[1:] for p in parts], axis=0))
    buffer = np.full((8, *item_shape), -1, np.float32)  # stale values from an earlier batch
    batch = gather_padded(buffer, parts)
    np.testing.assert_array_equal(batch, _padded_reference(parts, item_shape, np.dtype(np.float32)))


def test_an_assembler_feeds_a_single_request_as_is_and_reuses_its_buffers():
    assembler = BatchAssembler(max_batch_size=8, ragged_inputs=["ragged"])
    one = {"x": _read_only(np.ones((2, 3), np.float32)), "ragged": _read_only(np.ones((2, 4), np.int64))}
    feeds, padded = assembler.assemble([one])
    assert feeds["x"] is one["x"] and padded == ()

    other = {
        "x": _read_only(np.zeros((1, 3), np.float32)),
        "ragged": _read_only(np.full((1, 6), 5, np.int64)),
    }
    first, padded = assembler.assemble([one, other])
    assert padded == (6,)
    np.testing.assert_array_equal(first["x"], np.concatenate([one["x"], other["x"]]))
    np.testing.assert_array_equal(
        first["ragged"], _padded_reference([one["ragged"], other["ragged"]], (6,), np.dtype(np.int64))
    )
    second, _ = assembler.assemble([other, one])
    assert np.shares_memory(first["x"], second["x"])  # the same preallocated buffer, batch after batch
    np.testing.assert_array_equal(second["x"], np.concatenate([other["x"], one["x"]]))


def test_bytes_inputs_are_concatenated_as_objects():
    assembler = BatchAssembler(max_batch_size=4)
    parts = [{"s": np.array([b"a", b"bc"], dtype=object)}, {"s": np.array(["d"], dtype=object)}]
    feeds, _ = assembler.assemble(parts)
    assert feeds["s"].dtype == object and feeds["s"].tolist() == [b"a", b"bc", "d"]
