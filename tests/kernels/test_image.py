"""hotwire.kernels.image (and its GPU twin) against NumPy reference implementations.

Tolerances (ref = the formula evaluated in float64 by NumPy from the same float32 parameters):
* normalize, float32 out: |out - ref| <= 1e-6 * (|x * m| + |a|) with m = 1/(255 std), a = -mean/std, i.e.
  relative 1e-6 of the larger term before cancellation (the kernel's bound is 2**-23 of it, one FMA with
  rounded m and a).
* normalize, float16 out: bit-exact to ref rounded to float16.
* scale, float32 out: bit-exact to NumPy's ``x.astype(float32) * float32(scale)``; float16 out: bit-exact to
  float16(float64(x) * float32(scale)).
* resize_bilinear (OpenCV INTER_LINEAR half-pixel clamped convention): uint8 within 1 level of the float64
  reference rounded half up (the kernel blends in float32, so a value within ~1e-4 of .5 may round the other
  way); float32 within 1e-3 absolute (values are 0..255).
* center_crop, letterbox padding and layout/threading variants: exact.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hotwire.kernels import cuda_image, image

SETTINGS = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module", autouse=True)
def warmed() -> list[int]:
    """warm() once for the module; the signature counts it leaves (every later call must reuse them)."""
    image.warm()
    return [len(core.signatures) for core in image.CORES]


# ------------------------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------------------------


def ref_normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray, swap: bool) -> np.ndarray:
    src = images[..., [2, 1, 0] + list(range(3, images.shape[3]))] if swap else images
    x = src.transpose(0, 3, 1, 2).astype(np.float64)
    m64 = mean.astype(np.float64)[None, :, None, None]
    s64 = std.astype(np.float64)[None, :, None, None]
    return (x / 255.0 - m64) / s64


def ref_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, in_size - 1), src - i0


def ref_resize(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """float64 bilinear, OpenCV INTER_LINEAR coordinates; images [N, H, W, C]."""
    y0, y1, ly = ref_taps(images.shape[1], out_h)
    x0, x1, lx = ref_taps(images.shape[2], out_w)
    f = images.astype(np.float64)
    lx = lx[None, None, :, None]
    top = f[:, y0][:, :, x0] * (1 - lx) + f[:, y0][:, :, x1] * lx
    bottom = f[:, y1][:, :, x0] * (1 - lx) + f[:, y1][:, :, x1] * lx
    ly = ly[None, :, None, None]
    return top * (1 - ly) + bottom * ly


def ref_round_u8(values: np.ndarray) -> np.ndarray:
    return np.minimum(np.floor(values + 0.5), 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------------------

channels_st = st.sampled_from([1, 3, 4])


@st.composite
def batches(draw: st.DrawFn, min_n: int = 0) -> np.ndarray:
    shape = (
        draw(st.integers(min_n, 3)),
        draw(st.integers(1, 9)),
        draw(st.integers(1, 9)),
        draw(channels_st),
    )
    images = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))
    variant = draw(st.sampled_from(["c", "readonly", "crop", "flip", "broadcast"]))
    if variant == "readonly":
        images.flags.writeable = False
    elif variant == "crop":  # a strided view into a larger buffer ('A' layout)
        big = np.zeros((shape[0], shape[1] + 2, shape[2] + 3, shape[3]), np.uint8)
        big[:, 1 : 1 + shape[1], 2 : 2 + shape[2]] = images
        images = big[:, 1 : 1 + shape[1], 2 : 2 + shape[2]]
    elif variant == "flip":
        images = np.ascontiguousarray(images[:, ::-1, ::-1])[:, ::-1, ::-1]
    elif variant == "broadcast" and shape[0]:
        images = np.broadcast_to(images[:1], shape)
    return images


finite_std = st.one_of(st.floats(2**-10, 10.0, width=32), st.floats(-10.0, -(2**-10), width=32))


# ------------------------------------------------------------------------------------------------------------
# normalize / scale
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(images=batches(), data=st.data(), order=st.sampled_from(["RGB", "BGR"]))
def test_normalize_float32_matches_reference(images: np.ndarray, data: st.DataObject, order: str) -> None:
    c = images.shape[3]
    mean = np.asarray(data.draw(st.lists(st.floats(-2.0, 2.0, width=32), min_size=c, max_size=c)), np.float32)
    std = np.asarray(data.draw(st.lists(finite_std, min_size=c, max_size=c)), np.float32)
    out = image.normalize_hwc_to_nchw(images, mean, std, np.float32, channel_order=order)
    swap = order == "BGR" and c >= 3
    ref = ref_normalize(images, mean, std, swap)
    assert out.dtype == np.float32 and out.shape == ref.shape and out.flags.c_contiguous
    m = 1.0 / (255.0 * std.astype(np.float64))
    a = -mean.astype(np.float64) / std
    x = (
        (images[..., [2, 1, 0] + list(range(3, c))] if swap else images)
        .transpose(0, 3, 1, 2)
        .astype(np.float64)
    )
    bound = 1e-6 * (np.abs(x * m[None, :, None, None]) + np.abs(a)[None, :, None, None]) + 1e-30
    assert np.all(np.abs(out - ref) <= bound)


@SETTINGS
@given(images=batches(), data=st.data(), order=st.sampled_from(["RGB", "BGR"]))
def test_normalize_float16_is_correctly_rounded(images: np.ndarray, data: st.DataObject, order: str) -> None:
    c = images.shape[3]
    mean = np.asarray(data.draw(st.lists(st.floats(-2.0, 2.0, width=32), min_size=c, max_size=c)), np.float32)
    std = np.asarray(data.draw(st.lists(finite_std, min_size=c, max_size=c)), np.float32)
    out = image.normalize_hwc_to_nchw(
        images, mean, std, np.float16, channel_order="BGR", model_channel_order=order
    )
    ref = ref_normalize(images, mean, std, order == "RGB" and c >= 3).astype(np.float16)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, ref)


@SETTINGS
@given(images=batches(), scale=st.floats(-1e3, 1e3, width=32), per_channel=st.booleans())
def test_scale_is_exact(images: np.ndarray, scale: float, per_channel: bool) -> None:
    c = images.shape[3]
    scales = np.float32(scale) * np.arange(1, c + 1, dtype=np.float32) if per_channel else np.float32(scale)
    out32 = image.scale_hwc_to_nchw(images, scales)
    ref32 = images.transpose(0, 3, 1, 2).astype(np.float32) * np.reshape(scales, (-1, 1, 1)).astype(
        np.float32
    )
    np.testing.assert_array_equal(out32, ref32)
    out16 = image.scale_hwc_to_nchw(images, scales, np.float16)
    ref16 = images.transpose(0, 3, 1, 2).astype(np.float64) * np.reshape(scales, (-1, 1, 1)).astype(
        np.float64
    )
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out16, ref16.astype(np.float16))


def test_normalize_edge_values_and_out_buffer() -> None:
    images = np.array([0, 255, 128, 1], np.uint8).reshape(1, 2, 2, 1)
    out = np.full((1, 1, 2, 2), np.nan, np.float32)
    result = image.normalize_hwc_to_nchw(images, 0.5, 0.5, out=out)
    assert result is out
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, 128 / 127.5 - 1, 1 / 127.5 - 1], rtol=1e-6, atol=1e-7)
    empty = image.normalize_hwc_to_nchw(np.zeros((0, 4, 5, 3), np.uint8), 0.0, 1.0)
    assert empty.shape == (0, 3, 4, 5)


def test_bgr_swap_keeps_alpha() -> None:
    rgba = np.array([10, 20, 30, 40], np.uint8).reshape(1, 1, 1, 4)
    out = image.scale_hwc_to_nchw(rgba, 1.0, channel_order="BGR", model_channel_order="RGB")
    np.testing.assert_array_equal(out.ravel(), [30, 20, 10, 40])
    gray = image.scale_hwc_to_nchw(rgba[..., :1], 1.0, channel_order="BGR")
    np.testing.assert_array_equal(gray.ravel(), [10])


def test_normalize_rejects_bad_arguments() -> None:
    images = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(TypeError):
        image.normalize_hwc_to_nchw(images.astype(np.float32), 0.5, 0.5)
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(images[0], 0.5, 0.5)
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(np.zeros((1, 2, 2, 2), np.uint8), 0.5, 0.5)
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(images, 0.5, 0.0)
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(images, [0.5, 0.5], 0.5)
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(images, 0.5, 0.5, out_dtype=np.float64)
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(images, 0.5, 0.5, channel_order="GBR")
    with pytest.raises(ValueError):
        image.normalize_hwc_to_nchw(images, 0.5, 0.5, out=np.empty((1, 3, 2, 2), np.float16))


# ------------------------------------------------------------------------------------------------------------
# resize / crop / letterbox
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(images=batches(), out_h=st.integers(1, 15), out_w=st.integers(1, 15), single=st.booleans())
def test_resize_matches_opencv_convention(images: np.ndarray, out_h: int, out_w: int, single: bool) -> None:
    ref = ref_resize(images, out_h, out_w)
    if single and images.shape[0]:
        out8 = image.resize_bilinear(images[0], out_h, out_w)[None]
        out32 = image.resize_bilinear(images[0], out_h, out_w, np.float32)[None]
        ref = ref[:1]
    else:
        out8 = image.resize_bilinear(images, out_h, out_w)
        out32 = image.resize_bilinear(images, out_h, out_w, np.float32)
    assert out8.dtype == np.uint8 and out8.shape == ref.shape
    assert np.all(np.abs(out8.astype(np.int16) - ref_round_u8(ref).astype(np.int16)) <= 1)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, ref, rtol=0, atol=1e-3)


def test_resize_identity_edges_and_rounding() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image.resize_bilinear(img, 7, 5), img)  # same size: exact copy
    # 1x2 -> 1x4: taps at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    one = np.array([[[0], [255]]], np.uint8)
    np.testing.assert_allclose(image.resize_bilinear(one, 1, 4, np.float32).ravel(), [0, 63.75, 191.25, 255])
    np.testing.assert_array_equal(image.resize_bilinear(one, 1, 4).ravel(), [0, 64, 191, 255])
    half = np.array([[[0], [1]]], np.uint8)  # 0.5 exactly rounds up
    np.testing.assert_array_equal(image.resize_bilinear(half, 1, 1).ravel(), [1])
    pixel = np.full((1, 1, 4), 200, np.uint8)
    np.testing.assert_array_equal(image.resize_bilinear(pixel, 3, 2), np.full((3, 2, 4), 200, np.uint8))


@SETTINGS
@given(
    images=batches(min_n=1),
    crop_h=st.integers(1, 9),
    crop_w=st.integers(1, 9),
)
def test_center_crop_is_a_view(images: np.ndarray, crop_h: int, crop_w: int) -> None:
    h, w = images.shape[1:3]
    if crop_h > h or crop_w > w:
        with pytest.raises(ValueError):
            image.center_crop(images, crop_h, crop_w)
        return
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    crop = image.center_crop(images, crop_h, crop_w)
    np.testing.assert_array_equal(crop, images[:, top : top + crop_h, left : left + crop_w])
    assert np.shares_memory(crop, images) or crop.size == 0
    single = image.center_crop(images[0], crop_h, crop_w)
    np.testing.assert_array_equal(single, crop[0])
    # a cropped view feeds the other kernels without a copy of its own
    np.testing.assert_array_equal(
        image.scale_hwc_to_nchw(crop, 1.0), crop.transpose(0, 3, 1, 2).astype(np.float32)
    )


@SETTINGS
@given(images=batches(min_n=1), out_h=st.integers(1, 16), out_w=st.integers(1, 16), pad=st.integers(0, 255))
def test_letterbox(images: np.ndarray, out_h: int, out_w: int, pad: int) -> None:
    n, h, w, c = images.shape
    out, scale, (top, left) = image.letterbox(images, out_h, out_w, pad)
    assert out.shape == (n, out_h, out_w, c) and out.dtype == np.uint8
    assert scale == pytest.approx(min(out_h / h, out_w / w))
    rh = min(out_h, max(1, round(h * scale)))
    rw = min(out_w, max(1, round(w * scale)))
    assert (top, left) == ((out_h - rh) // 2, (out_w - rw) // 2)
    window = out[:, top : top + rh, left : left + rw]
    np.testing.assert_array_equal(window, image.resize_bilinear(images, rh, rw))
    mask = np.ones((out_h, out_w), bool)
    mask[top : top + rh, left : left + rw] = False
    assert np.all(out[:, mask] == pad)
    single, scale1, offsets1 = image.letterbox(images[0], out_h, out_w, pad)
    np.testing.assert_array_equal(single, out[0])
    assert (scale1, offsets1) == (scale, (top, left))


def test_letterbox_example_and_per_channel_pad() -> None:
    # 2x4 into 8x8: scale 2, resized 4x8, 2 rows of padding on each side
    img = np.full((2, 4, 3), 9, np.uint8)
    out, scale, (top, left) = image.letterbox(img, 8, 8, (1, 2, 3))
    assert (scale, top, left) == (2.0, 2, 0)
    np.testing.assert_array_equal(out[2:6], np.full((4, 8, 3), 9, np.uint8))
    np.testing.assert_array_equal(out[:2], np.broadcast_to(np.array([1, 2, 3], np.uint8), (2, 8, 3)))
    np.testing.assert_array_equal(out[6:], np.broadcast_to(np.array([1, 2, 3], np.uint8), (2, 8, 3)))
    with pytest.raises(ValueError):
        image.letterbox(img, 8, 8, 256)


# ------------------------------------------------------------------------------------------------------------
# threads and warm-up
# ------------------------------------------------------------------------------------------------------------


def _workload(images: np.ndarray) -> list[np.ndarray]:
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    return [
        image.normalize_hwc_to_nchw(images, mean, std),
        image.normalize_hwc_to_nchw(images, mean, std, np.float16, channel_order="BGR"),
        image.resize_bilinear(images, 37, 53),
        image.resize_bilinear(images[:, 3:40, 5:60], 80, 20, np.float32),
        image.letterbox(images, 64, 48)[0],
    ]


def test_concurrent_calls_match_serial() -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    serial = _workload(images)
    barrier = threading.Barrier(4)

    def run(_: int) -> list[list[np.ndarray]]:
        barrier.wait()
        return [_workload(images) for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for per_thread in results:
        for outputs in per_thread:
            for got, want in zip(outputs, serial):
                np.testing.assert_array_equal(got, want)


def test_warm_leaves_nothing_to_compile(warmed: list[int]) -> None:
    """No call in this module (the property tests above included) compiled anything after warm()."""
    image.warm()
    assert [len(core.signatures) for core in image.CORES] == warmed
    rng = np.random.default_rng(2)
    for c in (1, 3, 4):
        images = rng.integers(0, 256, (2, 9, 11, c), dtype=np.uint8)
        readonly = images.copy()
        readonly.flags.writeable = False
        variants = [
            images,
            readonly,
            images[:, 1:8, 2:9],
            images[:, ::-1],
            images[..., ::-1],
            images[:1, :1, :1],
        ]
        for src in variants:
            image.normalize_hwc_to_nchw(src, 0.5, 0.2)
            image.normalize_hwc_to_nchw(src, 0.5, 0.2, np.float16, channel_order="BGR")
            image.scale_hwc_to_nchw(src, 1 / 255)
            image.scale_hwc_to_nchw(src, 1 / 255, np.float16)
            image.resize_bilinear(src, 5, 7)
            image.resize_bilinear(src[0], 5, 7, np.float32)
            image.letterbox(src, 16, 12)
            image.letterbox(src[0], 3, 30)
            image.normalize_hwc_to_nchw(image.center_crop(src, 1, 1), 0.0, 1.0)
    assert [len(core.signatures) for core in image.CORES] == warmed


# ------------------------------------------------------------------------------------------------------------
# GPU twin
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(cuda_image.available(), reason="a GPU is available")
def test_cuda_functions_raise_without_gpu() -> None:
    images = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(RuntimeError, match="GPU"):
        cuda_image.normalize_hwc_to_nchw(images, 0.5, 0.5)
    with pytest.raises(RuntimeError, match="GPU"):
        cuda_image.resize_bilinear(images[0], 3, 3)
    with pytest.raises(RuntimeError, match="GPU"):
        cuda_image.warm()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_image.available(), reason="needs a CUDA GPU usable by numba.cuda")
def test_cuda_matches_cpu() -> None:
    cuda_image.warm()
    rng = np.random.default_rng(3)
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    for shape in [(1, 1, 1, 3), (2, 7, 5, 3), (3, 224, 224, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = ref_normalize(images, mean, std, swap=True)
        got = cuda_image.normalize_hwc_to_nchw(images, mean, std, channel_order="BGR", to_host=True)
        m = 1.0 / (255.0 * std.astype(np.float64))
        bound = 1e-6 * (255 * m + np.abs(mean / std))[None, :, None, None]
        assert np.all(np.abs(got - ref) <= bound)
        got16 = cuda_image.normalize_hwc_to_nchw(
            images, mean, std, np.float16, channel_order="BGR", to_host=True
        )
        np.testing.assert_array_equal(
            got16, image.normalize_hwc_to_nchw(images, mean, std, np.float16, "BGR")
        )
        for out_h, out_w in [(1, 1), (9, 4), (300, 113)]:
            cpu = ref_resize(images, out_h, out_w)
            gpu8 = cuda_image.resize_bilinear(images, out_h, out_w, to_host=True)
            assert np.all(np.abs(gpu8.astype(np.int16) - ref_round_u8(cpu).astype(np.int16)) <= 1)
            gpu32 = cuda_image.resize_bilinear(images[0], out_h, out_w, np.float32, to_host=True)
            np.testing.assert_allclose(gpu32, cpu[0], rtol=0, atol=1e-3)
