"""Reference servers that hotwire is measured against, on the same gRPC stack (grpc.aio, same channel
options).

* ``inline``: the simplest honest single-process server. One ORT session (CPU, ``--threads`` intra-op threads,
  spinning off); every ModelInfer is parsed by protobuf as usual, inputs are ``np.frombuffer`` views over
  ``raw_input_contents``, and ``session.run`` is called directly in the handler: no executor, no batching.
  While ORT runs, the event loop waits; that is the point of the baseline.
* ``echo``: the same metadata and transport, but ModelInfer does no inference: it answers with zero-filled
  outputs of the right names, datatypes and shapes (batch size taken from the request). It is the
  transport-cost floor: no server on this stack can answer faster.

* ``inline-http``: ``inline`` over HTTP/REST (reference_http.py), the naive server for hotwire's HTTP
  frontend.

The gRPC ones serve one model (``--name``) and implement ServerLive, ServerReady, ModelReady, ServerMetadata
(no extensions: perf_analyzer acts on what is advertised), ModelMetadata, ModelConfig, ModelInfer and
ModelStreamInfer. Every other RPC of the service answers UNIMPLEMENTED.

    python -m hotwire.bench.reference_servers {inline,echo,inline-http} --model PATH.onnx --name NAME \
        [--host 127.0.0.1] [--port 0] [--threads 1]

logs ``listening on HOST:PORT`` to stderr once ready and exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc, model_config_pb2

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_MESSAGE_BYTES",
    "ModelSignature",
    "ReferenceServicer",
    "TensorSpec",
    "main",
    "make_session",
    "serve",
    "signature_from_session",
]

log = logging.getLogger("hotwire.bench.reference")

KINDS = ("inline", "echo", "inline-http")
MAX_BATCH_SIZE = 64  # advertised when every tensor's first dimension is dynamic
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # hotwire's default --max-message-bytes
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]

# ORT type string -> (protocol datatype, config DataType, numpy dtype). Numeric types only: the benchmark
# models are FP32, and BYTES would need a different raw encoding.
_TYPES: dict[str, tuple[str, model_config_pb2.DataType, np.dtype]] = {
    "tensor(bool)": ("BOOL", model_config_pb2.TYPE_BOOL, np.dtype(np.bool_)),
    "tensor(uint8)": ("UINT8", model_config_pb2.TYPE_UINT8, np.dtype(np.uint8)),
    "tensor(uint16)": ("UINT16", model_config_pb2.TYPE_UINT16, np.dtype(np.uint16)),
    "tensor(uint32)": ("UINT32", model_config_pb2.TYPE_UINT32, np.dtype(np.uint32)),
    "tensor(uint64)": ("UINT64", model_config_pb2.TYPE_UINT64, np.dtype(np.uint64)),
    "tensor(int8)": ("INT8", model_config_pb2.TYPE_INT8, np.dtype(np.int8)),
    "tensor(int16)": ("INT16", model_config_pb2.TYPE_INT16, np.dtype(np.int16)),
    "tensor(int32)": ("INT32", model_config_pb2.TYPE_INT32, np.dtype(np.int32)),
    "tensor(int64)": ("INT64", model_config_pb2.TYPE_INT64, np.dtype(np.int64)),
    "tensor(float16)": ("FP16", model_config_pb2.TYPE_FP16, np.dtype(np.float16)),
    "tensor(float)": ("FP32", model_config_pb2.TYPE_FP32, np.dtype(np.float32)),
    "tensor(double)": ("FP64", model_config_pb2.TYPE_FP64, np.dtype(np.float64)),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # protocol datatype, e.g. "FP32"
    config_type: model_config_pb2.DataType
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension when batched; -1 for variable dimensions


@dataclass(frozen=True)
class ModelSignature:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def metadata_shape(self, spec: TensorSpec) -> list[int]:
        return ([-1] if self.max_batch_size > 0 else []) + list(spec.dims)


def _dim(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else -1


def signature_from_session(name: str, session: ort.InferenceSession) -> ModelSignature:
    """Inputs/outputs from the graph; batched (max_batch_size 64) when every first dimension is dynamic."""
    args = list(session.get_inputs()) + list(session.get_outputs())
    for arg in args:
        if arg.type not in _TYPES:
            raise ValueError(f"tensor '{arg.name}' has unsupported type {arg.type}")
    batched = all(len(arg.shape) > 0 and _dim(arg.shape[0]) == -1 for arg in args)

    def spec(arg: Any) -> TensorSpec:
        datatype, config_type, dtype = _TYPES[arg.type]
        shape = [_dim(d) for d in arg.shape]
        return TensorSpec(arg.name, datatype, config_type, dtype, tuple(shape[1:] if batched else shape))

    return ModelSignature(
        name,
        MAX_BATCH_SIZE if batched else 0,
        tuple(spec(a) for a in session.get_inputs()),
        tuple(spec(a) for a in session.get_outputs()),
    )


def make_session(model_path: str, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ReferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves one model. ``session`` set: inline inference; ``session`` None: echo zeros."""

    def __init__(self, signature: ModelSignature, session: ort.InferenceSession | None, kind: str) -> None:
        self.signature = signature
        self.session = session
        self.kind = kind
        self._zeros: dict[tuple[str, int], bytes] = {}  # (output name, batch size) -> zero bytes (echo)
        self._inputs = {spec.name: spec for spec in signature.inputs}
        self._outputs = {spec.name: spec for spec in signature.outputs}

    # ------------------------------------------------------------------ health and metadata

    def _model_known(self, name: str, version: str) -> bool:
        return name == self.signature.name and version in ("", "1")

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._model_known(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=f"hotwire-reference-{self.kind}", version="0", extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        await self._require_model(request.name, request.version, context)
        sig = self.signature
        return pb.ModelMetadataResponse(
            name=sig.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype, shape=sig.metadata_shape(s)
                )
                for s in sig.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype, shape=sig.metadata_shape(s)
                )
                for s in sig.outputs
            ],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        await self._require_model(request.name, request.version, context)
        sig = self.signature
        config = model_config_pb2.ModelConfig(
            name=sig.name,
            platform="onnxruntime_onnx",
            backend="onnxruntime",
            max_batch_size=sig.max_batch_size,
            input=[
                model_config_pb2.ModelInput(name=s.name, data_type=s.config_type, dims=s.dims)
                for s in sig.inputs
            ],
            output=[
                model_config_pb2.ModelOutput(name=s.name, data_type=s.config_type, dims=s.dims)
                for s in sig.outputs
            ],
        )
        return pb.ModelConfigResponse(config=config)

    async def _require_model(self, name: str, version: str, context: Any) -> None:
        if not self._model_known(name, version):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}' version '{version}'")

    # ------------------------------------------------------------------ inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            return self._infer(request)
        except _Abort as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request))
            except _Abort as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Runs on the event loop thread, deliberately (inline: session.run blocks the loop)."""
        if not self._model_known(request.model_name, request.model_version):
            raise _Abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model '{request.model_name}' version '{request.model_version}'",
            )
        raws = list(request.raw_input_contents)  # one copy of each bytes field, not one per access
        if len(raws) != len(request.inputs):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected one raw_input_contents entry per input ({len(request.inputs)}), got {len(raws)}",
            )
        if self.signature.max_batch_size > 0 and request.inputs and request.inputs[0].shape:
            batch = int(request.inputs[0].shape[0])
        else:
            batch = 0
        wanted = [o.name for o in request.outputs] or list(self._outputs)
        for name in wanted:
            if name not in self._outputs:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output '{name}'")

        response = pb.ModelInferResponse(model_name=self.signature.name, model_version="1", id=request.id)
        if self.session is None:
            raw_outputs = [self._zero_bytes(name, batch) for name in wanted]
            shapes = [self._shape(self._outputs[name], batch) for name in wanted]
        else:
            feeds = {}
            for tensor, raw in zip(request.inputs, raws):
                spec = self._inputs.get(tensor.name)
                if spec is None:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input '{tensor.name}'")
                if tensor.datatype != spec.datatype:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input '{tensor.name}': datatype {tensor.datatype}, expected {spec.datatype}",
                    )
                shape = tuple(tensor.shape)
                count = int(np.prod(shape)) if shape else 1
                if len(raw) != count * spec.dtype.itemsize:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input '{tensor.name}': {len(raw)} bytes for shape {list(shape)}",
                    )
                feeds[tensor.name] = np.frombuffer(raw, dtype=spec.dtype).reshape(shape)
            try:
                results = self.session.run(wanted, feeds)
            except Exception as exc:  # ORT's own exception types: bad shapes and the like
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"onnxruntime: {exc}") from exc
            raw_outputs = [np.ascontiguousarray(r).tobytes() for r in results]
            shapes = [list(r.shape) for r in results]
        for name, out_shape in zip(wanted, shapes):
            response.outputs.add(name=name, datatype=self._outputs[name].datatype, shape=out_shape)
        response.raw_output_contents.extend(raw_outputs)
        return response

    def _shape(self, spec: TensorSpec, batch: int) -> list[int]:
        dims = [max(d, 1) for d in spec.dims]  # echo: a variable non-batch dimension answers as 1
        return ([batch] if self.signature.max_batch_size > 0 else []) + dims

    def _zero_bytes(self, name: str, batch: int) -> bytes:
        key = (name, batch)
        cached = self._zeros.get(key)
        if cached is None:
            spec = self._outputs[name]
            cached = bytes(int(np.prod(self._shape(spec, batch))) * spec.dtype.itemsize)
            self._zeros[key] = cached
        return cached


def _unimplemented(name: str) -> Any:
    async def handler(self: Any, request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by the reference server"
        )

    return handler


# Everything else in the service answers UNIMPLEMENTED (the generated base class would raise from a sync
# method).
for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in ReferenceServicer.__dict__:
        setattr(ReferenceServicer, _method.name, _unimplemented(_method.name))


async def serve(
    kind: str,
    model_path: str,
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = 1,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    if kind not in KINDS:
        raise ValueError(f"unknown reference server kind '{kind}'")
    # The echo server also reads the graph's signature from a session; it just never runs it.
    session = make_session(model_path, threads)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if kind == "inline-http":
        from hotwire.bench.reference_http import serve_http

        await serve_http(session, name, host, port, stop)
        return
    signature = signature_from_session(name, session)
    servicer = ReferenceServicer(signature, session if kind == "inline" else None, kind)
    server = grpc.aio.server(options=GRPC_OPTIONS)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not listen on {address}")
    await server.start()
    log.info("%s reference server for model '%s' listening on %s:%d", kind, name, host, bound)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)
    log.info("stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.reference_servers",
        description="Reference servers for hotwire's benchmarks (inline ORT, echo).",
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--model", required=True, help="path of the .onnx file")
    parser.add_argument("--name", required=True, help="model name to serve it under")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (inline)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    runner = serve(args.kind, args.model, args.name, args.host, args.port, max(1, args.threads))
    try:
        try:
            import uvloop  # same event loop as `hotwire serve`
        except ImportError:
            asyncio.run(runner)
        else:
            uvloop.run(runner)
    except OSError as exc:
        print(f"reference server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
