"""Batch assembly: copy request tensors into one preallocated contiguous batch buffer (numba, nogil).

Every tensor is handled as bytes: a request tensor of shape [rows, d1..dk] and itemsize s is viewed as uint8
[rows, d1..dk-1, dk*s], so one compiled kernel per rank serves every numeric datatype and none is compiled on
the request path. `gather_rows` is the fixed-shape case (rows of equal size); `gather_padded` places a smaller
tensor in the corner of a larger per-row block and zero-fills the rest (ragged batching).

Scatter needs no kernel: each request's outputs are row slices (views) of the batch outputs.
Kernels are serial and nogil: executor threads of several instances call them at once
(ARCHITECTURE.md §Threads and processes).
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_PADDED_RANK = 4  # batch axis + up to 3 item axes (the last in bytes)


@njit(nogil=True, cache=True)
def _copy_rows(dst: np.ndarray, start: int, src: np.ndarray) -> None:
    for r in range(src.shape[0]):
        dst[start + r, :] = src[r, :]


@njit(nogil=True, cache=True)
def _copy_padded_2(dst: np.ndarray, start: int, src: np.ndarray) -> None:
    rows, a = src.shape
    for r in range(rows):
        out = dst[start + r]
        out[:a] = src[r]
        out[a:] = 0


@njit(nogil=True, cache=True)
def _copy_padded_3(dst: np.ndarray, start: int, src: np.ndarray) -> None:
    rows, a, b = src.shape
    for r in range(rows):
        out = dst[start + r]
        for i in range(a):
            out[i, :b] = src[r, i]
            out[i, b:] = 0
        out[a:] = 0


@njit(nogil=True, cache=True)
def _copy_padded_4(dst: np.ndarray, start: int, src: np.ndarray) -> None:
    rows, a, b, c = src.shape
    for r in range(rows):
        out = dst[start + r]
        for i in range(a):
            for j in range(b):
                out[i, j, :c] = src[r, i, j]
                out[i, j, c:] = 0
            out[i, b:] = 0
        out[a:] = 0


_PADDED = {2: _copy_padded_2, 3: _copy_padded_3, 4: _copy_padded_4}


def _bytes_view(array: np.ndarray) -> np.ndarray:
    """[rows, d1..dk] of itemsize s -> uint8 [rows, d1..dk-1, dk*s] (a view when the array is
    C-contiguous)."""
    array = np.ascontiguousarray(array)
    if array.ndim == 1:
        array = array.reshape(array.shape[0], 1)
    return array.view(np.uint8)


def gather_rows(dst: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Copy same-shaped parts ([rows_i, ...]) one after another into C-contiguous dst; returns
    dst[:sum(rows_i)].

    One kernel call per part (~1 µs of dispatch each); never a Python loop over elements.
    """
    flat = dst.reshape(dst.shape[0], -1).view(np.uint8)
    start = 0
    for part in parts:
        rows = part.shape[0]
        _copy_rows(flat, start, np.ascontiguousarray(part).reshape(rows, -1).view(np.uint8))
        start += rows
    return dst[:start]


def gather_padded(dst: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Copy parts whose item shapes may be smaller than dst's into dst, zero padding the rest of each row."""
    if dst.ndim > MAX_PADDED_RANK:
        raise ValueError(
            f"padded batching supports up to {MAX_PADDED_RANK - 1} item dimensions, got {dst.ndim - 1}"
        )
    kernel = _PADDED[max(dst.ndim, 2)]
    view = _bytes_view(dst)
    start = 0
    for part in parts:
        kernel(view, start, _bytes_view(part))
        start += part.shape[0]
    return dst[:start]


def warm() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the signatures the batcher uses.

    Called at model load so no request ever waits for a compile. Request tensors are read-only views, ORT
    outputs are writable: both layouts are warmed.
    """
    for rank in (2, 3, 4):
        shape = (2,) + (2,) * (rank - 1)
        dst = np.zeros(shape, np.uint8)
        src = np.ones((1,) + (1,) * (rank - 1), np.uint8)
        readonly = src.copy()
        readonly.flags.writeable = False
        _PADDED[rank](dst, 0, src)
        _PADDED[rank](dst, 1, readonly)
    dst2 = np.zeros((2, 4), np.uint8)
    src2 = np.ones((1, 4), np.uint8)
    readonly2 = src2.copy()
    readonly2.flags.writeable = False
    _copy_rows(dst2, 0, src2)
    _copy_rows(dst2, 1, readonly2)
