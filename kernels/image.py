"""Image preprocessing kernels (numba, serial, nogil): HWC uint8 -> normalized NCHW, bilinear resize, crop,
letterbox.

Conventions
-----------
* Images are uint8, channels-last: one image [H, W, C], a batch [N, H, W, C]; C is 1, 3 or 4.
* **Normalize** (`normalize_hwc_to_nchw`) computes, per output plane d (the model's channel order)::

      out[n, d, h, w] = fma(float32(x), m[d], a[d])
      m = fl32(1 / (255 * std[d]))   a = fl32(-mean[d] / std[d])

  which is ``(x / 255 - mean) / std`` with one float32 rounding of m, of a and of the result: the error
  against the exact value is at most ``2**-23 * (|x * m| + |a|)`` (about 1 ulp of the larger term). m and a
  are computed in float64 from the float32 mean/std. `mean` and `std` are given in the *model's* channel order
  (as published, e.g. ImageNet's RGB mean). `channel_order` is the order of the source images,
  `model_channel_order` the model's; when they differ channels 0 and 2 are swapped
  (RGB<->BGR; with C=4 the alpha channel stays at index 3).
* **Scale** (`scale_hwc_to_nchw`): ``out = float32(x) * fl32(scale)`` (one rounding: NumPy's float32 product).
* float16 output: a per-channel table of the 256 possible values, each computed in float64 and rounded once to
  float16 (so float16 output is correctly rounded from the exact value, for both normalize and scale; beyond
  float16's range it is +-inf).
* **Resize** (`resize_bilinear`) follows OpenCV's ``INTER_LINEAR`` coordinate convention (half-pixel centres,
  clamped at the borders, no antialiasing when shrinking), which is also ONNX ``Resize`` mode=linear,
  coordinate_transformation_mode=half_pixel as implemented by ONNX Runtime::

      src = clamp((dst + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)     (float64)
      i0 = floor(src)   i1 = min(i0 + 1, in_size - 1)   lam = float32(src - i0)

  and the value is ``(1-ly)*((1-lx)*p00 + lx*p01) + ly*((1-lx)*p10 + lx*p11)`` in float32. uint8 output is
  rounded **half up** (``floor(v + 0.5)``, v >= 0) and saturated to 255. OpenCV itself uses 11-bit fixed-point
  weights, so its uint8 results can differ from these by one level.
* `center_crop` returns a view; `letterbox` keeps the aspect ratio (same bilinear kernel, then constant
  padding).

Every kernel is serial and ``nogil``: executor threads call them concurrently (no ``parallel=True`` anywhere:
numba's worker threads would compete with those threads and the event loop for the same cores). The wrappers
canonicalise their arguments (read-only views, C or 'A' layout) so the signatures that `warm()` compiles are
the only ones a request can hit.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit
from numpy.typing import DTypeLike

CHANNEL_ORDERS = ("RGB", "BGR")
_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


# ------------------------------------------------------------------------------------------------------------
# jitted cores
# ------------------------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, fastmath={"contract"})
def _affine_planes_f32(rows, channels, mul, add, dst, out):  # pragma: no cover - compiled
    """rows: uint8 [N, H, W*C] (each row contiguous); out: float32 [N, C, H, W]; source channel s -> plane
    dst[s].

    One fused pass, written plane by plane per image row: the row (<= a few KB) stays in L1 while each plane
    row is written contiguously, so the loop vectorises (interleaved uint8 loads, 8-wide FMA, contiguous
    stores).
    """
    n_img, height = rows.shape[0], rows.shape[1]
    width = out.shape[3]
    for n in range(n_img):
        for h in range(height):
            row = rows[n, h]
            for s in range(channels):
                plane = out[n, dst[s], h]
                m = mul[s]
                a = add[s]
                if channels == 3:
                    for w in range(width):
                        plane[w] = np.float32(row[3 * w + s]) * m + a
                elif channels == 4:
                    for w in range(width):
                        plane[w] = np.float32(row[4 * w + s]) * m + a
                else:
                    for w in range(width):
                        plane[w] = np.float32(row[channels * w + s]) * m + a


@njit(nogil=True, cache=True)
def _lut_planes_u16(rows, channels, lut, dst, out):  # pragma: no cover - compiled
    """Table variant (float16 output, as uint16 bits): out[n, dst[s], h, w] = lut[s, x]; lut is uint16
    [C, 256]."""
    n_img, height = rows.shape[0], rows.shape[1]
    width = out.shape[3]
    for n in range(n_img):
        for h in range(height):
            row = rows[n, h]
            for s in range(channels):
                plane = out[n, dst[s], h]
                table = lut[s]
                for w in range(width):
                    plane[w] = table[row[channels * w + s]]


@njit(nogil=True, cache=True)
def _axis_coeffs(in_size, out_size):  # pragma: no cover - compiled
    """Half-pixel, clamped source taps for one axis (see module docstring)."""
    i0 = np.empty(out_size, np.int64)
    i1 = np.empty(out_size, np.int64)
    lam = np.empty(out_size, np.float32)
    scale = in_size / out_size
    hi = in_size - 1
    for d in range(out_size):
        src = (d + 0.5) * scale - 0.5
        if src < 0.0:
            src = 0.0
        if src > hi:
            src = float(hi)
        x0 = int(src)  # src >= 0: truncation is floor
        i0[d] = x0
        i1[d] = x0 + 1 if x0 < hi else hi
        lam[d] = np.float32(src - x0)
    return i0, i1, lam


@njit(nogil=True, cache=True)
def _blend_row(ra, rb, wy, orow, left, x0, x1, lx, channels, round_u8):  # pragma: no cover - compiled
    """One output row: orow[left + dx, c] from source rows ra (weight 1-wy) and rb (weight wy).

    Called with a literal `channels` for C=3 so LLVM inlines and unrolls it (about 1.4x faster than a runtime
    C).
    """
    one = np.float32(1.0)
    half = np.float32(0.5)
    wy0 = one - wy
    for dx in range(x0.shape[0]):
        xa = x0[dx]
        xb = x1[dx]
        wx = lx[dx]
        wx0 = one - wx
        pa = ra[xa]
        pb = ra[xb]
        qa = rb[xa]
        qb = rb[xb]
        o = orow[left + dx]
        for c in range(channels):
            t = np.float32(pa[c]) * wx0 + np.float32(pb[c]) * wx
            b = np.float32(qa[c]) * wx0 + np.float32(qb[c]) * wx
            if round_u8:
                v = np.int32(t * wy0 + b * wy + half)  # >= 0: truncation is floor, i.e. round half up
                o[c] = 255 if v > 255 else v
            else:
                o[c] = t * wy0 + b * wy


@njit(nogil=True, cache=True)
def _resize_u8(src, out, top, left, rh, rw):  # pragma: no cover - compiled
    """src uint8 [N, H, W, C] (any layout); resized to rh x rw into out[:, top:top+rh, left:left+rw]
    (uint8)."""
    n_img, height, width, channels = src.shape
    y0, y1, ly = _axis_coeffs(height, rh)
    x0, x1, lx = _axis_coeffs(width, rw)
    for n in range(n_img):
        for dy in range(rh):
            ra = src[n, y0[dy]]
            rb = src[n, y1[dy]]
            if channels == 3:
                _blend_row(ra, rb, ly[dy], out[n, top + dy], left, x0, x1, lx, 3, True)
            else:
                _blend_row(ra, rb, ly[dy], out[n, top + dy], left, x0, x1, lx, channels, True)


@njit(nogil=True, cache=True)
def _resize_f32(src, out):  # pragma: no cover - compiled
    """src uint8 [N, H, W, C] (any layout) -> out float32 [N, OH, OW, C] (no rounding)."""
    n_img, height, width, channels = src.shape
    rh, rw = out.shape[1], out.shape[2]
    y0, y1, ly = _axis_coeffs(height, rh)
    x0, x1, lx = _axis_coeffs(width, rw)
    for n in range(n_img):
        for dy in range(rh):
            ra = src[n, y0[dy]]
            rb = src[n, y1[dy]]
            if channels == 3:
                _blend_row(ra, rb, ly[dy], out[n, dy], 0, x0, x1, lx, 3, False)
            else:
                _blend_row(ra, rb, ly[dy], out[n, dy], 0, x0, x1, lx, channels, False)


@njit(nogil=True, cache=True)
def _pad_border_u8(out, top, left, rh, rw, pad):  # pragma: no cover - compiled
    """Fill everything of out [N, OH, OW, C] outside the [top:top+rh, left:left+rw] window with pad[c]."""
    n_img, out_h, out_w, channels = out.shape
    for n in range(n_img):
        for y in range(out_h):
            inside = top <= y < top + rh
            row = out[n, y]
            for x in range(out_w):
                if inside and left <= x < left + rw:
                    continue
                for c in range(channels):
                    row[x, c] = pad[c]


# ------------------------------------------------------------------------------------------------------------
# argument canonicalisation
# ------------------------------------------------------------------------------------------------------------


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view: every input reaches the kernels typed read-only, whatever the caller passed."""
    view = array.view()
    view.flags.writeable = False
    return view


def _layout_ok(array: np.ndarray) -> np.ndarray:
    """Kernels are compiled for 'C' and 'A' layouts; an F-only-contiguous array (numba 'F') is copied to C."""
    if not array.flags.c_contiguous and array.flags.f_contiguous:
        array = np.ascontiguousarray(array)
    return _readonly(array)


def _check_images(images: np.ndarray, ndims: tuple[int, ...]) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"images must be {want} (..., H, W, C), got shape {images.shape}")
    return images


def _check_order(name: str, order: str) -> str:
    upper = order.upper()
    if upper not in CHANNEL_ORDERS:
        raise ValueError(f"{name} must be one of {CHANNEL_ORDERS}, got {order!r}")
    return upper


def _per_channel(name: str, value: object, channels: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 0:
        array = np.full(channels, array, np.float32)
    if array.shape != (channels,):
        raise ValueError(f"{name} must be a scalar or have shape ({channels},), got {array.shape}")
    return array


# ------------------------------------------------------------------------------------------------------------
# normalize / scale
# ------------------------------------------------------------------------------------------------------------


class HWCToNCHW:
    """A prepared uint8 [N, H, W, C] -> [N, C, H, W] affine conversion (build once at model load, call per
    request).

    Use `HWCToNCHW.normalize(...)` / `HWCToNCHW.scale(...)`; see the module docstring for the exact formulas.
    """

    def __init__(
        self, mul: np.ndarray, add: np.ndarray, lut: np.ndarray | None, swap: bool, out_dtype: np.dtype
    ):
        self.channels = int(mul.shape[0])
        self.out_dtype = out_dtype
        self.swap = swap
        # source channel s is written to plane dst[s] (mul/add/lut are indexed by source channel)
        dst = np.arange(self.channels, dtype=np.int64)
        if swap and self.channels >= 3:
            dst[[0, 2]] = dst[[2, 0]]
        self._dst = _readonly(dst)
        self._mul = _readonly(np.ascontiguousarray(mul[dst], dtype=np.float32))
        self._add = _readonly(np.ascontiguousarray(add[dst], dtype=np.float32))
        self._lut: np.ndarray | None = None
        if out_dtype == np.float16:
            if lut is None:
                raise TypeError("float16 output needs its 256-entry lut")
            self._lut = _readonly(np.ascontiguousarray(lut[dst]).view(np.uint16))

    @classmethod
    def normalize(
        cls,
        mean: object,
        std: object,
        channels: int,
        out_dtype: DTypeLike = np.float32,
        channel_order: str = "RGB",
        model_channel_order: str = "RGB",
    ) -> HWCToNCHW:
        """(x/255 - mean)/std; mean/std in the model's channel order, std finite and non-zero."""
        channels, dtype, swap = _common_args(channels, out_dtype, channel_order, model_channel_order)
        mean32 = _per_channel("mean", mean, channels)
        std32 = _per_channel("std", std, channels)
        if not (np.all(np.isfinite(mean32)) and np.all(np.isfinite(std32)) and np.all(std32 != 0)):
            raise ValueError("mean must be finite and std finite and non-zero")
        m64, s64 = mean32.astype(np.float64), std32.astype(np.float64)
        mul = (1.0 / (255.0 * s64)).astype(np.float32)
        add = (-m64 / s64).astype(np.float32)
        lut = None
        if dtype == np.float16:
            with np.errstate(over="ignore"):  # beyond float16's range -> +-inf, as a float16 cast does
                lut = ((np.arange(256)[None, :] / 255.0 - m64[:, None]) / s64[:, None]).astype(np.float16)
        return cls(mul, add, lut, swap, dtype)

    @classmethod
    def scale(
        cls,
        scale: object,
        channels: int,
        out_dtype: DTypeLike = np.float32,
        channel_order: str = "RGB",
        model_channel_order: str = "RGB",
    ) -> HWCToNCHW:
        """x * scale (scalar or per model channel), scale finite."""
        channels, dtype, swap = _common_args(channels, out_dtype, channel_order, model_channel_order)
        scale32 = _per_channel("scale", scale, channels)
        if not np.all(np.isfinite(scale32)):
            raise ValueError("scale must be finite")
        lut = None
        if dtype == np.float16:
            with np.errstate(over="ignore"):  # beyond float16's range -> +-inf, as a float16 cast does
                lut = (np.arange(256)[None, :] * scale32.astype(np.float64)[:, None]).astype(np.float16)
        return cls(scale32, np.zeros(channels, np.float32), lut, swap, dtype)

    def __call__(self, images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [N, H, W, C] (any strides) -> out_dtype [N, C, H, W]; `out` (C-contiguous, that shape) is
        reused."""
        images = _check_images(images, (4,))
        n_img, height, width, channels = images.shape
        if channels != self.channels:
            raise ValueError(
                f"images have {channels} channels, the conversion was prepared for {self.channels}"
            )
        shape = (n_img, channels, height, width)
        if out is None:
            out = np.empty(shape, self.out_dtype)
        elif not (
            out.shape == shape
            and out.dtype == self.out_dtype
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            raise ValueError(f"out must be a writable C-contiguous {self.out_dtype} array of shape {shape}")
        if out.size == 0:
            return out
        rows = _layout_ok(images.reshape(n_img, height, width * channels))  # a view unless (W, C) can't merge
        if self._lut is None:
            _affine_planes_f32(rows, channels, self._mul, self._add, self._dst, out)
        else:
            _lut_planes_u16(rows, channels, self._lut, self._dst, out.view(np.uint16))
        return out


def _common_args(
    channels: int, out_dtype: DTypeLike, channel_order: str, model_channel_order: str
) -> tuple[int, np.dtype, bool]:
    channels = int(channels)
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, got {channels}")
    dtype = np.dtype(out_dtype)
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be float32 or float16, got {dtype}")
    swap = _check_order("channel_order", channel_order) != _check_order(
        "model_channel_order", model_channel_order
    )
    return channels, dtype, swap and channels >= 3


def _key(value: object) -> object:
    array = np.asarray(value, dtype=np.float32)
    return tuple(array.ravel().tolist()) if array.ndim else float(array)


@functools.lru_cache(maxsize=64)
def _cached_normalizer(
    mean: object, std: object, channels: int, out_dtype: str, channel_order: str, model_channel_order: str
) -> HWCToNCHW:
    return HWCToNCHW.normalize(mean, std, channels, out_dtype, channel_order, model_channel_order)


@functools.lru_cache(maxsize=64)
def _cached_scaler(
    scale: object, channels: int, out_dtype: str, channel_order: str, model_channel_order: str
) -> HWCToNCHW:
    return HWCToNCHW.scale(scale, channels, out_dtype, channel_order, model_channel_order)


def normalize_hwc_to_nchw(
    images: np.ndarray,
    mean: object,
    std: object,
    out_dtype: DTypeLike = np.float32,
    channel_order: str = "RGB",
    model_channel_order: str = "RGB",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 [N, H, W, C] -> [N, C, H, W] of ``(x/255 - mean)/std`` (float32 or float16).

    mean/std: scalars or [C] in the model's channel order. channel_order: the images' order; swapped when it
    differs from model_channel_order. The prepared constants are cached per argument set
    (or build an `HWCToNCHW` once).
    """
    images = _check_images(images, (4,))
    prepared = _cached_normalizer(
        _key(mean), _key(std), images.shape[3], np.dtype(out_dtype).str, channel_order, model_channel_order
    )
    return prepared(images, out)


def scale_hwc_to_nchw(
    images: np.ndarray,
    scale: object = 1.0 / 255.0,
    out_dtype: DTypeLike = np.float32,
    channel_order: str = "RGB",
    model_channel_order: str = "RGB",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 [N, H, W, C] -> [N, C, H, W] of ``x * scale`` (scale: scalar or [C] in the model's channel
    order)."""
    images = _check_images(images, (4,))
    prepared = _cached_scaler(
        _key(scale), images.shape[3], np.dtype(out_dtype).str, channel_order, model_channel_order
    )
    return prepared(images, out)


# ------------------------------------------------------------------------------------------------------------
# resize / crop / letterbox
# ------------------------------------------------------------------------------------------------------------


def _check_size(name: str, value: int) -> int:
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int, out_dtype: DTypeLike = np.uint8) -> np.ndarray:
    """uint8 [H, W, C] or [N, H, W, C] -> [out_h, out_w, C] (or batched) of uint8 (rounded half up) or
    float32.

    OpenCV INTER_LINEAR / ONNX half_pixel coordinates; see the module docstring.
    """
    image = _check_images(image, (3, 4))
    out_h, out_w = _check_size("out_h", out_h), _check_size("out_w", out_w)
    batched = image.ndim == 4
    src = image if batched else image[None]
    if src.shape[1] == 0 or src.shape[2] == 0:
        raise ValueError(f"cannot resize an empty image of shape {image.shape}")
    dtype = np.dtype(out_dtype)
    out = np.empty((src.shape[0], out_h, out_w, src.shape[3]), dtype)
    if out.size:
        if dtype == np.uint8:
            _resize_u8(_layout_ok(src), out, 0, 0, out_h, out_w)
        elif dtype == np.float32:
            _resize_f32(_layout_ok(src), out)
        else:
            raise ValueError(f"out_dtype must be uint8 or float32, got {dtype}")
    return out if batched else out[0]


def center_crop(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """A view of the centred crop_h x crop_w window of [H, W, C] or [N, H, W, C]
    (offset (H-crop_h)//2, floor)."""
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be [H, W, C] or [N, H, W, C], got shape {image.shape}")
    crop_h, crop_w = _check_size("crop_h", crop_h), _check_size("crop_w", crop_w)
    height, width = image.shape[-3], image.shape[-2]
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the image {height}x{width}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[..., top : top + crop_h, left : left + crop_w, :]


def letterbox_geometry(height: int, width: int, out_h: int, out_w: int) -> tuple[float, int, int, int, int]:
    """(scale, resized_h, resized_w, pad_top, pad_left) for `letterbox`.

    scale = min(out_h/H, out_w/W); resized = round(size*scale) (Python round: half to even), clamped to
    [1, out]; the pad is split with the extra pixel at the bottom/right: pad_top = (out_h - resized_h) // 2.
    """
    scale = min(out_h / height, out_w / width)
    rh = min(out_h, max(1, int(round(height * scale))))
    rw = min(out_w, max(1, int(round(width * scale))))
    return scale, rh, rw, (out_h - rh) // 2, (out_w - rw) // 2


def letterbox(
    image: np.ndarray, out_h: int, out_w: int, pad_value: object = 114
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio, then pad to out_h x out_w: (uint8 [out_h, out_w, C], scale, (top,
    left)).

    Accepts [N, H, W, C] too (same geometry for every image). pad_value: scalar or per channel (0..255).
    Map a point back with ``x_src = (x_out - left) / scale`` (the resized size is rounded, see
    letterbox_geometry).
    """
    image = _check_images(image, (3, 4))
    out_h, out_w = _check_size("out_h", out_h), _check_size("out_w", out_w)
    batched = image.ndim == 4
    src = image if batched else image[None]
    n_img, height, width, channels = src.shape
    if height == 0 or width == 0:
        raise ValueError(f"cannot letterbox an empty image of shape {image.shape}")
    pad = np.asarray(pad_value)
    if pad.ndim == 0:
        pad = np.full(channels, pad)
    if pad.shape != (channels,) or np.any(pad < 0) or np.any(pad > 255):
        raise ValueError(f"pad_value must be a scalar or ({channels},) values in 0..255")
    scale, rh, rw, top, left = letterbox_geometry(height, width, out_h, out_w)
    out = np.empty((n_img, out_h, out_w, channels), np.uint8)
    if n_img:
        _resize_u8(_layout_ok(src), out, top, left, rh, rw)
        _pad_border_u8(out, top, left, rh, rw, _readonly(pad.astype(np.uint8)))
    return (out if batched else out[0]), scale, (top, left)


# ------------------------------------------------------------------------------------------------------------
# warm-up
# ------------------------------------------------------------------------------------------------------------

CORES = (_affine_planes_f32, _lut_planes_u16, _resize_u8, _resize_f32, _pad_border_u8)


def warm() -> None:
    """Compile (or load from numba's cache) every signature the wrappers can reach; call at model load.

    Inputs always arrive read-only in 'C' or 'A' layout (see `_layout_ok`), outputs are fresh C arrays.
    """
    for channels in (3,):  # channels is a runtime argument: one compile serves 1, 3 and 4
        full = np.zeros((1, 2, 4, channels), np.uint8)
        for src in (full, full[:, :, :2]):  # C and A layout
            HWCToNCHW.normalize(0.5, 0.25, channels, np.float32)(src)
            HWCToNCHW.normalize(0.5, 0.25, channels, np.float16)(src)
            resize_bilinear(src, 3, 3, np.uint8)
            resize_bilinear(src, 3, 3, np.float32)
            letterbox(src, 3, 4)
