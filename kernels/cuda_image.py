"""GPU twins of the image kernels (numba.cuda): normalize/scale HWC uint8 -> NCHW, bilinear resize.

Importable anywhere: importing numba.cuda and defining kernels needs no GPU (numba.cuda compiles at the first
launch). `available()` says whether a CUDA device and libNVVM can be used; every other function raises
RuntimeError when it is False.

Same conventions as `hotwire.kernels.image` (the constants are prepared by its `HWCToNCHW`):
* normalize float32: ``float32(x) * m[d] + a[d]`` (the GPU contracts it to one FMA as the CPU kernel does);
  float16: the same correctly rounded 256-entry tables as the CPU kernel (bit-identical to it).
* resize: OpenCV INTER_LINEAR / ONNX half_pixel clamped coordinates, uint8 rounded half up; agrees with the
  CPU kernel to within 1 level (uint8) / 1e-3 (float32).

Inputs may be host NumPy arrays (copied to the device, C order) or device arrays (anything with
``__cuda_array_interface__``, C-contiguous). Results stay on the device unless ``to_host=True``.
Kernels use grid-stride loops launched with at least 128 blocks (no low-occupancy warnings for small images).
Call `warm()` at model load: numba.cuda compiles on the first launch of each signature.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from hotwire.kernels.image import HWCToNCHW, _check_size

try:  # importing numba.cuda needs no GPU and initialises no driver
    from numba import cuda, float32, int64
except Exception:  # pragma: no cover - numba built without its CUDA target
    cuda = None  # type: ignore[assignment]  # optional import: None marks numba without its CUDA target

_THREADS = 256
_MIN_BLOCKS = 128
_MAX_BLOCKS = 65535


def available() -> bool:
    """True when numba.cuda can run kernels here (driver, a device and libNVVM); never raises."""
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available()) and len(cuda.gpus) > 0
    except Exception:  # no driver, broken toolkit, ...: simply not available
        return False


def _require() -> Any:
    if not available():
        raise RuntimeError(
            "hotwire.kernels.cuda_image needs a CUDA GPU usable by numba.cuda (driver + libNVVM); none is "
            "available"
        )
    return cuda


def _define_kernels() -> dict[str, Any]:
    """Defined at import (numba.cuda compiles lazily, at the first launch); module-level functions so that
    numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) can run them too."""

    @cuda.jit
    def affine_planes_f32(src, mul, add, dst, out):  # pragma: no cover - needs a GPU
        n_img, height, width, channels = src.shape
        total = n_img * height * width
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        for i in range(start, total, step):
            w = i % width
            t = i // width
            h = t % height
            n = t // height
            for s in range(channels):
                out[n, dst[s], h, w] = float32(src[n, h, w, s]) * mul[s] + add[s]

    @cuda.jit
    def lut_planes_u16(src, lut, dst, out):  # pragma: no cover - needs a GPU
        n_img, height, width, channels = src.shape
        total = n_img * height * width
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        for i in range(start, total, step):
            w = i % width
            t = i // width
            h = t % height
            n = t // height
            for s in range(channels):
                out[n, dst[s], h, w] = lut[s, src[n, h, w, s]]

    @cuda.jit
    def resize(src, out, round_u8):  # pragma: no cover - needs a GPU
        n_img, height, width, channels = src.shape
        out_h, out_w = out.shape[1], out.shape[2]
        total = n_img * out_h * out_w
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        one = float32(1.0)
        for i in range(start, total, step):
            dx = i % out_w
            t = i // out_w
            dy = t % out_h
            n = t // out_h
            # half-pixel, clamped taps (float64 coordinates as on the CPU)
            sy = (dy + 0.5) * (height / out_h) - 0.5
            sy = 0.0 if sy < 0.0 else sy
            sy = float(height - 1) if sy > height - 1 else sy
            ya = int64(sy)
            yb = ya + 1 if ya < height - 1 else ya
            wy = float32(sy - ya)
            sx = (dx + 0.5) * (width / out_w) - 0.5
            sx = 0.0 if sx < 0.0 else sx
            sx = float(width - 1) if sx > width - 1 else sx
            xa = int64(sx)
            xb = xa + 1 if xa < width - 1 else xa
            wx = float32(sx - xa)
            for c in range(channels):
                top = float32(src[n, ya, xa, c]) * (one - wx) + float32(src[n, ya, xb, c]) * wx
                bottom = float32(src[n, yb, xa, c]) * (one - wx) + float32(src[n, yb, xb, c]) * wx
                v = top * (one - wy) + bottom * wy
                if round_u8:
                    r = int64(v + float32(0.5))
                    out[n, dy, dx, c] = 255 if r > 255 else r
                else:
                    out[n, dy, dx, c] = v

    return {"affine": affine_planes_f32, "lut": lut_planes_u16, "resize": resize}


_KERNELS: dict[str, Any] = _define_kernels() if cuda is not None else {}


def _kernels() -> dict[str, Any]:
    return _KERNELS


def _blocks(total: int) -> int:
    return min(_MAX_BLOCKS, max(_MIN_BLOCKS, math.ceil(total / _THREADS)))


def _to_device(cuda: Any, array: Any, stream: Any) -> Any:
    if hasattr(array, "__cuda_array_interface__"):
        device = cuda.as_cuda_array(array)
        if not device.is_c_contiguous():
            raise ValueError("device inputs must be C-contiguous")
        return device
    return cuda.to_device(np.ascontiguousarray(array), stream=stream)


def _check_device_images(images: Any, ndims: tuple[int, ...]) -> None:
    if np.dtype(images.dtype) != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if len(images.shape) not in ndims:
        raise ValueError(f"images must be {' or '.join(f'{d}-D' for d in ndims)}, got shape {images.shape}")


class CudaHWCToNCHW:
    """A prepared `HWCToNCHW` with its constants on the device."""

    def __init__(self, prepared: HWCToNCHW):
        cuda = _require()
        self.prepared = prepared
        self._mul = cuda.to_device(np.array(prepared._mul))
        self._add = cuda.to_device(np.array(prepared._add))
        self._dst = cuda.to_device(np.array(prepared._dst))
        self._lut = None if prepared._lut is None else cuda.to_device(np.array(prepared._lut))

    def __call__(self, images: Any, out: Any = None, stream: Any = 0, to_host: bool = False) -> Any:
        cuda = _require()
        _check_device_images(images, (4,))
        n_img, height, width, channels = images.shape
        if channels != self.prepared.channels:
            raise ValueError(f"images have {channels} channels, expected {self.prepared.channels}")
        src = _to_device(cuda, images, stream)
        shape = (n_img, channels, height, width)
        dtype = self.prepared.out_dtype
        if out is None:
            out = cuda.device_array(shape, dtype=dtype, stream=stream)
        elif tuple(out.shape) != shape or np.dtype(out.dtype) != dtype:
            raise ValueError(f"out must be a {dtype} device array of shape {shape}")
        total = n_img * height * width
        if total:
            kernels = _kernels()
            launch = (_blocks(total), _THREADS, stream)
            if self._lut is None:
                kernels["affine"][launch](src, self._mul, self._add, self._dst, out)
            else:
                kernels["lut"][launch](src, self._lut, self._dst, out.view(np.uint16))
        return out.copy_to_host(stream=stream) if to_host else out


@functools.lru_cache(maxsize=64)
def _cached(kind: str, *args: Any) -> CudaHWCToNCHW:
    if kind == "normalize":
        return CudaHWCToNCHW(HWCToNCHW.normalize(*args))
    return CudaHWCToNCHW(HWCToNCHW.scale(*args))


def _key(value: object) -> object:
    array = np.asarray(value, dtype=np.float32)
    return tuple(array.ravel().tolist()) if array.ndim else float(array)


def normalize_hwc_to_nchw(
    images: Any,
    mean: object,
    std: object,
    out_dtype: DTypeLike = np.float32,
    channel_order: str = "RGB",
    model_channel_order: str = "RGB",
    out: Any = None,
    stream: Any = 0,
    to_host: bool = False,
) -> Any:
    """GPU `hotwire.kernels.image.normalize_hwc_to_nchw`: uint8 [N, H, W, C] -> device [N, C, H, W]."""
    _require()
    _check_device_images(images, (4,))
    prepared = _cached(
        "normalize",
        _key(mean),
        _key(std),
        images.shape[3],
        np.dtype(out_dtype).str,
        channel_order,
        model_channel_order,
    )
    return prepared(images, out, stream, to_host)


def scale_hwc_to_nchw(
    images: Any,
    scale: object = 1.0 / 255.0,
    out_dtype: DTypeLike = np.float32,
    channel_order: str = "RGB",
    model_channel_order: str = "RGB",
    out: Any = None,
    stream: Any = 0,
    to_host: bool = False,
) -> Any:
    """GPU `hotwire.kernels.image.scale_hwc_to_nchw`: x * scale, uint8 [N, H, W, C] -> device [N, C, H, W]."""
    _require()
    _check_device_images(images, (4,))
    prepared = _cached(
        "scale", _key(scale), images.shape[3], np.dtype(out_dtype).str, channel_order, model_channel_order
    )
    return prepared(images, out, stream, to_host)


def resize_bilinear(
    image: Any,
    out_h: int,
    out_w: int,
    out_dtype: DTypeLike = np.uint8,
    stream: Any = 0,
    to_host: bool = False,
) -> Any:
    """GPU `hotwire.kernels.image.resize_bilinear`: uint8 [H, W, C] or [N, H, W, C] -> uint8 or float32."""
    cuda = _require()
    _check_device_images(image, (3, 4))
    out_h, out_w = _check_size("out_h", out_h), _check_size("out_w", out_w)
    dtype = np.dtype(out_dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise ValueError(f"out_dtype must be uint8 or float32, got {dtype}")
    src = _to_device(cuda, image, stream)
    batched = len(src.shape) == 4
    if not batched:
        src = src.reshape((1,) + tuple(src.shape))
    n_img, height, width, channels = src.shape
    if height == 0 or width == 0:
        raise ValueError(f"cannot resize an empty image of shape {tuple(image.shape)}")
    out = cuda.device_array((n_img, out_h, out_w, channels), dtype=dtype, stream=stream)
    total = n_img * out_h * out_w
    if total:
        _kernels()["resize"][_blocks(total), _THREADS, stream](src, out, dtype == np.uint8)
    if not batched:
        out = out.reshape((out_h, out_w, channels))
    return out.copy_to_host(stream=stream) if to_host else out


def warm() -> None:
    """Compile every kernel signature on the device (numba.cuda compiles at first launch); call at model load.

    Raises RuntimeError without a usable GPU.
    """
    cuda = _require()
    image = np.zeros((1, 2, 3, 3), np.uint8)
    for out_dtype in (np.float32, np.float16):
        normalize_hwc_to_nchw(image, 0.5, 0.25, out_dtype)
    for resized_dtype in (np.uint8, np.float32):
        resize_bilinear(image, 3, 2, resized_dtype)
    cuda.synchronize()
