"""numba kernels: batch assembly and preprocessing (no gRPC, no ONNX Runtime imports)."""
