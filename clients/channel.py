"""How a client reaches a server: the address, TLS, the bearer token, deadlines and gRPC's retry policy.

Retries are gRPC's own (the `retryPolicy` of the channel's service config, with its exponential backoff and
jitter), for the calls that are safe to repeat: inference and every read. Loads, unloads, rollback and traffic
changes are never retried: a load that timed out may still be running on the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["IDEMPOTENT_METHODS", "ChannelSettings", "SERVICE"]

SERVICE = "inference.GRPCInferenceService"
IDEMPOTENT_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
)
_HEALTH_SERVICE = "grpc.health.v1.Health"
_MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's 4 MiB default receive limit is far below what models answer


def _read(value: bytes | str | Path | None) -> bytes | None:
    """A PEM given as bytes, or as a path to read."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class ChannelSettings:
    """Everything a channel is made from; `Client` and `AsyncClient` take these as keyword arguments."""

    url: str
    tls: bool = False  # TLS with the system's CA roots; implied by tls_ca or a grpcs:// url
    tls_ca: bytes | str | Path | None = None  # PEM (or its path) of the CA of the server's certificate
    tls_cert: bytes | str | Path | None = None  # client certificate for mTLS
    tls_key: bytes | str | Path | None = None  # its private key
    tls_server_name: str | None = None  # the name to check the server's certificate against, if not the host
    token: str | None = None  # sent as `authorization: Bearer <token>` (hotwire's --api-keys)
    retries: int = 4  # extra attempts of an idempotent call answered UNAVAILABLE (0: none)

    @property
    def target(self) -> str:
        for scheme in ("grpc://", "grpcs://", "http://", "https://"):
            if self.url.startswith(scheme):
                return self.url[len(scheme) :].rstrip("/")
        return self.url

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca is not None or self.url.startswith(("grpcs://", "https://"))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def service_config(self) -> str:
        names = [{"service": SERVICE, "method": m} for m in IDEMPOTENT_METHODS]
        names.append({"service": _HEALTH_SERVICE, "method": "Check"})
        config: dict[str, Any] = {"methodConfig": [{"name": names}]}
        if self.retries > 0:
            config["methodConfig"][0]["retryPolicy"] = {
                "maxAttempts": min(self.retries + 1, 5),  # gRPC caps attempts at 5
                "initialBackoff": "0.05s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps(config)

    def options(self, index: int) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 1 if self.retries > 0 else 0),
            ("grpc.service_config", self.service_config()),
            # Each channel of a pool its own connection: channels with equal arguments would share one.
            ("grpc.use_local_subchannel_pool", 1),
            ("hotwire.channel_index", index),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def credentials(self) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca),
            private_key=_read(self.tls_key),
            certificate_chain=_read(self.tls_cert),
        )

    def sync_channel(self, index: int = 0) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options(index))
        return grpc.insecure_channel(self.target, options=self.options(index))

    def aio_channel(self, index: int = 0) -> Any:
        if self.secure:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options(index))
        return grpc.aio.insecure_channel(self.target, options=self.options(index))
