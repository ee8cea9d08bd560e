"""Input drift and prediction monitoring for one model version, computed off the request path.

Two halves with very different costs:

* `DriftMonitor.observe(inputs, outputs)` runs on the event loop after each response. It turns every monitored
  tensor into a few numbers per row (`FeatureExtractor`), and copies those rows into preallocated, bounded
  buffers: first the *reference capture* (the first `reference_rows` rows the version sees), then a rolling
  *current window* of the latest `window_rows` rows. Cost: O(rows x features) numpy
  (plus a pass over at most 4096 elements per row for summary features); no sorting, no Python loop over rows
  (BYTES tensors aside: string lengths are read one element at a time), and no reference to a request tensor
  survives the call.
* `DriftMonitor.compute()` runs on a worker thread every so often. It copies the buffers under a lock held
  only for the copy, then compares every feature's reference and current samples: two-sample
  Kolmogorov-Smirnov statistic and p-value, and the population stability index (PSI). A feature is reported
  once both sides hold at least `min_rows` (default 50) finite values.

Features (`FeatureExtractor`, names are short because they become the `feature` label of `hotwire_drift_*`):

* numeric item with at most 64 elements: each element is a feature, `NAME[i]` (i indexes the flattened item);
* numeric item with more elements: `NAME.mean` and `NAME.std` over the item, plus `NAME.ch0`... per-channel
  means when the item has >= 2 axes and a channel axis of 2-4 entries: the item's last axis
  (channels-last, HWC) is tried first, then its first axis (the batch tensor's second axis, channels-first
  NCHW). One channel adds nothing: its mean is `NAME.mean`. Items of more than 4096 elements
  (`SUMMARY_SAMPLE_ELEMENTS`) are summarised from an evenly strided sample of about that many elements
  (every k-th position, all its channels), the same positions for reference and live rows, so `observe` costs
  O(rows x 4096) whatever the image size (a 224x224x3 image: every 37th pixel);
* BYTES (object, `S`, `U`) items: string length, `NAME[i].len` per element for items of at most 64 elements,
  else the mean length over the item, `NAME.len`;
* outputs: a 2-D float output [rows, classes] with classes >= 2 is taken as class scores: `NAME.class`
  (the argmax, compared as a categorical distribution with `psi_categorical`; no KS) and `NAME.max`
  (the top score). Any other output gets the input features.

Reference profile file (`ReferenceProfile`): `<model dir>/drift_reference.npz`, next to `config.pbtxt`,
written by `numpy.savez` and read with `allow_pickle=False`. Each array is named after an input tensor
(or, optionally, an output tensor) and holds raw samples shaped [N, ...item] exactly as they would arrive in a
request (row axis first; for a model without batching, add a leading axis). The monitor extracts the same
features from them as from live traffic (all N rows, whatever `reference_rows` says), so a profile replaces
the capture phase: drift is reported as soon as the current window holds `min_rows` rows. BYTES tensors are
stored as fixed-width `S` arrays (numpy strips trailing NUL bytes from those). Arrays named after no monitored
tensor are ignored; a monitored tensor without an array captures its reference from traffic as usual.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hotwire.server.datatypes import element_count

__all__ = [
    "DEFAULT_MIN_ROWS",
    "MAX_ELEMENT_FEATURES",
    "REFERENCE_FILENAME",
    "SUMMARY_SAMPLE_ELEMENTS",
    "DriftMonitor",
    "DriftReport",
    "FeatureDrift",
    "FeatureExtractor",
    "ReferenceProfile",
    "ks_pvalue",
    "ks_statistic",
    "psi",
    "psi_categorical",
]

REFERENCE_FILENAME = "drift_reference.npz"
MAX_ELEMENT_FEATURES = 64  # items up to this many elements: one feature per element
MAX_CHANNELS = 4  # a channel axis has 1..4 entries
DEFAULT_MIN_ROWS = 50
PSI_EPSILON = 1e-4  # empty-bin smoothing: proportions below this count as this
SUMMARY_SAMPLE_ELEMENTS = 4096  # summary features of a larger item use an evenly strided sample of this size
_SCRATCH_ELEMENTS = 1 << 16  # float64 scratch for the std pass: 512 KiB


# ------------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------------


def _sample(values: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{what} sample is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} sample contains NaN or infinity")
    return x


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic D = max_x |F_ref(x) - F_cur(x)|, exact (ties included).

    Both empirical CDFs are evaluated at every sample point (right-continuous, via
    `searchsorted(side="right")` on the sorted samples); the supremum is attained at one of them.
    O((n + m) log(n + m)). Samples must be finite.
    """
    a = np.sort(_sample(reference, "reference"))
    b = np.sort(_sample(current, "current"))
    points = np.concatenate((a, b))
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _q_ks(lam: float) -> float:
    """Kolmogorov's complementary distribution Q_KS(lam) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lam^2).

    The alternating series converges fast for lam >= 1.18; below that the equivalent (Jacobi theta) form
    1 - sqrt(2 pi)/lam sum_{j>=1} exp(-(2j-1)^2 pi^2 / (8 lam^2)) is used, as Numerical Recipes (3rd ed.)
    does.
    """
    if lam <= 0.0:
        return 1.0
    total = 0.0
    if lam < 1.18:
        y = math.exp(-(math.pi**2) / (8.0 * lam * lam))
        for j in range(1, 101):
            term = y ** ((2 * j - 1) ** 2)
            total += term
            if term <= 1e-17 * total or term == 0.0:
                break
        q = 1.0 - math.sqrt(2.0 * math.pi) / lam * total
    else:
        x = math.exp(-2.0 * lam * lam)
        sign = 1.0
        for k in range(1, 101):
            term = x ** (k * k)
            total += sign * term
            if term <= 1e-17 * abs(total) or term == 0.0:
                break
            sign = -sign
        q = 2.0 * total
    return min(1.0, max(0.0, q))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic `d` for sample sizes `n` and `m`.

    The Numerical Recipes approximation (Press et al., "kstwo"/"probks"): with the effective size
    ne = n*m/(n+m), lambda = (sqrt(ne) + 0.12 + 0.11/sqrt(ne)) * d and p = Q_KS(lambda), where
    Q_KS(lambda) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lambda^2), clamped to [0, 1]. Good for ne >= 4 or so;
    conservative (too large) for discrete data with many ties. Monotonically non-increasing in d.
    """
    if n <= 0 or m <= 0:
        raise ValueError(f"sample sizes must be positive, got n={n}, m={m}")
    d = min(1.0, max(0.0, float(d)))
    ne = n * m / (n + m)
    root = math.sqrt(ne)
    return _q_ks((root + 0.12 + 0.11 / root) * d)


def _psi_from_proportions(p: np.ndarray, q: np.ndarray, eps: float) -> float:
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, *, eps: float = PSI_EPSILON) -> float:
    """Population stability index sum_i (q_i - p_i) ln(q_i / p_i) of `current` (q) against `reference` (p).

    Bin edges are the reference's interior quantiles at 1/bins, ..., (bins-1)/bins (duplicates merged, so a
    discrete reference gets fewer bins); the outer bins are open, and a value equal to an edge belongs to the
    bin above it. When the top edge is the reference's maximum (a point mass there, e.g. a constant feature),
    one more edge just above it separates "at the maximum" from "above it", so a constant reference still sees
    a shift in either direction. Proportions below `eps` (empty bins) are raised to `eps` without
    renormalising, which keeps the logarithm finite. The formula is symmetric in p and q, but the bins come
    from the reference, so psi(a, b) and psi(b, a) differ somewhat (the tests check they agree within 25 % for
    a 1-std normal shift).

    Identical samples give exactly 0; two samples of the same distribution give about (bins - 1)(1/n + 1/m) on
    average (0.018 for 1000 rows each, 0.18 for 100), so PSI needs a few hundred rows per side to be read with
    the usual rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    ref = _sample(reference, "reference")
    cur = _sample(current, "current")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    high = ref.max()
    # the top bin would be [max, inf): give values above a point mass at max their own bin
    if edges[-1] == high:
        edges = np.append(edges, np.nextafter(high, np.inf))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    return _psi_from_proportions(p, q, eps)


def psi_categorical(ref_counts: np.ndarray, cur_counts: np.ndarray, *, eps: float = PSI_EPSILON) -> float:
    """PSI between two categorical distributions given as per-category counts (index = category).

    The shorter count vector is padded with zeros; empty categories are smoothed to `eps` as in `psi`.
    """
    p = np.asarray(ref_counts, dtype=np.float64).reshape(-1)
    q = np.asarray(cur_counts, dtype=np.float64).reshape(-1)
    if (p < 0).any() or (q < 0).any():
        raise ValueError("counts must be non-negative")
    size = max(p.size, q.size)
    p = np.pad(p, (0, size - p.size))
    q = np.pad(q, (0, size - q.size))
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("both count vectors need a positive total")
    return _psi_from_proportions(p / p.sum(), q / q.sum(), eps)


# ------------------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------------------

_Mode = Literal["elements", "summary", "classes", "lengths", "mean_length"]


def _lengths(batch: np.ndarray) -> np.ndarray:
    """String length of every element, float64, same shape."""
    if batch.dtype.kind in "SU":
        return np.char.str_len(batch).astype(np.float64)

    def length(v: object) -> int:
        try:
            return len(v)  # type: ignore[arg-type]
        except TypeError:
            return 0

    flat = batch.reshape(-1)
    return np.fromiter((length(v) for v in flat), dtype=np.float64, count=flat.size).reshape(batch.shape)


class FeatureExtractor:
    """Turns one tensor batch [rows, ...item] into per-row features [rows, F] (float64); see the module
    docstring.

    Built from one tensor's item shape and dtype (`for_batch`); `names` and `categorical` describe the
    columns. `extract` reuses a private scratch buffer, so one extractor must not be used from two threads at
    once.
    """

    def __init__(
        self,
        name: str,
        item_shape: Sequence[int],
        dtype: np.dtype | type | str,
        *,
        output: bool = False,
        max_summary_elements: int = SUMMARY_SAMPLE_ELEMENTS,
    ) -> None:
        self.tensor = name
        self.max_summary_elements = max(1, max_summary_elements)
        self.item_shape = tuple(int(d) for d in item_shape)
        self.dtype = np.dtype(dtype)
        self.item_size = element_count(self.item_shape)
        self.classes: int | None = None
        self.channel_axis: int | None = None  # axis of the item (not the batch)
        self.channels = 0
        self._scratch = np.empty(0, dtype=np.float64)
        kind = self.dtype.kind
        if kind in "OSU":
            if self.item_size <= MAX_ELEMENT_FEATURES:
                self.mode: _Mode = "lengths"
                names = [f"{name}[{i}].len" for i in range(self.item_size)]
            else:
                self.mode = "mean_length"
                names = [f"{name}.len"]
        elif kind not in "biuf":
            raise TypeError(f"tensor {name!r}: no drift features for dtype {self.dtype}")
        elif output and kind == "f" and len(self.item_shape) == 1 and self.item_shape[0] >= 2:
            self.mode = "classes"
            self.classes = self.item_shape[0]
            names = [f"{name}.class", f"{name}.max"]
        elif self.item_size <= MAX_ELEMENT_FEATURES:
            self.mode = "elements"
            names = [f"{name}[{i}]" for i in range(self.item_size)]
        else:
            self.mode = "summary"
            names = [f"{name}.mean", f"{name}.std"]
            if len(self.item_shape) >= 2:
                if 1 <= self.item_shape[-1] <= MAX_CHANNELS:
                    self.channel_axis = len(self.item_shape) - 1
                elif 1 <= self.item_shape[0] <= MAX_CHANNELS:
                    self.channel_axis = 0
            if self.channel_axis is not None:
                self.channels = self.item_shape[self.channel_axis]
                if self.channels >= 2:
                    names += [f"{name}.ch{c}" for c in range(self.channels)]
        self.names: tuple[str, ...] = tuple(names)
        self.categorical: tuple[bool, ...] = tuple(
            self.mode == "classes" and i == 0 for i in range(len(names))
        )

    @classmethod
    def for_batch(cls, name: str, batch: np.ndarray, *, output: bool = False) -> FeatureExtractor:
        if batch.ndim < 1:
            raise ValueError(f"tensor {name!r}: a batch needs a leading row axis")
        return cls(name, batch.shape[1:], batch.dtype, output=output)

    @property
    def width(self) -> int:
        return len(self.names)

    def compatible(self, batch: np.ndarray) -> bool:
        """Whether `batch` yields the same features (a dynamic dimension may change between requests)."""
        if batch.ndim < 1:
            return False
        kind = batch.dtype.kind
        if self.mode in ("lengths", "mean_length"):
            if kind not in "OSU":
                return False
            return self.mode == "mean_length" or batch.shape[1:] == self.item_shape
        if kind not in "biuf":
            return False
        if self.mode == "classes":
            return kind == "f" and batch.shape[1:] == self.item_shape
        if self.mode == "elements":
            return batch.shape[1:] == self.item_shape
        if batch.ndim != len(self.item_shape) + 1 or element_count(batch.shape[1:]) == 0:
            return False
        return self.channel_axis is None or batch.shape[1 + self.channel_axis] == self.channels

    def extract(self, batch: np.ndarray) -> np.ndarray:
        """Features of every row, [rows, F] float64 (a new array; `batch` is not retained)."""
        rows = batch.shape[0]
        if self.mode == "elements":
            return batch.reshape(rows, self.item_size).astype(np.float64)
        if self.mode == "lengths":
            return _lengths(batch).reshape(rows, self.item_size)
        if self.mode == "mean_length":
            lengths = _lengths(batch).reshape(rows, -1)
            return lengths.mean(axis=1, keepdims=True) if lengths.shape[1] else np.zeros((rows, 1))
        out = np.empty((rows, self.width), dtype=np.float64)
        if self.mode == "classes":
            out[:, 0] = np.argmax(batch, axis=1)
            out[:, 1] = np.max(batch, axis=1)
            return out
        self._summary(batch, out)
        return out

    def _summary(self, batch: np.ndarray, out: np.ndarray) -> None:
        rows = batch.shape[0]
        # [rows, positions, channels] (channels-last) or [rows, channels, positions] (channels-first).
        channels_last = self.channels < 2 or self.channel_axis == len(self.item_shape) - 1
        if channels_last:
            grid = batch.reshape(rows, -1, max(1, self.channels))
        else:
            grid = batch.reshape(rows, self.channels, -1)
        positions = grid.shape[1] if channels_last else grid.shape[2]
        # ceil: sample every step-th
        step = -(-positions * max(1, self.channels) // self.max_summary_elements)
        if step > 1:
            grid = grid[:, ::step] if channels_last else grid[:, :, ::step]
        flat = grid.reshape(rows, -1)  # a view, or a copy of at most max_summary_elements per row
        size = flat.shape[1]
        np.sum(flat, axis=1, dtype=np.float64, out=out[:, 0])
        out[:, 0] /= size
        # Two-pass std in float64 through a bounded scratch buffer: no float64 copy of the whole batch.
        chunk = max(1, _SCRATCH_ELEMENTS // size)
        if self._scratch.size < min(rows, chunk) * size:
            self._scratch = np.empty(min(rows, chunk) * size, dtype=np.float64)
        for start in range(0, rows, chunk):
            part = flat[start : start + chunk]
            scratch = self._scratch[: part.shape[0] * size].reshape(part.shape[0], size)
            np.subtract(part, out[start : start + part.shape[0], 0:1], out=scratch)
            np.square(scratch, out=scratch)
            out[start : start + part.shape[0], 1] = np.sqrt(scratch.sum(axis=1) / size)
        if self.channels >= 2:
            sums = grid.sum(axis=1 if channels_last else 2, dtype=np.float64)
            out[:, 2:] = sums / (size // self.channels)


# ------------------------------------------------------------------------------------------------------------
# Reference profile
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceProfile:
    """Raw reference samples per tensor name, [N, ...item] each (file format: see the module docstring)."""

    arrays: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        for name, array in self.arrays.items():
            if np.ndim(array) < 1 or len(array) == 0:
                raise ValueError(f"reference for {name!r} needs shape [N, ...item] with N >= 1")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceProfile:
        with np.load(path, allow_pickle=False) as npz:
            return cls({name: npz[name] for name in npz.files})

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike[str]) -> ReferenceProfile | None:
        """The profile in a model's repository directory, or None when it has none."""
        path = Path(model_dir) / REFERENCE_FILENAME
        return cls.load(path) if path.is_file() else None

    @classmethod
    def from_capture(
        cls, batches: Iterable[Mapping[str, np.ndarray]], max_rows: int | None = None
    ) -> ReferenceProfile:
        """Concatenates recorded request batches ({tensor name: [rows, ...item]}), keeping the first
        `max_rows`."""
        parts: dict[str, list[np.ndarray]] = {}
        counts: dict[str, int] = {}
        for batch in batches:
            for name, array in batch.items():
                have = counts.get(name, 0)
                if max_rows is not None and have >= max_rows:
                    continue
                array = np.asarray(array)
                take = array if max_rows is None else array[: max_rows - have]
                parts.setdefault(name, []).append(np.array(take, copy=True))
                counts[name] = have + len(take)
        return cls({name: np.concatenate(chunks) for name, chunks in parts.items() if counts[name] > 0})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the profile (atomically) to exactly `path`; object (BYTES) arrays become fixed-width
        `S`/`U`."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        for name, array in self.arrays.items():
            array = np.asarray(array)
            if array.dtype.kind == "O":
                array = np.array(array.tolist())
                if array.dtype.kind not in "SU":
                    raise ValueError(f"reference for {name!r}: object array is not all bytes or all str")
            arrays[name] = array
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".drift_reference.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                # Explicit allow_pickle: nothing here needs pickling (object arrays became S/U above), and it
                # keeps an input named "allow_pickle" from being taken for the flag (it fails loudly instead).
                np.savez(f, allow_pickle=False, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    tensor: str
    role: Literal["input", "output"]
    psi: float
    ks: float | None  # None for categorical features
    ks_pvalue: float | None
    n_reference: int
    n_current: int
    categorical: bool = False


@dataclass(frozen=True)
class DriftReport:
    features: tuple[FeatureDrift, ...]
    reference_complete: bool  # every tensor seen so far has a loaded or fully captured reference
    skipped_rows: Mapping[str, int] = field(default_factory=dict)  # rows not monitored (shape/dtype changed)

    @property
    def inputs(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.role == "input")

    @property
    def outputs(self) -> tuple[FeatureDrift, ...]:
        return tuple(f for f in self.features if f.role == "output")

    def get(self, feature: str) -> FeatureDrift | None:
        return next((f for f in self.features if f.feature == feature), None)

    def drifted(self, p_threshold: float = 0.05) -> list[str]:
        """Features whose KS p-value is below `p_threshold` (categorical features have none: check their
        psi)."""
        return [f.feature for f in self.features if f.ks_pvalue is not None and f.ks_pvalue < p_threshold]

    def metric_samples(self) -> list[tuple[str, str, float]]:
        """(metric name, feature label, value) for hotwire_drift_ks, hotwire_drift_ks_pvalue and
        hotwire_drift_psi."""
        samples: list[tuple[str, str, float]] = []
        for f in self.features:
            if f.ks is not None and f.ks_pvalue is not None:
                samples.append(("hotwire_drift_ks", f.feature, f.ks))
                samples.append(("hotwire_drift_ks_pvalue", f.feature, f.ks_pvalue))
            samples.append(("hotwire_drift_psi", f.feature, f.psi))
        return samples


# ------------------------------------------------------------------------------------------------------------
# Monitor
# ------------------------------------------------------------------------------------------------------------


class _TensorState:
    """One tensor's extractor and buffers. Buffers are allocated once, when the extractor is known."""

    def __init__(self, name: str, role: Literal["input", "output"]) -> None:
        self.name = name
        self.role = role
        self.extractor: FeatureExtractor | None = None
        self.unsupported = False
        self.reference = np.empty((0, 0))
        self.ref_count = 0
        self.ref_frozen = False  # loaded from a profile or fully captured: never written again
        self.window = np.empty((0, 0))
        self.pos = 0
        self.count = 0
        self.skipped = 0

    def allocate(self, extractor: FeatureExtractor, reference_rows: int, window_rows: int) -> None:
        self.extractor = extractor
        self.reference = np.empty((reference_rows, extractor.width), dtype=np.float64)
        self.window = np.empty((window_rows, extractor.width), dtype=np.float64)

    def write_window(self, rows: np.ndarray) -> None:
        capacity = self.window.shape[0]
        k = rows.shape[0]  # <= capacity
        first = min(k, capacity - self.pos)
        self.window[self.pos : self.pos + first] = rows[:first]
        if k > first:
            self.window[: k - first] = rows[first:]
        self.pos = (self.pos + k) % capacity
        self.count = min(capacity, self.count + k)

    def copy_window(self) -> np.ndarray:
        if self.count < self.window.shape[0]:
            return self.window[: self.count].copy()
        return np.concatenate((self.window[self.pos :], self.window[: self.pos]))  # oldest first


class DriftMonitor:
    """Drift of one model version's inputs and outputs: cheap `observe` on the loop, `compute` on a worker
    thread."""

    def __init__(
        self,
        input_names: Sequence[str],
        output_names: Sequence[str],
        window_rows: int = 1000,
        reference_rows: int = 1000,
        reference: ReferenceProfile | None = None,
        *,
        min_rows: int = DEFAULT_MIN_ROWS,
        bins: int = 10,
    ) -> None:
        if window_rows < 1 or reference_rows < 1 or min_rows < 1:
            raise ValueError("window_rows, reference_rows and min_rows must be positive")
        self.window_rows = window_rows
        self.reference_rows = reference_rows
        self.min_rows = min_rows
        self.bins = bins
        self._lock = threading.Lock()  # guards buffer contents and counters; held by compute only to copy
        self._writer = threading.Lock()  # serialises observe calls (uncontended on the event loop)
        self._inputs = [_TensorState(n, "input") for n in input_names]
        self._outputs = [_TensorState(n, "output") for n in output_names]
        if reference is not None:
            for state in self._inputs + self._outputs:
                array = reference.arrays.get(state.name)
                if array is not None and state.extractor is None:
                    self._load_reference(state, np.asarray(array))

    def _load_reference(self, state: _TensorState, array: np.ndarray) -> None:
        try:
            extractor = FeatureExtractor.for_batch(state.name, array, output=state.role == "output")
        except (TypeError, ValueError) as e:
            raise ValueError(f"drift reference for {state.name!r}: {e}") from None
        state.allocate(extractor, 0, self.window_rows)
        state.reference = extractor.extract(array)
        state.ref_count = state.reference.shape[0]
        state.ref_frozen = True

    # -- request path ---------------------------------------------------------------------------------------

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Records one response's rows. Tensors must be [rows, ...item]; unknown names are ignored."""
        with self._writer:
            for states, tensors in ((self._inputs, inputs), (self._outputs, outputs)):
                for state in states:
                    array = tensors.get(state.name)
                    if array is not None and not state.unsupported:
                        self._observe_tensor(state, array)

    def _observe_tensor(self, state: _TensorState, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray) or array.ndim < 1:
            state.skipped += 1
            return
        extractor = state.extractor
        if extractor is None:
            try:
                extractor = FeatureExtractor.for_batch(state.name, array, output=state.role == "output")
            except TypeError:
                state.unsupported = True
                return
            with self._lock:  # compute must never see the extractor without its buffers
                state.allocate(extractor, self.reference_rows, self.window_rows)
        rows = array.shape[0]
        if rows == 0:
            return
        if not extractor.compatible(array):
            state.skipped += rows
            return
        need_ref = 0 if state.ref_frozen else self.reference_rows - state.ref_count
        ref_rows = extractor.extract(array[:need_ref]) if need_ref > 0 else None
        rest = array[need_ref:] if need_ref > 0 else array
        cur_rows = extractor.extract(rest[-self.window_rows :]) if rest.shape[0] else None
        with self._lock:
            if ref_rows is not None:
                k = ref_rows.shape[0]
                state.reference[state.ref_count : state.ref_count + k] = ref_rows
                state.ref_count += k
                state.ref_frozen = state.ref_count >= self.reference_rows
            if cur_rows is not None:
                state.write_window(cur_rows)

    # -- worker thread ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Copies of every tensor's reference and current feature rows, {tensor: (reference, current)}."""
        with self._lock:
            return {
                s.name: self._copy(s)[:2] for s in self._inputs + self._outputs if s.extractor is not None
            }

    @staticmethod
    def _copy(state: _TensorState) -> tuple[np.ndarray, np.ndarray, bool]:
        # A frozen reference is never written again: share it instead of copying.
        reference = state.reference[: state.ref_count]
        if not state.ref_frozen:
            reference = reference.copy()
        return reference, state.copy_window(), state.ref_frozen

    def compute(self) -> DriftReport:
        """Compares every feature's current window with its reference (thread-safe against `observe`)."""
        with self._lock:
            copies = [
                (s, *self._copy(s), s.skipped)
                for s in self._inputs + self._outputs
                if s.extractor is not None
            ]
        features: list[FeatureDrift] = []
        complete = True
        skipped: dict[str, int] = {}
        for state, reference, current, frozen, skip in copies:
            complete = complete and frozen
            if skip:
                skipped[state.name] = skip
            extractor = state.extractor
            assert extractor is not None
            for j, (name, categorical) in enumerate(zip(extractor.names, extractor.categorical)):
                ref = reference[:, j]
                cur = current[:, j]
                ref = ref[np.isfinite(ref)]
                cur = cur[np.isfinite(cur)]
                if ref.size < self.min_rows or cur.size < self.min_rows:
                    continue
                if categorical:
                    classes = extractor.classes or 0
                    ref_counts = np.bincount(ref.astype(np.int64), minlength=classes)
                    cur_counts = np.bincount(cur.astype(np.int64), minlength=classes)
                    value = psi_categorical(ref_counts, cur_counts)
                    features.append(
                        FeatureDrift(
                            name,
                            state.name,
                            state.role,
                            value,
                            None,
                            None,
                            int(ref.size),
                            int(cur.size),
                            categorical=True,
                        )
                    )
                    continue
                d = ks_statistic(ref, cur)
                features.append(
                    FeatureDrift(
                        name,
                        state.name,
                        state.role,
                        psi(ref, cur, self.bins),
                        d,
                        ks_pvalue(d, ref.size, cur.size),
                        int(ref.size),
                        int(cur.size),
                    )
                )
        return DriftReport(tuple(features), complete, skipped)
