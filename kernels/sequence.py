"""Token sequence kernels (numba, serial, nogil): pad / truncate ragged int64 token ids to a fixed length.

`pad_truncate(tokens, length, pad_id)` -> ``(ids int64 [N, length], attention_mask int64 [N, length])``.

* ``tokens`` is either a sequence of 1-D integer arrays (or lists), or the ragged form
  ``pad_truncate(flat, ..., offsets=offsets)``: flat int64 [total] and offsets int64 [N + 1] with offsets[0]
  == 0, non-decreasing, offsets[-1] == total (Arrow-style); row i is ``flat[offsets[i]:offsets[i+1]]``. Other
  integer dtypes are converted.
* A row longer than ``length`` keeps its first ``length`` tokens (``truncation_side="right"``, the default) or
  its last ``length`` tokens (``"left"``). A shorter row is padded with ``pad_id`` on the right
  (``padding_side="right"``, default) or on the left. ``attention_mask`` is 1 on real tokens, 0 on padding.
* ``length`` may be 0 (empty rows); N may be 0.

The kernel is serial and ``nogil`` (no ``parallel=True``): safe to call from several executor threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

SIDES = ("right", "left")


@njit(nogil=True, cache=True)
def _pad_truncate(flat, offsets, pad_id, truncate_left, pad_left, ids, mask):  # pragma: no cover - compiled
    """Returns 1 (nothing written) when offsets are not 0 = o[0] <= o[1] <= ... <= o[N] = len(flat), else
    0."""
    n_rows, length = ids.shape
    if offsets[0] != 0 or offsets[n_rows] != flat.shape[0]:
        return 1
    for i in range(n_rows):
        if offsets[i + 1] < offsets[i]:
            return 1
    for i in range(n_rows):
        start = offsets[i]
        stop = offsets[i + 1]
        count = stop - start
        if count > length:
            count = length
        src = stop - count if truncate_left else start
        dst = length - count if pad_left else 0
        row_ids = ids[i]
        row_mask = mask[i]
        for k in range(dst):
            row_ids[k] = pad_id
            row_mask[k] = 0
        for k in range(count):
            row_ids[dst + k] = flat[src + k]
            row_mask[dst + k] = 1
        for k in range(dst + count, length):
            row_ids[k] = pad_id
            row_mask[k] = 0
    return 0


_I64 = np.dtype(np.int64)


def _as_int64(array: object) -> np.ndarray:
    """Native, aligned, C-contiguous int64 (writable or read-only: both are compiled); a copy only when
    needed."""
    if type(array) is np.ndarray and array.dtype == _I64 and array.flags.c_contiguous and array.flags.aligned:
        return array
    array = np.asarray(array)
    if array.dtype.kind not in "iu":
        raise TypeError(f"token ids and offsets must be integers, got {array.dtype}")
    return np.array(array, dtype=np.int64, order="C")


def to_ragged(rows: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sequence of 1-D integer rows (or a 2-D array, row by row) -> (flat int64, offsets int64 [N + 1])."""
    arrays = [row if type(row) is np.ndarray else np.asarray(row) for row in rows]
    ends = [0]
    total = 0
    for index, row in enumerate(arrays):
        if row.ndim != 1:
            raise ValueError(f"row {index} must be 1-D, got shape {row.shape}")
        if row.dtype.kind not in "iu" and row.shape[0]:
            raise TypeError(f"row {index} must hold integers, got {row.dtype}")
        total += row.shape[0]
        ends.append(total)
    offsets = np.array(ends, np.int64)
    if not arrays:
        return np.zeros(0, np.int64), offsets
    return np.concatenate(arrays, dtype=np.int64, casting="unsafe"), offsets


def pad_truncate(
    tokens: Sequence[object] | np.ndarray,
    length: int,
    pad_id: int = 0,
    truncation_side: str = "right",
    padding_side: str = "right",
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids -> (ids int64 [N, length], attention_mask int64 [N, length]); see the module
    docstring.

    tokens: a sequence of 1-D integer rows, or (with ``offsets=`` int [N + 1]) the flat int array of all rows.
    """
    if truncation_side not in SIDES or padding_side not in SIDES:
        raise ValueError(f"truncation_side and padding_side must be one of {SIDES}")
    length = int(length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    pad_id = int(pad_id)
    if not -(2**63) <= pad_id < 2**63:
        raise ValueError("pad_id must fit in int64")
    if offsets is not None:
        flat, offsets = _as_int64(tokens), _as_int64(offsets)
        if flat.ndim != 1 or offsets.ndim != 1 or offsets.shape[0] < 1:
            raise ValueError("ragged tokens must be flat [total] with offsets [N + 1], both 1-D")
    else:
        flat, offsets = to_ragged(tokens)
    n_rows = offsets.shape[0] - 1
    ids = np.empty((n_rows, length), np.int64)
    mask = np.empty((n_rows, length), np.int64)
    if _pad_truncate(flat, offsets, pad_id, truncation_side == "left", padding_side == "left", ids, mask):
        raise ValueError("offsets must start at 0, be non-decreasing and end at len(flat)")
    return ids, mask


CORES = (_pad_truncate,)


def warm() -> None:
    """Compile (or load from numba's cache) the kernel's signatures; call at model load.

    flat and offsets arrive C-contiguous int64, each writable or read-only (request tensors are read-only).
    """
    flat, offsets = np.arange(3, dtype=np.int64), np.array([0, 1, 3], np.int64)
    flat_ro, offsets_ro = flat.copy(), offsets.copy()
    flat_ro.flags.writeable = False
    offsets_ro.flags.writeable = False
    for f in (flat, flat_ro):
        for o in (offsets, offsets_ro):
            pad_truncate(f, 2, offsets=o)
