"""Scan a Triton-layout model repository: `<repo>/<model>/config.pbtxt` and
`<repo>/<model>/<version>/model.onnx`.

Reads configs and version directories and applies the version policy; loads nothing. Errors are per model, so
one broken model never hides the others.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from hotwire.proto import model_config_pb2 as mc
from hotwire.server.errors import ConfigError
from hotwire.server.model_config import override_config, read_config

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
_CANONICAL_VERSION = re.compile(r"0|[1-9][0-9]{0,18}")


def parse_version(text: str) -> int | None:
    """A version as a client names it: a canonical ASCII decimal within int64 ("1"; not "01", "+1", the
    Arabic-Indic "١" or the superscript "²", which str.isdigit accepts); None when it is not one."""
    if _CANONICAL_VERSION.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value < 2**63 else None


def shown(text: str, limit: int = 50) -> str:
    """A client's string as an error message echoes it: at most `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class ModelSource:
    """One model directory: its parsed (not yet completed) config and the version files its policy selects."""

    name: str
    path: Path
    config: mc.ModelConfig | None = None
    max_batch_size_given: bool = False
    versions: dict[int, Path] = field(default_factory=dict)  # version -> model file
    error: str | None = None  # set when the directory or its config is unusable
    on_disk: tuple[int, ...] = ()  # every version directory, selected by the policy or not


def scan(root: Path) -> dict[str, ModelSource]:
    """Every model directory under `root` (hidden ones skipped), by name."""
    if not root.is_dir():
        raise ConfigError(f"model repository '{root}' is not a directory")
    return {
        entry.name: read_model(entry)
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    }


def read_model(path: Path, config_override: mc.ModelConfig | None = None) -> ModelSource:
    """A model directory; `config_override` (RepositoryModelLoad's `config`) replaces its config.pbtxt."""
    source = ModelSource(name=path.name, path=path)
    try:
        if config_override is not None:
            config, given = override_config(config_override, path.name)
        else:
            config, given = read_config(path / CONFIG_FILENAME, path.name)
    except ConfigError as exc:
        source.error = str(exc)
        return source
    source.config, source.max_batch_size_given = config, given
    try:
        available = _version_dirs(path)
    except OSError as exc:  # an unreadable model directory fails this model only
        source.error = f"{path}: cannot be read: {exc.strerror or exc}"
        return source
    source.on_disk = tuple(sorted(available))
    selected = select_versions(config.version_policy, sorted(available))
    for version in selected:
        model_file = available[version] / config.default_model_filename
        if model_file.is_file():
            source.versions[version] = model_file
        else:
            log.warning(
                "model %s version %d: %s not found, version skipped", path.name, version, model_file.name
            )
    if not source.versions:
        source.error = (
            f"no loadable version under {path} (versions on disk: {sorted(available) or 'none'}, "
            f"policy selects: {selected or 'none'}, model file: {config.default_model_filename})"
        )
    return source


def fingerprint(path: Path) -> tuple:
    """What poll mode compares: the config and every version directory's files (name, size, mtime)."""
    entries = []
    for file in sorted(path.rglob("*")):
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts):
            stat = file.stat()
            entries.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def version_fingerprint(source: ModelSource, version: int) -> tuple:
    """A version's identity for reloads: its model file and the config it loads with."""
    model_file = source.versions[version]
    stat = model_file.stat()
    config = source.config.SerializeToString(deterministic=True) if source.config is not None else b""
    return (str(model_file), stat.st_size, stat.st_mtime_ns, config)


def _version_dirs(path: Path) -> dict[int, Path]:
    versions: dict[int, Path] = {}
    for entry in path.iterdir():
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not (entry.name.isascii() and entry.name.isdigit()):
            log.warning(
                "model %s: skipping '%s', version directories must be integers", path.name, entry.name
            )
            continue
        versions[int(entry.name)] = entry
    return versions


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    """Triton's version policy: latest{num_versions} (default 1), all, or specific{versions}."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(available)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return sorted(available)[-count:]
