"""hotwire's own closed-loop load generator, for when perf_analyzer can't run.

``concurrency`` coroutines share one grpc.aio channel; each sends ModelInfer back to back
(the next call leaves when the previous answer arrives). The request is serialized once and the same bytes are
sent every time through a raw ``unary_unary`` call (no serializer, no response parsing), so the client spends
as little CPU as possible on a machine it shares with the server. Only calls that both start and finish inside
the measured window count; the warm-up before it is discarded. Everything is bounded by time: the generator
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from hotwire.proto import grpc_service_pb2 as pb

__all__ = ["LoadResult", "build_request", "main", "run_load", "run_load_async"]

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CALL_TIMEOUT_S = 30.0  # per call; a call that takes longer counts as an error
_ERROR_BACKOFF_S = 0.001  # after a failed call, so a dead server doesn't turn the loop into a busy spin

# (numpy kind, item size) -> protocol datatype; byte order is normalised to little-endian on the wire.
_DATATYPES: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}


@dataclass(frozen=True)
class LoadResult:
    throughput: float  # successful inferences (requests) per second in the measured window
    p50_us: float
    p90_us: float
    p99_us: float
    errors: int  # failed calls over the whole run, warm-up included
    count: int  # successful calls in the measured window


def build_request(model: str, inputs: dict[str, np.ndarray], version: str = "") -> bytes:
    """A serialized ModelInferRequest with every input in raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype = _DATATYPES.get((array.dtype.kind, array.dtype.itemsize))
        if datatype is None:
            raise ValueError(f"input '{name}': unsupported dtype {array.dtype}")
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        request.raw_input_contents.append(np.ascontiguousarray(array, dtype=little).tobytes())
    return request.SerializeToString()


async def run_load_async(
    url: str, model: str, inputs: dict[str, np.ndarray], concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if duration_s <= 0 or warmup_s < 0:
        raise ValueError("duration_s must be > 0 and warmup_s >= 0")
    payload = build_request(model, inputs)
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    latencies: list[float] = []  # seconds, successes inside the window
    errors = 0
    clock = time.perf_counter

    async with grpc.aio.insecure_channel(url, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=_CALL_TIMEOUT_S)
        infer = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        start = clock()
        window_start = start + warmup_s
        window_end = window_start + duration_s

        async def worker() -> None:
            nonlocal errors
            while True:
                sent = clock()
                if sent >= window_end:
                    return
                try:
                    await infer(payload, timeout=_CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    errors += 1
                    await asyncio.sleep(_ERROR_BACKOFF_S)
                    continue
                done = clock()
                if sent >= window_start and done <= window_end:
                    latencies.append(done - sent)

        # Calls still in flight at the end of the window finish within their own timeout; the outer bound is
        # a backstop.
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + _CALL_TIMEOUT_S + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if latencies:
        p50, p90, p99 = (float(v) * 1e6 for v in np.percentile(np.asarray(latencies), [50, 90, 99]))
    else:
        p50 = p90 = p99 = math.nan
    return LoadResult(len(latencies) / duration_s, p50, p90, p99, errors, len(latencies))


def run_load(
    url: str, model: str, inputs: dict[str, np.ndarray], concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    """Closed-loop load on ``url`` (host:port) for warmup_s + duration_s; blocks until done
    (not in a loop)."""
    return asyncio.run(run_load_async(url, model, inputs, concurrency, duration_s, warmup_s))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.loadgen",
        description="Closed-loop ModelInfer load with zero-filled FP32 inputs.",
    )
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME:D0,D1,...",
        help="an FP32 input and its shape including the batch dimension, e.g. input:1,16",
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    inputs = {}
    for item in args.input:
        name, _, dims = item.rpartition(":")
        inputs[name] = np.zeros([int(d) for d in dims.split(",")], dtype=np.float32)
    result = run_load(args.url, args.model, inputs, args.concurrency, args.duration_s, args.warmup_s)
    print(result)
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
