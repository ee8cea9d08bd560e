"""The HTTP/REST frontend of the data plane: the Open Inference Protocol's REST binding, as Triton serves it.

    GET  /v2                                          server metadata
    GET  /v2/health/live | /v2/health/ready           200, or 400 when not ready (as Triton)
    GET  /v2/models/stats                             statistics of every model
    GET  /v2/models/{m}[/versions/{v}]                model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready|config|stats
    POST /v2/models/{m}[/versions/{v}]/infer          JSON tensors, or JSON + binary tensors (http_codec.py)
    POST /v2/repository/index                         {"ready": bool}
    POST /v2/repository/models/{m}/load|unload        {"parameters": {...}}: `config`, `file:<path>` (base64)

Like the gRPC servicer it only translates: the data plane does the work, and every exception becomes the HTTP
status of its class in errors.py with a body `{"error": "..."}`. `HttpService` is independent of the HTTP
server library; http_server.py runs it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from hotwire.server import http_codec
from hotwire.server.auth import Access, AccessPolicy
from hotwire.server.dataplane import DataPlane
from hotwire.server.errors import (
    HotwireError,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    http_status_of,
)
from hotwire.server.limits import retry_after_header
from hotwire.server.model_version import ModelVersion
from hotwire.server.wire import InferResponse

log = logging.getLogger(__name__)

JSON = "application/json"
BINARY = "application/octet-stream"


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def _ok_json(value: Any) -> HttpResponse:
    return HttpResponse(200, http_codec.json_dumps(value))


class HttpService:
    def __init__(self, plane: DataPlane, access: AccessPolicy | None = None) -> None:
        self._plane = plane
        self._access = access or AccessPolicy(None)

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        received: float | None = None,
        peer: str | None = None,
    ) -> HttpResponse:
        """Answer one request; never raises. `headers`: names in lower case; `peer`: the client's address."""
        received = time.perf_counter() if received is None else received
        try:
            return await self._dispatch(method, path, headers, body, received, peer)
        except Exception as exc:
            status, message = http_status_of(exc)
            if not isinstance(exc, HotwireError):
                log.exception("unexpected error in %s %s", method, path)
            extra = []
            if isinstance(exc, Unauthenticated):  # RFC 9110: a 401 names the scheme the client should use
                extra.append(("WWW-Authenticate", "Bearer"))
            elif isinstance(exc, Overloaded):
                extra.append(("Retry-After", retry_after_header(exc.retry_after_s)))
            return HttpResponse(status, http_codec.error_body(message), headers=extra)

    def _admit(self, access: Access, headers: Mapping[str, str], peer: str | None) -> Hashable | None:
        """The access policy's decision (raises Unauthenticated / PermissionDenied; no cost when open), and
        for inference the caller per-caller rate limits count: the API key's index, or the peer address."""
        key = None
        if self._access.needs_check(access):
            key = self._access.check(access, headers.get("authorization"), peer).key
        if key is None and access is Access.INFER and self._plane.admission.per_caller:
            return peer
        return key

    async def _dispatch(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        received: float,
        peer: str | None,
    ) -> HttpResponse:
        parts = [unquote(p) for p in path.split("/")[1:]]
        if not parts or parts[0] != "v2":
            raise NotFound(f"no such endpoint: {path}")
        rest = parts[1:]
        if rest and rest[-1] == "":  # a trailing slash
            rest = rest[:-1]
        if not rest:
            self._expect(method, "GET", path)
            self._admit(Access.INFER, headers, peer)
            return _ok_json(http_codec.message_json(self._plane.server_metadata()))
        if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            self._expect(method, "GET", path)
            ready = True if rest[1] == "live" else self._plane.server_ready()
            return HttpResponse(200 if ready else 400)
        if rest[0] == "models":
            return await self._model(method, path, rest[1:], headers, body, received, peer)
        if rest[0] == "repository":
            return await self._repository(method, path, rest[1:], headers, body, peer)
        raise NotFound(f"no such endpoint: {path}")

    @staticmethod
    def _expect(method: str, allowed: str, path: str) -> None:
        if method != allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}")

    async def _model(
        self,
        method: str,
        path: str,
        rest: list[str],
        headers: Mapping[str, str],
        body: bytes,
        received: float,
        peer: str | None,
    ) -> HttpResponse:
        if rest == ["stats"]:
            self._expect(method, "GET", path)
            self._admit(Access.INFER, headers, peer)
            return _ok_json(http_codec.message_json(self._plane.statistics()))
        if not rest or not rest[0]:
            raise NotFound(f"no such endpoint: {path}")
        name, rest = rest[0], rest[1:]
        version = ""
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else "" if not rest else None
        if action not in ("", "ready", "config", "stats", "infer"):
            raise NotFound(f"no such endpoint: {path}")
        if action == "infer":
            self._expect(method, "POST", path)
            caller = self._admit(Access.INFER, headers, peer)
            return await self._infer(name, version, headers, body, received, caller)
        self._expect(method, "GET", path)
        # model readiness stays open, like the health endpoints
        self._admit(Access.OPEN if action == "ready" else Access.INFER, headers, peer)
        if action == "":
            return _ok_json(http_codec.message_json(self._plane.model_metadata(name, version)))
        if action == "ready":
            return HttpResponse(200 if self._plane.model_ready(name, version) else 400)
        if action == "config":
            return _ok_json(http_codec.message_json(self._plane.model_config(name, version)))
        return _ok_json(http_codec.message_json(self._plane.statistics(name, version)))

    async def _infer(
        self,
        name: str,
        version: str,
        headers: Mapping[str, str],
        body: bytes,
        received: float,
        caller: Hashable | None,
    ) -> HttpResponse:
        try:
            request, encoding = http_codec.decode_request(
                name, version, body, headers.get(http_codec.HEADER_LENGTH)
            )
        except InvalidInput:
            self._plane.undecodable(name, version, received)
            raise

        def encode(served: ModelVersion, response: InferResponse) -> HttpResponse:
            content, json_length = http_codec.encode_response(response, encoding)
            if json_length is None:
                return HttpResponse(200, content)
            return HttpResponse(200, content, BINARY, [("Inference-Header-Content-Length", str(json_length))])

        return await self._plane.infer(request, received, encode, caller)

    async def _repository(
        self,
        method: str,
        path: str,
        rest: list[str],
        headers: Mapping[str, str],
        body: bytes,
        peer: str | None,
    ) -> HttpResponse:
        control = len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload")
        if rest != ["index"] and not control:
            raise NotFound(f"no such endpoint: {path}")
        self._expect(method, "POST", path)
        self._admit(Access.ADMIN if control else Access.INFER, headers, peer)
        if "origin" in headers:
            # A browser adds Origin to a cross-origin POST, which needs no preflight when it is "simple" (e.g.
            # text/plain): without this, any web page its user opens could load, unload or roll back models.
            raise PermissionDenied(
                "the repository API refuses requests from web pages (a request with an Origin header)"
            )
        request = http_codec.json_body(body)
        if rest == ["index"]:
            ready = request.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput("'ready' must be true or false")
            index = self._plane.repository_index(ready)
            return _ok_json([http_codec.message_json(entry) for entry in index.models])
        name = rest[1]
        parameters = request.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        if rest[2] == "unload":
            await self._plane.unload(name)
            return HttpResponse(200)
        result = await self._plane.load(name, _load_parameters(parameters))
        return HttpResponse(200, headers=result.metadata())


def _load_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """RepositoryModelLoad's parameters as the HTTP binding sends them: model files base64-encoded (as
    tritonclient.http's load_model writes them), everything else as is."""
    decoded: dict[str, Any] = {}
    for key, value in parameters.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidInput(f"parameter '{key[:90]}': expected the file's content in base64")
            try:
                decoded[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(f"parameter '{key[:90]}': not valid base64") from None
        else:
            decoded[key] = value
    return decoded
