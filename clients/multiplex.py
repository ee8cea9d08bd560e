"""Unary-looking inference calls over one long-lived ModelStreamInfer stream, matched by request id.

A server spends less per message on an open stream than per unary call (no call setup, no per-call headers and
trailers): ARCHITECTURE.md §Clients has the measurement. Each call keeps its own deadline (waited for here,
client side, and sent as the request's `timeout` parameter) and its own error (the server's in-band error for
its id). When the stream breaks (the server restarted, the connection dropped, or the server has no
ModelStreamInfer), every call waiting on it is answered `RESEND`: the client sends it again as a unary call,
which gRPC's retry policy covers, and the next call opens a fresh stream. A server that answers the stream
UNIMPLEMENTED is not asked again: its calls stay unary.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from hotwire.clients.errors import InferenceServerError
from hotwire.clients.tensors import InferResult, ResponseDecoder

__all__ = ["RESEND", "AsyncMultiplexer", "SyncMultiplexer"]

Answer = InferResult | InferenceServerError


class _Resend:
    """The stream broke before this call's answer came: send the call again, unary."""


RESEND = _Resend()


def _unimplemented(error: BaseException | None) -> bool:
    return (
        isinstance(error, grpc.RpcError)
        and getattr(error, "code", lambda: None)() == grpc.StatusCode.UNIMPLEMENTED
    )


class _Waiter:
    """One call's answer slot: a lock held until the answer is in (the cheapest one-shot event in CPython)."""

    __slots__ = ("answer", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.answer: Answer | _Resend = RESEND

    def set(self, answer: Answer | _Resend) -> None:
        self.answer = answer
        self.lock.release()


class _SyncStream:
    def __init__(self, open_stream: Callable[[Iterator[bytes]], Iterator[bytes]], decoder: ResponseDecoder):
        self._decoder = decoder
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self.broken = False
        self.error: BaseException | None = None
        self._call = open_stream(iter(self._outbox.get, None))
        self._reader = threading.Thread(target=self._read, name="hotwire-client-stream", daemon=True)
        self._reader.start()

    def send(self, request_id: str, data: bytes) -> _Waiter | None:
        """Queue one request; None when the stream is broken or the id is already in flight on it."""
        waiter = _Waiter()
        with self._lock:
            if self.broken or request_id in self._pending:
                return None
            self._pending[request_id] = waiter
        self._outbox.put(data)
        return waiter

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _read(self) -> None:
        try:
            for message in self._call:
                request_id, answer = self._decoder.decode_stream(message)
                with self._lock:
                    waiter = self._pending.pop(request_id, None)
                if waiter is not None:
                    waiter.set(answer)
        except grpc.RpcError as exc:
            self.error = exc
        except InferenceServerError as exc:  # an unreadable message: its call can't be told, so all resend
            self.error = exc
        finally:
            with self._lock:
                self.broken = True
                waiting = list(self._pending.values())
                self._pending.clear()
            for waiter in waiting:
                waiter.set(RESEND)

    def close(self) -> None:
        self._outbox.put(None)  # ends the request iterator: the server ends the stream, the reader returns
        self._reader.join(timeout=1.0)
        if self._reader.is_alive():
            self._call.cancel()  # type: ignore[attr-defined]  # grpc's call objects are also iterators


class SyncMultiplexer:
    """One channel's stream for the sync client, opened on first use and reopened after it breaks."""

    def __init__(self, open_stream: Callable[[Iterator[bytes]], Iterator[bytes]], decoder: ResponseDecoder):
        self._open = open_stream
        self._decoder = decoder
        self._lock = threading.Lock()
        self._stream: _SyncStream | None = None
        self.supported = True  # False once the server answered the stream UNIMPLEMENTED

    def call(self, request_id: str, data: bytes, timeout: float) -> Answer | _Resend:
        """The call's answer (a result or the server's error for it), or RESEND; raises TimeoutError when
        `timeout` passes first."""
        with self._lock:
            stream = self._stream
            if stream is None or stream.broken:
                if stream is not None and _unimplemented(stream.error):
                    self.supported = False
                    return RESEND
                stream = self._stream = _SyncStream(self._open, self._decoder)
        waiter = stream.send(request_id, data)
        if waiter is None:
            return RESEND
        if not waiter.lock.acquire(timeout=timeout):
            stream.forget(request_id)
            raise TimeoutError
        return waiter.answer

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


class _AsyncStream:
    def __init__(self, open_stream: Callable[[AsyncIterator[bytes]], Any], decoder: ResponseDecoder):
        self._decoder = decoder
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[Answer | _Resend]] = {}
        self.broken = False
        self.error: BaseException | None = None
        self._call = open_stream(self._requests())
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _requests(self) -> AsyncIterator[bytes]:
        while (data := await self._outbox.get()) is not None:
            yield data

    def send(self, request_id: str, data: bytes) -> asyncio.Future[Answer | _Resend] | None:
        if self.broken or request_id in self._pending:
            return None
        future: asyncio.Future[Answer | _Resend] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._outbox.put_nowait(data)
        return future

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def _read(self) -> None:
        try:
            async for message in self._call:
                request_id, answer = self._decoder.decode_stream(message)
                future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except grpc.RpcError as exc:
            self.error = exc
        except InferenceServerError as exc:
            self.error = exc
        finally:
            self.broken = True
            waiting = list(self._pending.values())
            self._pending.clear()
            for future in waiting:
                if not future.done():
                    future.set_result(RESEND)

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
        except (asyncio.TimeoutError, grpc.RpcError):
            self._call.cancel()
            self._reader.cancel()


class AsyncMultiplexer:
    """One channel's stream for the asyncio client (all of it on the caller's event loop)."""

    def __init__(self, open_stream: Callable[[AsyncIterator[bytes]], Any], decoder: ResponseDecoder):
        self._open = open_stream
        self._decoder = decoder
        self._stream: _AsyncStream | None = None
        self.supported = True

    async def call(self, request_id: str, data: bytes, timeout: float) -> Answer | _Resend:
        stream = self._stream
        if stream is None or stream.broken:
            if stream is not None and _unimplemented(stream.error):
                self.supported = False
                return RESEND
            stream = self._stream = _AsyncStream(self._open, self._decoder)
        future = stream.send(request_id, data)
        if future is None:
            return RESEND
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            stream.forget(request_id)
            raise TimeoutError from None
        except asyncio.CancelledError:
            stream.forget(request_id)
            raise

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()
