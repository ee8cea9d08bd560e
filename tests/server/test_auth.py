"""The access policy on its own: key files, roles, peers, `hotwire keys new`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from hotwire.server.auth import (
    Access,
    AccessPolicy,
    Role,
    exposure_warning,
    grpc_peer_host,
    is_loopback,
    new_key,
    read_key_file,
)
from hotwire.server.errors import ConfigError, PermissionDenied, Unauthenticated


def _line(role: str, key: str) -> str:
    return f"{role} {hashlib.sha256(key.encode()).hexdigest()}"


def test_key_file_holds_digests_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# team A\n{_line('infer', 'k1')}  # the web app\n\n{_line('ADMIN', 'k2')}\n")
    keys = read_key_file(path)
    assert keys == [
        (Role.INFER, hashlib.sha256(b"k1").digest()),
        (Role.ADMIN, hashlib.sha256(b"k2").digest()),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("infer", "line 1: expected 'ROLE SHA256_HEX'"),
        ("reader " + "0" * 64, "line 1: unknown role 'reader'"),
        ("infer my-secret-key", "not the key itself"),
        ("infer " + "0" * 63, "64 hex digits"),
        ("# only a comment\n", "no keys in it"),
    ],
)
def test_bad_key_file_names_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        read_key_file(path)


def test_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        read_key_file(tmp_path / "missing")


def test_roles_and_missing_or_unknown_keys() -> None:
    policy = AccessPolicy(
        [(Role.INFER, hashlib.sha256(b"reader").digest()), (Role.ADMIN, hashlib.sha256(b"boss").digest())]
    )
    assert policy.check(Access.INFER, "Bearer reader", "10.0.0.1").role is Role.INFER
    assert policy.check(Access.INFER, "bearer boss", "10.0.0.1").role is Role.ADMIN  # admin implies infer
    caller = policy.check(Access.ADMIN, "Bearer boss", "10.0.0.1")
    assert (caller.key, caller.role) == (1, Role.ADMIN)
    with pytest.raises(PermissionDenied, match="role 'infer' may not make this call: it needs 'admin'"):
        policy.check(Access.ADMIN, "Bearer reader", "127.0.0.1")  # keys decide, loopback or not
    with pytest.raises(Unauthenticated, match="missing credentials"):
        policy.check(Access.INFER, None, "127.0.0.1")
    with pytest.raises(Unauthenticated, match="missing credentials"):
        policy.check(Access.INFER, "Basic cmVhZGVy", "127.0.0.1")
    with pytest.raises(Unauthenticated, match="unknown API key"):
        policy.check(Access.INFER, "Bearer readers", "127.0.0.1")
    assert policy.check(Access.OPEN, None, "10.0.0.1").role is None  # health and readiness stay open


def test_without_keys_admin_only_from_loopback() -> None:
    policy = AccessPolicy(None)
    assert not policy.needs_check(Access.INFER)  # inference pays nothing when open
    assert policy.needs_check(Access.ADMIN)
    policy.check(Access.INFER, None, "10.0.0.1")
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "unix"):
        policy.check(Access.ADMIN, None, peer)
    for peer in ("10.0.0.1", "::ffff:10.0.0.1", "fd00::2", None):
        with pytest.raises(PermissionDenied, match="--api-keys FILE"):
            policy.check(Access.ADMIN, None, peer)


@pytest.mark.parametrize(
    ("peer", "host", "loopback"),
    [
        ("ipv4:127.0.0.1:50123", "127.0.0.1", True),
        ("ipv4:192.0.2.7:50123", "192.0.2.7", False),
        ("ipv6:[::1]:50123", "::1", True),
        ("ipv6:[::ffff:127.0.0.1]:50123", "::ffff:127.0.0.1", True),
        ("ipv6:[fd00::2]:1", "fd00::2", False),
        ("unix:/tmp/socket", "unix", True),
    ],
)
def test_grpc_peers(peer: str, host: str, loopback: bool) -> None:
    assert grpc_peer_host(peer) == host
    assert is_loopback(host) is loopback


def test_new_key_matches_its_line() -> None:
    key, line = new_key("admin")
    role, digest = line.split()
    assert role == "admin" and hashlib.sha256(key.encode()).hexdigest() == digest
    assert len(key) >= 40 and new_key("admin")[0] != key
    with pytest.raises(ValueError, match="unknown role"):
        new_key("root")


def test_keys_new_command_output_works_as_a_key_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hotwire.server", "keys", "new", "--role", "admin"],
        capture_output=True,
        text=True,
        check=True,
    )
    key, line = result.stdout.splitlines()
    path = tmp_path / "keys"
    path.write_text(line + "\n")
    policy = AccessPolicy.from_file(path)
    assert policy.check(Access.ADMIN, f"Bearer {key}", "10.0.0.1").role is Role.ADMIN


def test_exposure_warning() -> None:
    assert exposure_warning("127.0.0.1", tls=False, keys=False) is None
    assert exposure_warning("0.0.0.0", tls=True, keys=True) is None
    warning = exposure_warning("0.0.0.0", tls=False, keys=False)
    assert warning is not None and "TLS" in warning and "API keys" in warning and "anyone" in warning
    warning = exposure_warning("0.0.0.0", tls=False, keys=True)
    assert warning is not None and "clear text" in warning and "API keys" not in warning
