"""Who may make which call: API keys with roles, and the one access policy every frontend applies.

The key file (`--api-keys FILE`) holds one key per line as `ROLE SHA256_HEX_OF_KEY` (`#` starts a comment),
so it holds no secret; `hotwire keys new --role R` makes a key and its line. Roles: `infer` (inference and the
read calls: metadata, config, statistics, the repository index) and `admin` (also repository load/unload,
which carry rollback and traffic changes), admin implying infer. Liveness, readiness and grpc.health are open
to everyone: orchestrators probe them without credentials.

Without a key file, inference and the read calls are open and admin calls are taken only from loopback peers,
so a server started on 0.0.0.0 cannot be reconfigured from the network by default.

A presented key is hashed and compared with every digest in the file with `hmac.compare_digest`, always all of
them, so the time taken says nothing about which digest came closest. Keys are never logged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hotwire.server.errors import ConfigError, PermissionDenied, Unauthenticated


class Role(enum.IntEnum):
    INFER = 1
    ADMIN = 2  # implies INFER: roles are ordered


class Access(enum.Enum):
    """What a call needs; every frontend states it for each of its calls."""

    OPEN = None  # liveness, readiness, health
    INFER = Role.INFER  # inference and reads (metadata, config, statistics, repository index)
    ADMIN = Role.ADMIN  # repository load/unload (and the rollback and traffic changes they carry)


ROLE_NAMES = {role.name.lower(): role for role in Role}
BEARER = "bearer "
KEY_BYTES = 32  # 256 bits of randomness per key


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call, as the access policy decided: the key's index in the file (None: no key file) and
    role. Rate limits per key use `key`."""

    key: int | None
    role: Role | None


ANONYMOUS = Caller(None, None)


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key(role: str) -> tuple[str, str]:
    """A fresh random key and its line for the key file."""
    if role not in ROLE_NAMES:
        raise ValueError(f"unknown role '{role}': expected one of {', '.join(ROLE_NAMES)}")
    key = "hw_" + secrets.token_urlsafe(KEY_BYTES)
    return key, f"{role} {digest_of(key).hex()}"


def read_key_file(path: Path) -> list[tuple[Role, bytes]]:
    """The (role, digest) pairs of a key file; a ConfigError names the line that is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-keys {path}: cannot read it: {exc}") from None
    keys: list[tuple[Role, bytes]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"--api-keys {path} line {number}"
        if len(parts) != 2:
            raise ConfigError(f"{where}: expected 'ROLE SHA256_HEX' (e.g. from `hotwire keys new`)")
        role_name, digest_hex = parts
        role = ROLE_NAMES.get(role_name.lower())
        if role is None:
            raise ConfigError(
                f"{where}: unknown role '{role_name[:20]}': expected one of {', '.join(ROLE_NAMES)}"
            )
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise ConfigError(
                f"{where}: expected the key's SHA-256 as 64 hex digits, not the key itself "
                "(`hotwire keys new` prints the line to add)"
            )
        keys.append((role, digest))
    if not keys:
        raise ConfigError(f"--api-keys {path}: no keys in it (every call would be refused)")
    return keys


def is_loopback(host: str | None) -> bool:
    """Whether a peer address is this machine (IPv4-mapped IPv6 included); a Unix socket counts."""
    if host is None:
        return False
    if host == "unix" or host.startswith("unix:"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def grpc_peer_host(peer: str) -> str:
    """The host of a gRPC peer string: 'ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000', 'unix:/path'."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return "unix"
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    return rest.rpartition(":")[0] if kind == "ipv4" else rest


class AccessPolicy:
    """The one decision of who may make which call, for every frontend."""

    def __init__(self, keys: Sequence[tuple[Role, bytes]] | None) -> None:
        self._keys = tuple(keys) if keys is not None else None

    @classmethod
    def from_file(cls, path: Path | None) -> AccessPolicy:
        return cls(read_key_file(path) if path is not None else None)

    @property
    def uses_keys(self) -> bool:
        return self._keys is not None

    def needs_check(self, access: Access) -> bool:
        """Whether a call of this kind must be checked at all (lets a frontend skip reading credentials)."""
        return access is not Access.OPEN and (self._keys is not None or access is Access.ADMIN)

    def check(self, access: Access, authorization: str | None, peer_host: str | None) -> Caller:
        """The caller of a call needing `access`, or Unauthenticated / PermissionDenied.
        `authorization`: the call's `authorization` header or metadata value; `peer_host`: its address."""
        required = access.value
        if required is None:
            return ANONYMOUS
        if self._keys is None:
            if required is Role.ADMIN and not is_loopback(peer_host):
                raise PermissionDenied(
                    "admin calls (repository load/unload, rollback, traffic) are accepted only from this "
                    "machine when the server runs without --api-keys; start it with --api-keys FILE (keys "
                    "from `hotwire keys new --role admin`) to allow them from the network"
                )
            return ANONYMOUS
        if authorization is None or not authorization[: len(BEARER)].lower() == BEARER:
            raise Unauthenticated("missing credentials: send the header 'authorization: Bearer <key>'")
        presented = digest_of(authorization[len(BEARER) :].strip())
        found: int | None = None
        for index, (_, digest) in enumerate(self._keys):
            # every digest is compared, matched or not: no early exit
            if hmac.compare_digest(presented, digest) and found is None:
                found = index
        if found is None:
            raise Unauthenticated("unknown API key")
        role = self._keys[found][0]
        if role < required:
            raise PermissionDenied(
                f"this key's role '{role.name.lower()}' may not make this call: it needs "
                f"'{required.name.lower()}'"
            )
        return Caller(found, role)


def exposure_warning(host: str, tls: bool, keys: bool) -> str | None:
    """The warning a server listening beyond this machine without TLS or keys logs at start, or None."""
    if is_loopback(host) or (tls and keys):
        return None
    wanted = (("TLS (--tls-cert/--tls-key)", tls), ("API keys (--api-keys)", keys))
    missing = " and ".join(what for what, given in wanted if not given)
    risk = (
        "anyone who can reach it can run inference and read model metadata"
        if not keys
        else "keys and tensors cross the network in clear text"
    )
    return f"listening on {host} without {missing}: {risk}; see SECURITY.md"
