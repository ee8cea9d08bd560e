"""hotwire.kernels.tabular against NumPy reference implementations.

Tolerance: none. Every kernel does the same float32 IEEE operations as the NumPy expression it documents, so
results are compared bit for bit (``assert_array_equal``: NaN equals NaN, +0 equals -0), over shapes with N =
0 and F = 0, and float32 values including NaN, +-inf, subnormals and huge magnitudes
(overflow to inf included). References run under ``np.errstate(all="ignore")`` (overflow/invalid are expected
results, not errors).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hotwire.kernels import tabular

SETTINGS = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module", autouse=True)
def warmed() -> list[int]:
    tabular.warm()
    return [len(core.signatures) for core in tabular.CORES]


# ------------------------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------------------------


def ref_standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        result = (x - mean) / std
    return np.where(std == 0, np.where(np.isnan(x), np.float32(np.nan), np.float32(0)), result)


def ref_min_max(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, clip: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        rng = hi - lo
        result = (x - lo) / rng
    result = np.where(rng == 0, np.where(np.isnan(x), np.float32(np.nan), np.float32(0)), result)
    return np.clip(result, np.float32(0), np.float32(1)) if clip else result


def ref_one_hot(categories: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((categories.size, num_classes), np.float32)
    for i, k in enumerate(categories.tolist()):
        if 0 <= k < num_classes:
            out[i, k] = 1.0
    return out


# ------------------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------------------

any_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
edge_f32 = st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 1.0])
values = st.one_of(any_f32, edge_f32)


@st.composite
def tables(draw: st.DrawFn) -> np.ndarray:
    shape = (draw(st.integers(0, 6)), draw(st.integers(0, 5)))
    x = draw(hnp.arrays(np.float32, shape, elements=values))
    variant = draw(st.sampled_from(["c", "readonly", "fortran", "strided"]))
    if variant == "readonly":
        x.flags.writeable = False
    elif variant == "fortran":
        x = np.asfortranarray(x)
    elif variant == "strided":
        wide = np.zeros((shape[0], 2 * shape[1]), np.float32)
        wide[:, ::2] = x
        x = wide[:, ::2]
    return x


def params(n_feat: int, elements: st.SearchStrategy[float] = values) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, (n_feat,), elements=elements)


# ------------------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(x=tables(), data=st.data())
def test_standardize(x: np.ndarray, data: st.DataObject) -> None:
    mean = data.draw(params(x.shape[1]))
    std = data.draw(params(x.shape[1], st.one_of(values, st.just(0.0))))
    out = tabular.standardize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, ref_standardize(x, mean, std))


@SETTINGS
@given(x=tables(), data=st.data(), clip=st.booleans())
def test_min_max(x: np.ndarray, data: st.DataObject, clip: bool) -> None:
    lo = data.draw(params(x.shape[1]))
    hi = np.where(
        data.draw(params(x.shape[1], st.booleans())).astype(bool), lo, data.draw(params(x.shape[1]))
    )
    out = tabular.min_max(x, lo, hi, clip=clip)
    np.testing.assert_array_equal(out, ref_min_max(x, lo, hi, clip))
    if clip:
        finite = out[~np.isnan(out)]
        assert np.all((finite >= 0) & (finite <= 1))


@SETTINGS
@given(x=tables(), data=st.data())
def test_clip(x: np.ndarray, data: st.DataObject) -> None:
    bounds = st.one_of(st.floats(width=32, allow_nan=False), st.sampled_from([np.inf, -np.inf]))
    lo = data.draw(params(x.shape[1], bounds))
    hi = data.draw(params(x.shape[1], bounds))
    np.testing.assert_array_equal(tabular.clip(x, lo, hi), np.clip(x, lo, hi))
    if x.shape[1]:
        np.testing.assert_array_equal(tabular.clip(x, lo[0], hi[0]), np.clip(x, lo[0], hi[0]))


@SETTINGS
@given(x=tables(), data=st.data())
def test_fill_nan(x: np.ndarray, data: st.DataObject) -> None:
    fill = data.draw(params(x.shape[1]))
    np.testing.assert_array_equal(tabular.fill_nan(x, fill), np.where(np.isnan(x), fill, x))
    np.testing.assert_array_equal(tabular.fill_nan(x, -1.0), np.where(np.isnan(x), np.float32(-1), x))


@SETTINGS
@given(
    categories=st.one_of(
        hnp.arrays(np.int64, st.integers(0, 8), elements=st.integers(-(2**63), 2**63 - 1)),
        hnp.arrays(np.int64, st.integers(0, 8), elements=st.integers(-2, 8)),
        hnp.arrays(np.int32, st.integers(0, 8), elements=st.integers(-2, 8)),
        hnp.arrays(np.uint8, st.integers(0, 8)),
        hnp.arrays(np.uint64, st.integers(0, 8)),
    ),
    num_classes=st.integers(0, 7),
)
def test_one_hot(categories: np.ndarray, num_classes: int) -> None:
    out = tabular.one_hot(categories, num_classes)
    assert out.dtype == np.float32 and out.shape == (categories.size, num_classes)
    np.testing.assert_array_equal(out, ref_one_hot(categories, num_classes))


def test_documented_edges() -> None:
    x = np.array([[1.0, np.nan, np.inf], [3.0, 2.0, -np.inf]], np.float32)
    standardized = tabular.standardize(x, [1.0, 0.0, 0.0], [0.0, 0.0, 2.0])  # std 0 -> 0, NaN stays NaN
    np.testing.assert_array_equal(standardized, [[0, np.nan, np.inf], [0, 0, -np.inf]])
    scaled = tabular.min_max(x, [1.0, 2.0, 0.0], [3.0, 2.0, 1.0])  # zero range -> 0, NaN stays NaN
    np.testing.assert_array_equal(scaled, [[0, np.nan, np.inf], [1, 0, -np.inf]])
    np.testing.assert_array_equal(tabular.min_max(x, 0.0, 2.0, clip=True), [[0.5, np.nan, 1], [1, 1, 0]])
    one_hot = tabular.one_hot(np.array([2, -1, 3, 0]), 3)  # out of range (negative too) -> all zeros
    np.testing.assert_array_equal(one_hot, [[0, 0, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    huge = np.array([[3e38, -3e38]], np.float32)
    np.testing.assert_array_equal(tabular.standardize(huge, -3e38, 0.5), [[np.inf, 0]])


def test_out_buffer_conversion_and_errors() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = np.empty_like(x)
    assert tabular.standardize(x, 1.0, 2.0, out=out) is out
    np.testing.assert_array_equal(out, (x - 1) / 2)
    in_place = x.copy()
    tabular.fill_nan(in_place, 0.0, out=in_place)
    np.testing.assert_array_equal(in_place, x)
    # converted to f32
    np.testing.assert_array_equal(tabular.clip(x.astype(np.float64), 2, 5), np.clip(x, 2, 5))
    unaligned = np.frombuffer(b"\0" + x.tobytes(), np.float32, count=12, offset=1).reshape(3, 4)
    np.testing.assert_array_equal(tabular.clip(unaligned, 2, 5), np.clip(x, 2, 5))
    with pytest.raises(ValueError):
        tabular.standardize(x, [1.0, 2.0], 1.0)
    with pytest.raises(ValueError):
        tabular.standardize(x[0], 0.0, 1.0)
    with pytest.raises(ValueError):
        tabular.clip(x, np.nan, 1.0)
    with pytest.raises(ValueError):
        tabular.standardize(x, 0.0, 1.0, out=np.empty((3, 4), np.float64))
    with pytest.raises(TypeError):
        tabular.one_hot(np.array([0.0, 1.0]), 2)
    with pytest.raises(TypeError):
        tabular.standardize(np.array([["a"]]), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------
# threads and warm-up
# ------------------------------------------------------------------------------------------------------------


def _workload(x: np.ndarray, cats: np.ndarray) -> list[np.ndarray]:
    n_feat = x.shape[1]
    mean, std = np.linspace(-1, 1, n_feat, dtype=np.float32), np.linspace(0, 2, n_feat, dtype=np.float32)
    return [
        tabular.standardize(x, mean, std),
        tabular.min_max(x, -2.0, 3.0, clip=True),
        tabular.clip(x, mean, mean + 1),
        tabular.fill_nan(x, mean),
        tabular.one_hot(cats, 17),
    ]


def test_concurrent_calls_match_serial() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 40)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    cats = rng.integers(-2, 20, 2000)
    serial = _workload(x, cats)
    barrier = threading.Barrier(4)

    def run(_: int) -> list[list[np.ndarray]]:
        barrier.wait()
        return [_workload(x, cats) for _ in range(10)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for per_thread in results:
        for outputs in per_thread:
            for got, want in zip(outputs, serial):
                np.testing.assert_array_equal(got, want)


def test_warm_leaves_nothing_to_compile(warmed: list[int]) -> None:
    """No call in this module (the property tests above included) compiled anything after warm()."""
    tabular.warm()
    assert [len(core.signatures) for core in tabular.CORES] == warmed
    x = np.ones((5, 3), np.float32)
    readonly = x.copy()
    readonly.flags.writeable = False
    for src in (x, readonly, x.T.copy().T, x[:, ::2], x.astype(np.float64), x.astype(np.int32), x[:0]):
        tabular.standardize(src, 0.5, np.float32([1, 2, 3])[: src.shape[1]])
        tabular.min_max(src, 0.0, 1.0, clip=True)
        tabular.clip(src, -1, 1, out=np.empty(src.shape, np.float32))
        tabular.fill_nan(src, 0.0)
    for cats in (
        np.arange(3),
        np.arange(3, dtype=np.int32),
        np.arange(3, dtype=np.uint64),
        [1, 2],
        np.zeros(0, int),
    ):
        tabular.one_hot(cats, 4)
    assert [len(core.signatures) for core in tabular.CORES] == warmed
