"""The inline reference server over HTTP/REST: the naive server hotwire's HTTP frontend is measured against.

The same HTTP stack as hotwire's (uvicorn with httptools, a bare ASGI callable) and the same inline ORT
session as the gRPC ``inline`` reference (reference_servers.py): each infer request's JSON header is parsed
with ``json``, binary inputs are ``np.frombuffer`` views of the body, ``session.run`` is called in the
handler, and the outputs go back in binary (Triton's binary tensor extension, as perf_analyzer asks for them)
or as JSON lists. It answers what perf_analyzer -i http calls: /v2, /v2/health/live|ready,
/v2/models/NAME[/config|/ready|/infer].

    python -m hotwire.bench.reference_servers inline-http --model PATH.onnx --name NAME [--port 0]
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn

from hotwire.bench.reference_servers import ModelSignature, signature_from_session

log = logging.getLogger("hotwire.bench.reference")
_JSON = [(b"content-type", b"application/json")]


class InlineHttpApp:
    def __init__(self, signature: ModelSignature, session: ort.InferenceSession) -> None:
        self.signature = signature
        self.session = session
        self._inputs = {s.name: s for s in signature.inputs}
        self._outputs = {s.name: s for s in signature.outputs}
        shape = signature.metadata_shape
        self._metadata = json.dumps(
            {
                "name": signature.name,
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": shape(s)} for s in signature.inputs
                ],
                "outputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": shape(s)} for s in signature.outputs
                ],
            }
        ).encode()
        self._config = json.dumps(
            {
                "name": signature.name,
                "platform": "onnxruntime_onnx",
                "backend": "onnxruntime",
                "max_batch_size": signature.max_batch_size,
                "input": [
                    {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.dims)}
                    for s in signature.inputs
                ],
                "output": [
                    {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.dims)}
                    for s in signature.outputs
                ],
            }
        ).encode()
        self._server_metadata = json.dumps({"name": "inline-http", "version": "1", "extensions": []}).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        path = scope["path"].rstrip("/")
        model = f"/v2/models/{self.signature.name}"
        headers: list[tuple[bytes, bytes]] = _JSON
        if path in ("/v2/health/live", "/v2/health/ready", f"{model}/ready"):
            status, content = 200, b""
        elif path == "/v2":
            status, content = 200, self._server_metadata
        elif path in (model, f"{model}/versions/1"):
            status, content = 200, self._metadata
        elif path in (f"{model}/config", f"{model}/versions/1/config"):
            status, content = 200, self._config
        elif path in (f"{model}/infer", f"{model}/versions/1/infer") and scope["method"] == "POST":
            try:
                status, content, headers = self._infer(body, dict(scope["headers"]))
            except (KeyError, ValueError, TypeError) as exc:
                status, content = 400, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
            except Exception as exc:  # ORT's own exception types
                status, content = 400, json.dumps({"error": f"onnxruntime: {exc}"}).encode()
        else:
            status, content = 404, json.dumps({"error": f"no such endpoint {path}"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _infer(
        self, body: bytes, headers: dict[bytes, bytes]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Runs on the event loop thread, deliberately (inline: session.run blocks the loop)."""
        length = headers.get(b"inference-header-content-length")
        json_end = int(length) if length is not None else len(body)
        request = json.loads(body[:json_end])
        view = memoryview(body)
        offset = json_end
        feeds = {}
        for tensor in request["inputs"]:
            spec = self._inputs[tensor["name"]]
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                feeds[spec.name] = np.frombuffer(view[offset : offset + size], dtype=spec.dtype).reshape(
                    tensor["shape"]
                )
                offset += size
            else:
                feeds[spec.name] = np.array(tensor["data"], dtype=spec.dtype).reshape(tensor["shape"])
        requested = request.get("outputs") or [{"name": name} for name in self._outputs]
        default_binary = (request.get("parameters") or {}).get("binary_data_output", False)
        names = [o["name"] for o in requested]
        results = self.session.run(names, feeds)
        outputs, binary = [], []
        for entry, name, array in zip(requested, names, results):
            described: dict[str, Any] = {
                "name": name,
                "datatype": self._outputs[name].datatype,
                "shape": list(array.shape),
            }
            if (entry.get("parameters") or {}).get("binary_data", default_binary):
                raw = np.ascontiguousarray(array).tobytes()
                described["parameters"] = {"binary_data_size": len(raw)}
                binary.append(raw)
            else:
                described["data"] = array.reshape(-1).tolist()
            outputs.append(described)
        header = json.dumps(
            {
                "model_name": self.signature.name,
                "model_version": "1",
                "id": request.get("id", ""),
                "outputs": outputs,
            }
        ).encode()
        if not binary:
            return 200, header, _JSON
        return (
            200,
            b"".join([header, *binary]),
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(len(header)).encode()),
            ],
        )


async def serve_http(
    session: ort.InferenceSession, name: str, host: str, port: int, stop: asyncio.Event
) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    config = uvicorn.Config(
        InlineHttpApp(signature_from_session(name, session), session),
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=1,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # as Server.serve does, without taking over the signals
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    await server.startup(sockets=[sock])
    log.info(
        "inline-http reference server for model '%s' listening on %s:%d", name, host, sock.getsockname()[1]
    )
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await server.shutdown(sockets=[sock])
    log.info("stopped")
