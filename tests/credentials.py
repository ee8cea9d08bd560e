"""Throwaway credentials for the security tests: certificates (trustme) — a CA, a server certificate for
localhost and 127.0.0.1, a client certificate from the same CA, a stranger's from a CA the server does not
trust — and an --api-keys file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from a CA the server does not trust
    stranger_key: Path


def make_pki(root: Path) -> Pki:
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client@example.com")
    stranger = other_ca.issue_cert("stranger@example.com")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    for name, issued in (("server", server), ("client", client), ("stranger", stranger)):
        issued.cert_chain_pems[0].write_to_path(str(root / f"{name}.pem"))
        issued.private_key_pem.write_to_path(str(root / f"{name}.key"))
    return Pki(
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
        root / "stranger.pem",
        root / "stranger.key",
    )


def write_key_file(path: Path, keys: dict[str, str]) -> Path:
    """An --api-keys file giving each key (a plain-text key → its role) by its sha256."""
    lines = ["# role sha256(key)"]
    lines += [f"{role} {hashlib.sha256(key.encode()).hexdigest()}" for key, role in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
