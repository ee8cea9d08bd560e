"""Tabular preprocessing kernels (numba, serial, nogil): float32 [N, F] in, float32 [N, F] out.

Exact semantics (all arithmetic in float32, IEEE, no fastmath: results are bit-identical to the NumPy
expressions quoted, NaN for NaN):

* ``standardize(x, mean, std)``: ``(x - mean) / std`` per feature. Where ``std == 0`` (a constant feature) the
  output is 0.0, except that NaN inputs stay NaN. inf/huge values follow IEEE (e.g. overflow to +-inf).
* ``min_max(x, lo, hi, clip=False)``: ``(x - lo) / (hi - lo)`` per feature, i.e. [lo, hi] -> [0, 1]; a zero
  range (``hi == lo``) gives 0.0 (NaN stays NaN). With ``clip=True`` the result is clipped to [0, 1]
  (NaN stays NaN).
* ``clip(x, lo, hi)``: per-feature (or scalar) bounds, ``min(max(x, lo), hi)`` exactly like ``np.clip``
  (NaN stays NaN; if lo > hi the result is hi). Bounds may be +-inf but not NaN.
* ``fill_nan(x, fill)``: NaN -> fill[f] (per feature, or a scalar); +-inf are left alone.
* ``one_hot(categories, num_classes)``: integer [N] -> float32 [N, num_classes]; a category outside
  ``[0, num_classes)`` (negative included, no wrap-around) gives an all-zero row.

Parameters (mean, std, lo, hi, fill) are scalars or [F] arrays and are converted to float32
(pass writable float32 [F] arrays to skip the copy). Inputs of another real dtype are converted to float32
first (a copy; beyond float32's range -> +-inf); non-contiguous or unaligned inputs are copied to C order; a
float32 C-contiguous input (writable or read-only) is used as is. ``out=`` (C-contiguous float32 [N, F], may
alias x) avoids the allocation. Kernels are serial and ``nogil`` (no ``parallel=True``): safe to call from
several executor threads at once.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _standardize(x, mean, std, out):  # pragma: no cover - compiled
    n_rows, n_feat = x.shape
    for i in range(n_rows):
        for j in range(n_feat):
            v = x[i, j]
            s = std[j]
            if s == 0.0:
                out[i, j] = v if v != v else np.float32(0.0)
            else:
                out[i, j] = (v - mean[j]) / s


@njit(nogil=True, cache=True)
def _min_max(x, lo, hi, clip, out):  # pragma: no cover - compiled
    n_rows, n_feat = x.shape
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(n_rows):
        for j in range(n_feat):
            v = x[i, j]
            rng = hi[j] - lo[j]
            if rng == 0.0:
                r = v if v != v else zero
            else:
                r = (v - lo[j]) / rng
            if clip:
                if r < zero:
                    r = zero
                if r > one:
                    r = one
            out[i, j] = r


@njit(nogil=True, cache=True)
def _clip(x, lo, hi, out):  # pragma: no cover - compiled
    """Returns 1 (nothing written) when a bound is NaN, else 0."""
    n_rows, n_feat = x.shape
    for j in range(n_feat):
        if lo[j] != lo[j] or hi[j] != hi[j]:
            return 1
    for i in range(n_rows):
        for j in range(n_feat):
            v = x[i, j]
            if v < lo[j]:
                v = lo[j]
            if v > hi[j]:
                v = hi[j]
            out[i, j] = v
    return 0


@njit(nogil=True, cache=True)
def _fill_nan(x, fill, out):  # pragma: no cover - compiled
    n_rows, n_feat = x.shape
    for i in range(n_rows):
        for j in range(n_feat):
            v = x[i, j]
            out[i, j] = fill[j] if v != v else v


@njit(nogil=True, cache=True)
def _one_hot(categories, out):  # pragma: no cover - compiled
    n_rows, n_classes = out.shape
    for i in range(n_rows):
        row = out[i]
        row[:] = 0.0
        k = categories[i]
        if 0 <= k < n_classes:
            row[k] = 1.0


_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)


def _as_input(x: object, dtype: np.dtype = _F32, ndim: int = 2) -> np.ndarray:
    """Native-endian, aligned, C-contiguous array of dtype (a copy only when needed; read-only is kept).

    The kernels are compiled for writable and for read-only inputs (request tensors are read-only views).
    """
    if (
        type(x) is np.ndarray
        and x.dtype == dtype
        and x.ndim == ndim
        and x.flags.c_contiguous
        and x.flags.aligned
    ):
        return x  # the fast path: nothing to convert
    array = np.asarray(x)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D array, got shape {array.shape}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range -> +-inf, as NumPy's cast does
        return np.array(array, dtype=dtype, order="C")


def _as_param(name: str, value: object, n_feat: int) -> np.ndarray:
    """A writable, C-contiguous float32 [F] (parameters are small: copied unless already in that form)."""
    if (
        type(value) is np.ndarray
        and value.dtype == _F32
        and value.shape == (n_feat,)
        and value.flags.c_contiguous
        and value.flags.aligned
        and value.flags.writeable
    ):
        return value
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 0:
        return np.full(n_feat, array, np.float32)
    if array.shape != (n_feat,):
        raise ValueError(f"{name} must be a scalar or have shape ({n_feat},), got {array.shape}")
    return np.array(array, dtype=np.float32, order="C")


def _as_output(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if (
        type(out) is not np.ndarray
        or out.shape != shape
        or out.dtype != _F32
        or not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned)
    ):
        raise ValueError(f"out must be a writable, aligned, C-contiguous float32 array of shape {shape}")
    return out


def standardize(x: object, mean: object, std: object, out: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / std per feature; std == 0 -> 0.0 (NaN stays NaN). float32 [N, F]."""
    xs = _as_input(x)
    n_feat = xs.shape[1]
    result = _as_output(out, xs.shape)
    _standardize(xs, _as_param("mean", mean, n_feat), _as_param("std", std, n_feat), result)
    return result


def min_max(
    x: object, lo: object, hi: object, clip: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """(x - lo) / (hi - lo) per feature, [lo, hi] -> [0, 1]; zero range -> 0.0; optionally clipped to
    [0, 1]."""
    xs = _as_input(x)
    n_feat = xs.shape[1]
    result = _as_output(out, xs.shape)
    _min_max(xs, _as_param("lo", lo, n_feat), _as_param("hi", hi, n_feat), bool(clip), result)
    return result


def clip(x: object, lo: object, hi: object, out: np.ndarray | None = None) -> np.ndarray:
    """np.clip(x, lo, hi) per feature (bounds scalar or [F], not NaN; +-inf allowed)."""
    xs = _as_input(x)
    n_feat = xs.shape[1]
    result = _as_output(out, xs.shape)
    if _clip(xs, _as_param("lo", lo, n_feat), _as_param("hi", hi, n_feat), result):
        raise ValueError("clip bounds must not be NaN")
    return result


def fill_nan(x: object, fill: object, out: np.ndarray | None = None) -> np.ndarray:
    """Replace NaN by fill[f] (scalar or [F]); infinities are kept."""
    xs = _as_input(x)
    result = _as_output(out, xs.shape)
    _fill_nan(xs, _as_param("fill", fill, xs.shape[1]), result)
    return result


def one_hot(categories: object, num_classes: int, out: np.ndarray | None = None) -> np.ndarray:
    """Integer [N] -> float32 [N, num_classes]; out-of-range categories (negative too) give all-zero rows."""
    num_classes = int(num_classes)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if type(categories) is np.ndarray and categories.dtype == _I64:
        cats = _as_input(categories, _I64, 1)
    else:
        array = np.asarray(categories)
        if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
            raise TypeError(f"categories must be integers, got {array.dtype}")
        if array.dtype.kind == "u" and array.dtype.itemsize == 8:
            array = np.minimum(array, np.iinfo(np.int64).max)  # keep huge uint64 out of range, not wrapped
        cats = _as_input(array, _I64, 1)
    result = _as_output(out, (cats.shape[0], num_classes))
    _one_hot(cats, result)
    return result


CORES = (_standardize, _min_max, _clip, _fill_nan, _one_hot)


def warm() -> None:
    """Compile (or load from numba's cache) every signature the wrappers use; call at model load.

    Inputs arrive C-contiguous, writable or read-only (request tensors are read-only views); parameters and
    outputs are always writable C arrays.
    """
    writable = np.zeros((2, 3), np.float32)
    readonly = writable.copy()
    readonly.flags.writeable = False
    cats = np.zeros(2, np.int64)
    cats_readonly = cats.copy()
    cats_readonly.flags.writeable = False
    for x in (writable, readonly):
        standardize(x, 0.0, 1.0)
        min_max(x, 0.0, 1.0)
        clip(x, 0.0, 1.0)
        fill_nan(x, 0.0)
    for c in (cats, cats_readonly):
        one_hot(c, 3)
