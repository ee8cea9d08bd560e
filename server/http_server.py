"""Runs the HTTP/REST frontend (http_service.py) on the server's own event loop: uvicorn with httptools, under
a bare ASGI callable (no framework: routing is http_service's, and a framework's request objects would cost
more per call than the rest of the HTTP path).

Measured against aiohttp's web server on this project's 2-core machine (bench/RESULTS.md, "HTTP server
choice"): uvicorn+httptools answered more requests per second at concurrency 1 and 16, with JSON and binary
bodies.

uvicorn's `Server.serve` would install its own signal handlers and run its own tick loop; hotwire owns signals
and shutdown (app.py), so it calls `startup` on a socket it bound itself (shared with SO_REUSEPORT under
--workers) and `shutdown` in App.stop's order: stop accepting, let in-flight requests finish, close idle
keep-alive connections.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
import zlib
from typing import Any

import uvicorn

from hotwire.server.errors import (
    HotwireError,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from hotwire.server.http_codec import error_body
from hotwire.server.http_service import HttpService

log = logging.getLogger(__name__)
# uvicorn's own lines ("Uvicorn running on ...", "Shutting down") would contradict hotwire's; its errors still
# show.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

Scope = dict[str, Any]


class AsgiApp:
    """The ASGI callable: reads the body (bounded), undoes its Content-Encoding, hands the request to the
    service, writes its answer."""

    def __init__(self, service: HttpService, max_body_bytes: int) -> None:
        self._service = service
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not part of the protocol
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        try:
            body = await self._body(headers, receive)
        except _Disconnected:  # the client went away mid-body: nothing to answer, nothing to count
            return
        except HotwireError as exc:
            await _send(send, exc.http_status, error_body(str(exc)), "application/json", [])
            return
        # As on gRPC, where a call's message has fully arrived before the handler runs: the client's upload
        # time is not the server's latency (which the canary guard and the slow-request log judge).
        received = time.perf_counter()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity" and body:
            try:
                body = _decompress(body, encoding, self._max_body_bytes)
            except HotwireError as exc:
                await _send(send, exc.http_status, error_body(str(exc)), "application/json", [])
                return
        # raw_path: still percent-encoded, so a model name holding an encoded '/' cannot split the path
        path = scope.get("raw_path") or scope["path"].encode()
        client = scope.get("client")
        response = await self._service.handle(
            scope["method"], path.decode("latin-1"), headers, body, received, client[0] if client else None
        )
        await _send(send, response.status, response.body, response.content_type, response.headers)

    async def _body(self, headers: dict[str, str], receive: Any) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body_bytes:
            raise self._too_large()
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self._max_body_bytes:
                raise self._too_large()
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds {self._max_body_bytes} bytes (--max-message-bytes)")


class _Disconnected(Exception):
    """The client closed the connection before its request body was complete."""


# Content-Encoding of a request body (tritonclient.http's request_compression_algorithm). "deflate" is
# zlib-wrapped, as HTTP defines it and clients send it.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding; its decompressed size is bounded by --max-message-bytes too."""
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding '{encoding[:50]}' is not supported: send gzip, deflate or identity"
        )
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes (--max-message-bytes) once decompressed")
    if not decompressor.eof or decompressor.unused_data:
        raise InvalidInput(f"the request body is not one complete {encoding} stream")
    return data


async def _send(
    send: Any, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]]
) -> None:
    raw_headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw_headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The listening socket: SO_REUSEPORT only for the workers of --workers N, which share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not the default 0: the accepted sockets inherit it, and asyncio sets TCP_NODELAY only
    # on sockets that say they are TCP. Without it Nagle holds uvicorn's body write until the client ACKs the
    # headers write: ~40 ms (the client's delayed ACK) per keep-alive request. (uvloop sets it regardless.)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    def __init__(
        self,
        service: HttpService,
        sock: socket.socket,
        max_body_bytes: int,
        grace_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        config = uvicorn.Config(
            AsgiApp(service, max_body_bytes),
            http="httptools",
            ws="none",
            lifespan="off",
            proxy_headers=False,  # no proxy is trusted: client addresses are the sockets' own
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=math.ceil(grace_s),
            # hotwire's one context (tls.py), the same rules as the gRPC and metrics ports
            ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
        )
        config.load()
        self._server = uvicorn.Server(config)
        # What Server.serve sets up before its startup(); serve itself would take over the process's signals.
        self._server.lifespan = config.lifespan_class(config)

        self._started = False

    async def start(self) -> None:
        try:
            await self._server.startup(sockets=[self._sock])
        except BaseException:
            self._sock.close()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace), close every connection."""
        if self._started:
            self._started = False
            self._server.should_exit = True
            await self._server.shutdown(sockets=[self._sock])
        self._sock.close()
