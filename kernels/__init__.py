"""numba kernels: batch assembly and preprocessing (no gRPC, no ONNX Runtime imports)."""

from hotwire.kernels import cache as _cache

# before any kernel module is decorated: a warmed read-only cache is used, and no writable directory is needed
_cache.install()
