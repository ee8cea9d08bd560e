"""Model control: what gets loaded when (`--model-control-mode none|poll|explicit`), the repository RPCs'
logic, and hotwire's admin operations carried in RepositoryModelLoad parameters.

- none: every model is loaded at start; the repository is never looked at again; load/unload RPCs are refused.
- poll: as none, then the repository is rescanned every `--repository-poll-secs`: new models and versions
  load, removed ones drain and unload, changed ones reload (losslessly: see registry).
- explicit: only `--load-model` models at start; RepositoryModelLoad / RepositoryModelUnload do the rest.

RepositoryModelLoad also takes Triton's `config` (a JSON ModelConfig that replaces config.pbtxt) and
`file:<version>/<name>` (bytes: the model files themselves, e.g. `file:1/model.onnx`), as tritonclient's
load_model sends them; and hotwire's `hotwire.rollback` (string: "" for the previous version, or a version)
and `hotwire.traffic` (a JSON object: stable, canary, canary_weight, sticky_parameter, shadow,
shadow_fraction, standby and the canary guard keys), which are allowed in every mode.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from hotwire.proto import model_config_pb2 as mc
from hotwire.server import repository
from hotwire.server.config import CONTROL_MODES
from hotwire.server.errors import FailedPrecondition, HotwireError, InvalidInput, NotFound, ResourceExhausted
from hotwire.server.model_version import VersionState
from hotwire.server.registry import Registry
from hotwire.server.traffic import parse_update

log = logging.getLogger(__name__)

ROLLBACK_PARAMETER = "hotwire.rollback"
MAX_MODEL_NAME_BYTES = 255  # a file name's limit on Linux file systems
MAX_UPLOAD_FILES = 256  # a model directory with its config, versions and external data, with room to spare
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # App passes --max-message-bytes
TRAFFIC_PARAMETER = "hotwire.traffic"


@dataclass(frozen=True)
class AdminResult:
    """What a RepositoryModelLoad did, sent back as trailing metadata (the response message has no fields)."""

    action: str  # "loaded" | "rollback:standby" | "rollback:reloaded" | "traffic"
    version: int | None = None
    elapsed_ms: float = 0.0

    def metadata(self) -> list[tuple[str, str]]:
        """As gRPC trailing metadata and as HTTP response headers."""
        return [
            ("hotwire-action", self.action),
            ("hotwire-version", "" if self.version is None else str(self.version)),
            ("hotwire-elapsed-ms", f"{self.elapsed_ms:.3f}"),
        ]


class ModelControl:
    def __init__(
        self,
        registry: Registry,
        root: Path,
        mode: str = "none",
        poll_secs: float = 15.0,
        load_models: tuple[str, ...] = (),
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        if mode not in CONTROL_MODES:
            raise ValueError(f"model control mode '{mode}': expected one of {CONTROL_MODES}")
        self.registry = registry
        self.root = root
        self.mode = mode
        self.poll_secs = poll_secs
        self.load_models = load_models
        self._poller: asyncio.Task[None] | None = None
        self.max_upload_bytes = max_upload_bytes
        self._uploads: dict[str, Path] = {}  # model -> temporary repository holding uploaded files
        # Every upload is written below this one private directory (mode 0700, made at the first upload), in a
        # directory of its own whose name comes from mkdtemp, never from the client.
        self.upload_root: Path | None = None

    async def start(self) -> None:
        if self.mode == "explicit":
            await self.registry.load_repository(self.root, only=list(self.load_models))
        else:
            await self.registry.load_repository(self.root)
        if self.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_forever(), name="repository-poll"
            )

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        self._uploads.clear()
        _remove(self.upload_root)
        self.upload_root = None

    # ----- poll mode
    # -----------------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                await self.poll_once()
            except Exception:  # a broken repository scan must not end polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load what is new or changed, unload what is gone."""
        sources = repository.scan(self.root)
        known = {entry.name: entry for entry in self.registry.models()}
        for name, source in sources.items():
            entry = known.get(name)
            if entry is None or entry.fingerprint != repository.fingerprint(source.path):
                log.info("repository poll: model %s %s", name, "added" if entry is None else "changed")
                await self.registry.load(source)
        for name, entry in known.items():
            if name not in sources and entry.versions:
                log.info("repository poll: model %s removed", name)
                await self.registry.unload(name)

    # ----- RPCs
    # ----------------------------------------------------------------------------------------------

    def index(self, ready_only: bool) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model in the repository and every loaded version.

        States are Triton's (READY, LOADING, UNAVAILABLE); hotwire's own detail goes in the reason: a ready
        version's role (stable, canary, shadow, or standby: loaded and warm for an instant rollback), or why
        it is unavailable.
        """
        rows: list[tuple[str, str, str, str]] = []
        loaded = {entry.name: entry for entry in self.registry.models()}
        names = sorted(
            set(loaded) | {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            if self.root.is_dir()
            else set(loaded)
        )
        for name in names:
            entry = loaded.get(name)
            if entry is None:
                rows.append((name, "", "UNAVAILABLE", "not loaded"))
                continue
            for number, version in sorted(entry.versions.items()):
                role = (
                    "stable"
                    if version is entry.stable
                    else "canary"
                    if version is entry.canary
                    else "shadow"
                    if version is entry.shadow
                    else "standby"
                    if version.state is VersionState.STANDBY
                    else ""
                )
                rows.append((name, str(number), "READY", role))
            if not entry.versions and entry.loading:  # one row, as Triton: earlier failures are being retried
                rows.append((name, "", "LOADING", "loading"))
                continue
            for number, reason in sorted(entry.failures.items()):
                rows.append((name, str(number) if number >= 0 else "", "UNAVAILABLE", reason))
        return [row for row in rows if not ready_only or row[2] == "READY"]

    async def load(self, name: str, parameters: dict[str, Any]) -> AdminResult:
        started = time.perf_counter()
        check_model_name(name)
        if ROLLBACK_PARAMETER in parameters:
            target = str(parameters[ROLLBACK_PARAMETER])
            number = repository.parse_version(target) if target else None
            if target and number is None:
                raise InvalidInput(f"parameter '{ROLLBACK_PARAMETER}': expected a version number or empty")
            version, how = await self.registry.rollback(name, number, self._reload_source(name))
            return AdminResult(f"rollback:{how}", version, (time.perf_counter() - started) * 1e3)
        if TRAFFIC_PARAMETER in parameters:
            try:
                update = parse_update(str(parameters[TRAFFIC_PARAMETER]))
            except RecursionError:  # json.loads of e.g. "[" * 1000: parse_update catches JSONDecodeError only
                raise InvalidInput(
                    f"parameter '{TRAFFIC_PARAMETER}': its JSON is nested too deeply"
                ) from None
            self.registry.set_traffic(name, update)
            return AdminResult("traffic", None, (time.perf_counter() - started) * 1e3)
        if self.mode != "explicit":
            raise FailedPrecondition(
                f"loading models is only allowed with --model-control-mode explicit (now: {self.mode})"
            )
        try:
            source, upload = self._source(name, parameters)
        except HotwireError as exc:  # Triton's "failed to load '<name>'" wording: clients match on it
            raise type(exc)(f"failed to load '{name}': {exc}") from None
        # An upload replaces the previous one only once it has loaded: a rejected one leaves the previous
        # upload, which may still be serving and which reloads and rollbacks read, in place.
        try:
            entry = await self.registry.load(source)
        except BaseException:
            _remove(upload)
            raise
        if entry.stable is None or entry.failures:
            _remove(upload)
            raise InvalidInput(f"failed to load '{name}': {entry.reason()}")
        if upload is not None:
            _remove(self._uploads.pop(name, None))
            self._uploads[name] = upload
        return AdminResult("loaded", entry.stable.version, (time.perf_counter() - started) * 1e3)

    async def unload(self, name: str) -> None:
        if self.mode != "explicit":
            raise FailedPrecondition(
                f"unloading models is only allowed with --model-control-mode explicit (now: {self.mode})"
            )
        check_model_name(name)
        self.registry.entry(name)
        await self.registry.unload(name)

    def _reload_source(self, name: str):  # type: ignore[no-untyped-def]
        def source_with_version(version: int) -> repository.ModelSource:
            directory = self._uploads.get(name, self.root) / name
            source = repository.read_model(directory)
            if (
                version not in source.versions
                and (directory / str(version)).is_dir()
                and source.config is not None
            ):
                model_file = directory / str(version) / source.config.default_model_filename
                if model_file.is_file():  # outside the version policy, but on disk: rollback may use it
                    source.versions[version] = model_file
            return source

        return source_with_version

    def _source(self, name: str, parameters: dict[str, Any]) -> tuple[repository.ModelSource, Path | None]:
        """The model as the repository has it, or as the request's `config` / `file:` parameters give it; and
        the temporary repository its uploaded files were written to, if any (the caller keeps or removes
        it)."""
        files = {key[len("file:") :]: value for key, value in parameters.items() if key.startswith("file:")}
        config_json = parameters.get("config")
        if files and config_json is None:
            raise InvalidInput("model files were given without a 'config' parameter to go with them")
        if config_json is None:
            directory = self.root / name
            if not directory.is_dir():
                raise NotFound(f"model '{name}' is not in the repository {self.root}")
            return repository.read_model(directory), None
        if isinstance(config_json, bytes):
            # a bytes_param: str() made its repr ("b'\\xff...'"), reported as bad JSON at "line 1 column 1"
            try:
                config_json = config_json.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"parameter 'config': not UTF-8 text (byte {exc.start}); expected a ModelConfig in JSON"
                ) from None
        config = mc.ModelConfig()
        try:
            json_format.Parse(str(config_json), config)
        except json_format.ParseError as exc:
            raise InvalidInput(f"parameter 'config': not a valid ModelConfig JSON: {exc}") from None
        upload: Path | None = None
        if files:
            self._check_upload_size(files)
            if self.upload_root is None:
                self.upload_root = Path(tempfile.mkdtemp(prefix="hotwire-uploads-"))
            upload = Path(tempfile.mkdtemp(dir=self.upload_root))
            directory = upload / name
        else:
            directory = self._uploads.get(name, self.root) / name
            if not directory.is_dir():  # never create it: the repository may be read-only, and it would list
                raise NotFound(
                    f"model '{name}' is not in the repository {self.root} and no 'file:' parameters "
                    "were given with its config"
                )
        try:
            if upload is not None:
                self._write_upload(directory, files)
            return repository.read_model(directory, config_override=config), upload
        except BaseException:  # a rejected upload must not replace (or remove) the previous one
            _remove(upload)
            raise

    def _check_upload_size(self, files: dict[str, Any]) -> None:
        if len(files) > MAX_UPLOAD_FILES:
            raise InvalidInput(
                f"{len(files)} 'file:' parameters: an upload holds at most {MAX_UPLOAD_FILES} files"
            )
        total = sum(
            len(content) if isinstance(content, bytes) else len(str(content)) for content in files.values()
        )
        if total > self.max_upload_bytes:
            raise ResourceExhausted(
                f"the uploaded files hold {total} bytes, over the {self.max_upload_bytes} allowed"
            )

    @staticmethod
    def _write_upload(directory: Path, files: dict[str, Any]) -> None:
        for relative, content in files.items():
            shown = relative if len(relative) <= 80 else relative[:80] + "..."
            if not relative or "\0" in relative or Path(relative).is_absolute():
                raise InvalidInput(f"parameter 'file:{shown}': expected a relative path such as 1/model.onnx")
            target = (directory / relative).resolve()
            if target == directory.resolve() or not target.is_relative_to(directory.resolve()):
                raise InvalidInput(f"parameter 'file:{shown}': path leaves the model directory")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content if isinstance(content, bytes) else str(content).encode())
            except OSError as exc:  # e.g. a name too long for the file system; INTERNAL, as Triton answers it
                raise HotwireError(
                    "failed to poll from model repository: cannot write parameter "
                    f"'file:{shown}': {exc.strerror or exc}"
                ) from None


def check_model_name(name: str) -> None:
    """Model names are plain names, as Triton's: a directory of the repository, never a path. Every name a
    client sends to the repository API passes here before it is joined to a path."""
    if (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or len(name.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES
    ):
        raise InvalidInput(
            f"model name {repository.shown(name, 100)!r} is not a plain name: no '/', '\\' or NUL, not '.' "
            f"or '..', at most {MAX_MODEL_NAME_BYTES} bytes"
        )


def _remove(upload: Path | None) -> None:
    """Delete a temporary upload repository (None: there was none)."""
    if upload is not None:
        shutil.rmtree(upload, ignore_errors=True)
