"""Preprocessing kernels: numba (hotwire.kernels) vs. the best NumPy formulation vs. the same op in an ONNX
graph.

    python -m hotwire.bench.kernels [--output PATH] [--min-time S] [--rounds R]

For every kernel, at batch 1 and 32: the numba wrapper (argument checks and output allocation included), each
NumPy formulation listed in `numpy_candidates` (the fastest is reported, by name), and a tiny ONNX graph built
with onnx.helper running in ONNX Runtime (CPU, intra_op_num_threads=1, spinning off; ``session.run`` with its
own output allocation). Implementations are timed round-robin (``--rounds`` rounds of at least ``--min-time``
seconds each) so a noisy machine's drifts spread over all of them; the table shows the median of all calls.
Every output is checked against numba's first (the ``max |Δ|`` column: ONNX Runtime's uint8 Resize truncates
where hotwire rounds).

Prints a Markdown table; with ``--output`` it also writes it between ``<!-- bench:kernels:start -->`` and
``<!-- bench:kernels:end -->`` (the file is created if missing; the rest is left alone).
The headline: 224x224 uint8 HWC -> normalized float32 NCHW at batch 1, numba vs the best NumPy (target >= 3x).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # onnx and onnxruntime are imported where used: `--only` runs need not load them
    import onnx
    import onnxruntime as ort

START_MARKER = "<!-- bench:kernels:start -->"
END_MARKER = "<!-- bench:kernels:end -->"

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BATCHES = (1, 32)
FEATURES = 64
NUM_CLASSES = 100
SEQ_LEN = 128


# ------------------------------------------------------------------------------------------- ONNX helpers


def _session(graph: onnx.GraphProto) -> ort.InferenceSession:
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _onnx_runner(graph: onnx.GraphProto, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    session = _session(graph)

    def run() -> object:
        return session.run(None, feeds)[0]

    return run


def _value(name: str, elem_type: int, shape: Sequence[str | int | None]) -> onnx.ValueInfoProto:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


# ------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    kernel: str
    shape: str
    batch: int
    numba: Callable[[], object]
    numpy_candidates: dict[str, Callable[[], object]]
    onnx: Callable[[], object] | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)


def _first(result: object) -> np.ndarray:
    """The array to compare of an implementation's result (pad_truncate returns (ids, mask))."""
    return np.asarray(result[0] if isinstance(result, tuple) else result)


def normalize_cases(rng: np.random.Generator) -> list[Case]:
    from onnx import TensorProto, helper

    from hotwire.kernels import image

    mul = (1.0 / (255.0 * STD.astype(np.float64))).astype(np.float32)
    add = (-MEAN.astype(np.float64) / STD).astype(np.float32)
    lut32 = ((np.arange(256)[None, :] / 255.0 - MEAN[:, None].astype(np.float64)) / STD[:, None]).astype(
        np.float32
    )
    lut16 = lut32.astype(np.float16)
    cases = []
    for out_dtype, onnx_type in ((np.float32, TensorProto.FLOAT), (np.float16, TensorProto.FLOAT16)):
        nodes = [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2]),
            helper.make_node("Sub", ["xt", "mean255"], ["centred"]),
            helper.make_node("Div", ["centred", "std255"], ["y" if out_dtype == np.float32 else "y32"]),
        ]
        if out_dtype == np.float16:
            nodes.append(helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT16))
        graph = helper.make_graph(
            nodes,
            "normalize",
            [_value("x", TensorProto.UINT8, ["N", 224, 224, 3])],
            [_value("y", onnx_type, ["N", 3, 224, 224])],
            [
                _const("mean255", (MEAN * 255).reshape(1, 3, 1, 1).astype(np.float32)),
                _const("std255", (STD * 255).reshape(1, 3, 1, 1).astype(np.float32)),
            ],
        )
        for batch in BATCHES:
            x = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
            shape = (batch, 3, 224, 224)

            def ufunc_into_nchw(x: np.ndarray = x, shape: tuple[int, ...] = shape) -> np.ndarray:
                out = np.empty(shape, np.float32)
                np.multiply(x.transpose(0, 3, 1, 2), mul[:, None, None], out=out, dtype=np.float32)
                np.add(out, add[:, None, None], out=out)
                return out

            def astype_then_transpose(x: np.ndarray = x) -> np.ndarray:
                y = x.astype(np.float32)
                y *= mul
                y += add
                return np.ascontiguousarray(y.transpose(0, 3, 1, 2))

            def naive(x: np.ndarray = x) -> np.ndarray:
                return np.ascontiguousarray(((x.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2))

            def lut_take(
                x: np.ndarray = x, shape: tuple[int, ...] = shape, dtype: type[np.floating[Any]] = out_dtype
            ) -> np.ndarray:
                out = np.empty(shape, dtype)
                table = lut32 if dtype == np.float32 else lut16
                for c in range(3):
                    np.take(table[c], x[..., c], out=out[:, c])
                return out

            # Defaults bind this iteration's arrays (as a lambda's would), with types the checker can see.
            def ufunc_then_f16(f: Callable[[], np.ndarray] = ufunc_into_nchw) -> np.ndarray:
                return f().astype(np.float16)

            def numba_normalize(x: np.ndarray = x, d: type[np.floating[Any]] = out_dtype) -> np.ndarray:
                return image.normalize_hwc_to_nchw(x, MEAN, STD, d)

            candidates: dict[str, Callable[[], object]]
            if out_dtype == np.float32:
                candidates = {
                    "ufunc into NCHW (fused m,a)": ufunc_into_nchw,
                    "astype, *m +a, transpose copy": astype_then_transpose,
                    "(x/255-mean)/std, transpose copy": naive,
                    "per-channel LUT take": lut_take,
                }
            else:
                candidates = {
                    "ufunc into NCHW, astype f16": ufunc_then_f16,
                    "per-channel LUT take": lut_take,
                }
            cases.append(
                Case(
                    f"normalize → {np.dtype(out_dtype).name} NCHW",
                    "224×224×3 u8",
                    batch,
                    numba_normalize,
                    candidates,
                    _onnx_runner(graph, {"x": x}),
                )
            )
    return cases


def _numpy_resize(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Vectorised float32 bilinear with the same taps (gather rows, gather columns, blend, round half up)."""

    def taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
        i0 = pos.astype(np.int64)
        return i0, np.minimum(i0 + 1, in_size - 1), (pos - i0).astype(np.float32)

    y0, y1, ly = taps(src.shape[1], out_h)
    x0, x1, lx = taps(src.shape[2], out_w)
    lx = lx[None, None, :, None]
    ly = ly[None, :, None, None]
    rows0 = src[:, y0].astype(np.float32)
    rows1 = src[:, y1].astype(np.float32)
    top = rows0[:, :, x0] * (1 - lx) + rows0[:, :, x1] * lx
    bottom = rows1[:, :, x0] * (1 - lx) + rows1[:, :, x1] * lx
    value = top * (1 - ly) + bottom * ly
    value += 0.5
    return np.minimum(value, 255).astype(np.uint8)


def _resize_graph(height: int, width: int, sizes: tuple[int, int], pads: list[int] | None) -> onnx.GraphProto:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "Resize",
            ["x", "", "", "sizes"],
            ["r" if pads else "y"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
            axes=[1, 2],
        )
    ]
    inits = [_const("sizes", np.array(sizes, np.int64))]
    if pads:
        nodes.append(helper.make_node("Pad", ["r", "pads", "pad_value"], ["y"], mode="constant"))
        inits += [_const("pads", np.array(pads, np.int64)), _const("pad_value", np.array(114, np.uint8))]
    return helper.make_graph(
        nodes,
        "resize",
        [_value("x", TensorProto.UINT8, ["N", height, width, 3])],
        [_value("y", TensorProto.UINT8, ["N", None, None, 3])],
        inits,
    )


def resize_cases(rng: np.random.Generator) -> list[Case]:
    from hotwire.kernels import image

    cases = []
    for batch in BATCHES:
        x = rng.integers(0, 256, (batch, 480, 640, 3), dtype=np.uint8)

        def numba_resize(x: np.ndarray = x) -> np.ndarray:
            return image.resize_bilinear(x, 224, 224)

        def numpy_resize(x: np.ndarray = x) -> np.ndarray:
            return _numpy_resize(x, 224, 224)

        cases.append(
            Case(
                "resize_bilinear → u8",
                "480×640×3 → 224×224",
                batch,
                numba_resize,
                {"gather rows/cols, blend f32": numpy_resize},
                _onnx_runner(_resize_graph(480, 640, (224, 224), None), {"x": x}),
            )
        )
    _, rh, rw, top, left = image.letterbox_geometry(720, 1280, 640, 640)
    pads = [0, top, left, 0, 0, 640 - rh - top, 640 - rw - left, 0]
    for batch in BATCHES:
        x = rng.integers(0, 256, (batch, 720, 1280, 3), dtype=np.uint8)

        def numpy_letterbox(x: np.ndarray = x) -> np.ndarray:
            out = np.full((x.shape[0], 640, 640, 3), 114, np.uint8)
            out[:, top : top + rh, left : left + rw] = _numpy_resize(x, rh, rw)
            return out

        def numba_letterbox(x: np.ndarray = x) -> tuple[np.ndarray, float, tuple[int, int]]:
            return image.letterbox(x, 640, 640, 114)

        cases.append(
            Case(
                "letterbox → u8",
                "720×1280×3 → 640×640",
                batch,
                numba_letterbox,
                {"resize + np.full + assign": numpy_letterbox},
                _onnx_runner(_resize_graph(720, 1280, (rh, rw), pads), {"x": x}),
            )
        )
    return cases


def tabular_cases(rng: np.random.Generator) -> list[Case]:
    from onnx import TensorProto, helper

    from hotwire.kernels import tabular

    mean = rng.standard_normal(FEATURES).astype(np.float32)
    std = rng.uniform(0.5, 2, FEATURES).astype(np.float32)
    lo, hi = mean - 1, mean + 1
    rng_span = hi - lo
    fill = rng.standard_normal(FEATURES).astype(np.float32)
    cases = []
    x_info = _value("x", TensorProto.FLOAT, ["N", FEATURES])
    y_info = _value("y", TensorProto.FLOAT, ["N", FEATURES])

    def graph(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> onnx.GraphProto:
        return helper.make_graph(
            nodes, "tabular", [x_info], [y_info], [_const(k, v) for k, v in inits.items()]
        )

    for batch in BATCHES:
        x = rng.standard_normal((batch, FEATURES)).astype(np.float32)
        x_nan = x.copy()
        x_nan[rng.random(x.shape) < 0.1] = np.nan
        shape = x.shape

        def np_standardize(x: np.ndarray = x) -> np.ndarray:
            out = np.subtract(x, mean)
            return np.divide(out, std, out=out)

        def np_min_max(x: np.ndarray = x) -> np.ndarray:
            out = np.subtract(x, lo)
            return np.divide(out, rng_span, out=out)

        def np_fill_where(x: np.ndarray = x_nan) -> np.ndarray:
            return np.where(np.isnan(x), fill, x)

        def np_fill_copyto(x: np.ndarray = x_nan, shape: tuple[int, int] = shape) -> np.ndarray:
            out = x.copy()
            np.copyto(out, np.broadcast_to(fill, shape), where=np.isnan(x))
            return out

        def numba_standardize(x: np.ndarray = x) -> np.ndarray:
            return tabular.standardize(x, mean, std)

        def numba_min_max(x: np.ndarray = x) -> np.ndarray:
            return tabular.min_max(x, lo, hi)

        def numba_clip(x: np.ndarray = x) -> np.ndarray:
            return tabular.clip(x, lo, hi)

        def np_clip(x: np.ndarray = x) -> np.ndarray:
            return np.clip(x, lo, hi)

        def numba_fill_nan(x: np.ndarray = x_nan) -> np.ndarray:
            return tabular.fill_nan(x, fill)

        cases += [
            Case(
                "standardize",
                f"[N, {FEATURES}] f32",
                batch,
                numba_standardize,
                {"(x - mean) / std in place": np_standardize},
                _onnx_runner(
                    graph(
                        [
                            helper.make_node("Sub", ["x", "mean"], ["c"]),
                            helper.make_node("Div", ["c", "std"], ["y"]),
                        ],
                        {"mean": mean, "std": std},
                    ),
                    {"x": x},
                ),
            ),
            Case(
                "min_max",
                f"[N, {FEATURES}] f32",
                batch,
                numba_min_max,
                {"(x - lo) / (hi - lo) in place": np_min_max},
                _onnx_runner(
                    graph(
                        [
                            helper.make_node("Sub", ["x", "lo"], ["c"]),
                            helper.make_node("Div", ["c", "span"], ["y"]),
                        ],
                        {"lo": lo, "span": rng_span},
                    ),
                    {"x": x},
                ),
            ),
            Case(
                "clip (per feature)",
                f"[N, {FEATURES}] f32",
                batch,
                numba_clip,
                {"np.clip": np_clip},
                _onnx_runner(
                    graph(
                        [
                            helper.make_node("Max", ["x", "lo"], ["c"]),
                            helper.make_node("Min", ["c", "hi"], ["y"]),
                        ],
                        {"lo": lo, "hi": hi},
                    ),
                    {"x": x},
                ),
            ),
            Case(
                "fill_nan",
                f"[N, {FEATURES}] f32, 10% NaN",
                batch,
                numba_fill_nan,
                {"np.where(isnan)": np_fill_where, "copyto(where=isnan)": np_fill_copyto},
                _onnx_runner(
                    graph(
                        [
                            helper.make_node("IsNaN", ["x"], ["m"]),
                            helper.make_node("Where", ["m", "fill", "x"], ["y"]),
                        ],
                        {"fill": fill},
                    ),
                    {"x": x_nan},
                ),
            ),
        ]
        cats = rng.integers(0, NUM_CLASSES, batch).astype(np.int64)

        def np_one_hot(cats: np.ndarray = cats) -> np.ndarray:
            out = np.zeros((cats.size, NUM_CLASSES), np.float32)
            valid = (cats >= 0) & (cats < NUM_CLASSES)
            out[np.nonzero(valid)[0], cats[valid]] = 1.0
            return out

        def numba_one_hot(cats: np.ndarray = cats) -> np.ndarray:
            return tabular.one_hot(cats, NUM_CLASSES)

        one_hot_graph = helper.make_graph(
            [helper.make_node("OneHot", ["c", "depth", "values"], ["y"], axis=-1)],
            "one_hot",
            [_value("c", TensorProto.INT64, ["N"])],
            [_value("y", TensorProto.FLOAT, ["N", NUM_CLASSES])],
            [
                _const("depth", np.array(NUM_CLASSES, np.int64)),
                _const("values", np.array([0, 1], np.float32)),
            ],
        )
        cases.append(
            Case(
                "one_hot",
                f"[N] i64 → [N, {NUM_CLASSES}]",
                batch,
                numba_one_hot,
                {"zeros + fancy assign": np_one_hot},
                _onnx_runner(one_hot_graph, {"c": cats}),
            )
        )
    return cases


def sequence_cases(rng: np.random.Generator) -> list[Case]:
    from hotwire.kernels import sequence

    cases = []
    for batch in BATCHES:
        rows = [rng.integers(0, 30000, rng.integers(16, 512)) for _ in range(batch)]
        flat, offsets = sequence.to_ragged(rows)

        def np_vectorised(
            flat: np.ndarray = flat, offsets: np.ndarray = offsets
        ) -> tuple[np.ndarray, np.ndarray]:
            lengths = np.diff(offsets)
            positions = np.arange(SEQ_LEN)
            mask = positions[None, :] < lengths[:, None]
            index = np.minimum(offsets[:-1, None] + positions[None, :], max(flat.size - 1, 0))
            ids = np.where(mask, flat[index], 0)
            return ids, mask.astype(np.int64)

        def np_rows(rows: list[np.ndarray] = rows) -> tuple[np.ndarray, np.ndarray]:
            ids = np.zeros((len(rows), SEQ_LEN), np.int64)
            mask = np.zeros((len(rows), SEQ_LEN), np.int64)
            for i, row in enumerate(rows):
                n = min(row.size, SEQ_LEN)
                ids[i, :n] = row[:n]
                mask[i, :n] = 1
            return ids, mask

        def numba_pad_truncate(
            flat: np.ndarray = flat, offsets: np.ndarray = offsets
        ) -> tuple[np.ndarray, np.ndarray]:
            return sequence.pad_truncate(flat, SEQ_LEN, offsets=offsets)

        cases.append(
            Case(
                "pad_truncate (ragged)",
                f"len 16..511 → {SEQ_LEN}",
                batch,
                numba_pad_truncate,
                {"vectorised gather + where": np_vectorised, "loop over rows": np_rows},
                None,
                note="no ONNX equivalent for ragged input",
            )
        )
    return cases


# ------------------------------------------------------------------------------------------- timing


def _time_block(fn: Callable[[], object], min_time: float, max_calls: int = 20000) -> list[float]:
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls:
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
        if time.perf_counter() - start >= min_time:  # slow calls: one per block (rounds give several)
            break
    return samples


def measure(case: Case, rounds: int, min_time: float) -> None:
    impls = {"numba": case.numba, **{f"numpy:{k}": v for k, v in case.numpy_candidates.items()}}
    if case.onnx is not None:
        impls["onnx"] = case.onnx
    for fn in impls.values():  # warm caches, allocator and ORT's first run
        for _ in range(3):
            fn()
    case.samples = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            case.samples[name] += _time_block(impls[name], min_time)


def _max_delta(case: Case) -> tuple[float, float | None]:
    want = _first(case.numba()).astype(np.float64)
    worst_numpy = 0.0
    for fn in case.numpy_candidates.values():
        got = _first(fn()).astype(np.float64)
        worst_numpy = max(worst_numpy, float(np.nanmax(np.abs(got - want))) if got.size else 0.0)
    onnx_delta = None
    if case.onnx is not None:
        got = _first(case.onnx()).astype(np.float64)
        onnx_delta = float(np.nanmax(np.abs(got - want))) if got.size else 0.0
    return worst_numpy, onnx_delta


# ------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    case: Case
    numba_us: float
    numpy_us: float
    numpy_name: str
    onnx_us: float | None
    numpy_delta: float
    onnx_delta: float | None


def summarise(case: Case) -> Row:
    med = {name: statistics.median(s) for name, s in case.samples.items()}
    numpy_items = [(v, k.split(":", 1)[1]) for k, v in med.items() if k.startswith("numpy:")]
    numpy_us, numpy_name = min(numpy_items)
    numpy_delta, onnx_delta = _max_delta(case)
    return Row(case, med["numba"], numpy_us, numpy_name, med.get("onnx"), numpy_delta, onnx_delta)


def _fmt_us(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _fmt_delta(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:.2g}"


def render(rows: list[Row], rounds: int, min_time: float) -> str:
    import numba
    import onnxruntime

    lines = [
        START_MARKER,
        "### Preprocessing kernels: numba vs NumPy vs ONNX Runtime",
        "",
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numba {numba.__version__}, NumPy {np.__version__}, "
        f"onnxruntime {onnxruntime.__version__} (1 intra-op thread). Median µs per call over {rounds} "
        "round-robin "
        f"rounds of ≥ {min_time:g} s per implementation; wrappers include argument checks and output "
        "allocation. "
        "NumPy: the fastest of the listed formulations; ONNX: a tiny graph of the same op, `session.run`. "
        "Speed-ups are NumPy/numba and ONNX/numba. max |Δ|: largest difference from numba's output (NumPy, "
        "ONNX).",
        "",
        "| kernel | input | batch | numba µs | best NumPy µs (formulation) | ONNX µs | ×NumPy | ×ONNX "
        "| max abs Δ (NumPy, ONNX) |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        case = row.case
        onnx_ratio = "n/a" if row.onnx_us is None else f"{row.onnx_us / row.numba_us:.1f}×"
        lines.append(
            f"| {case.kernel} | {case.shape} | {case.batch} | {_fmt_us(row.numba_us)} | "
            f"{_fmt_us(row.numpy_us)} ({row.numpy_name}) | {_fmt_us(row.onnx_us)} | "
            f"{row.numpy_us / row.numba_us:.1f}× | {onnx_ratio} | "
            f"{_fmt_delta(row.numpy_delta)}, {_fmt_delta(row.onnx_delta)} |"
        )
    head = next(
        (r for r in rows if r.case.kernel.startswith("normalize → float32") and r.case.batch == 1), None
    )
    if head is not None:
        ratio = head.numpy_us / head.numba_us
        verdict = "meets" if ratio >= 3 else "misses"
        lines += [
            "",
            f"**224×224 uint8 HWC → normalized fp32 NCHW, batch 1: numba {head.numba_us:.1f} µs vs best "
            "NumPy "
            f"{head.numpy_us:.1f} µs ({head.numpy_name}) = {ratio:.1f}× ({verdict} the ≥ 3× target); "
            f"ONNX Runtime {_fmt_us(head.onnx_us)} µs.**",
        ]
    lines += [
        "",
        "Notes: ONNX Runtime's uint8 Resize truncates where hotwire rounds half up (hence Δ = 1 on resize "
        "rows); "
        "the NumPy resize uses the same taps. center_crop is a view (no kernel, nothing to time).",
        END_MARKER,
    ]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Write section between the markers of path (created if missing); everything else is kept."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(END_MARKER) :]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    if not text.endswith("\n"):
        text += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.kernels", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--output", type=Path, help="write the table between the bench:kernels markers of this file"
    )
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds per case (default 5)")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per implementation per round")
    parser.add_argument(
        "--only", default="", help="comma-separated kernel name prefixes to run (default: all)"
    )
    args = parser.parse_args(argv)

    from hotwire.kernels import image, sequence, tabular

    for module in (image, tabular, sequence):  # compile (or load) everything before timing
        module.warm()
    rng = np.random.default_rng(0)
    cases = normalize_cases(rng) + resize_cases(rng) + tabular_cases(rng) + sequence_cases(rng)
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        cases = [c for c in cases if any(c.kernel.startswith(p) for p in prefixes)]
    rows = []
    for case in cases:
        measure(case, args.rounds, args.min_time)
        rows.append(summarise(case))
        print(f"  {case.kernel} batch {case.batch}: numba {rows[-1].numba_us:.1f} µs", flush=True)
    section = render(rows, args.rounds, args.min_time)
    print(section)
    if args.output:
        replace_section(args.output, section)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
