"""TLS for every port a client reaches (gRPC, HTTP, metrics) from one set of files: `--tls-cert`,
`--tls-key`, and `--tls-client-ca` (given: every client must present a certificate that CA signed: mTLS).

The files are read once at start; a missing or unreadable one, or a key that does not match its certificate,
stops the server with a message naming the flag (ConfigError), not at the first handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from hotwire.server.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_flags(cls, cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
        if cert is None and key is None:
            if client_ca is not None:
                raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (the server's own)")
            return None
        if cert is None or key is None:
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        files = cls(cert, key, client_ca)
        files.server_context()  # fail at start, naming the flag, if anything is wrong with the files
        return files

    def _read(self, flag: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """gRPC's server credentials; with a client CA, client certificates are required."""
        ca = self._read("--tls-client-ca", self.client_ca) if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(self._read("--tls-key", self.key), self._read("--tls-cert", self.cert))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for the HTTP and metrics servers: TLS 1.2 or later, client certificates required
        with a client CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            raise ConfigError(f"--tls-cert / --tls-key: {exc.filename}: no such file") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--tls-cert {self.cert} / --tls-key {self.key}: not a PEM certificate and its matching "
                f"private key ({exc})"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"--tls-client-ca {self.client_ca}: not a PEM CA certificate ({exc})"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context
