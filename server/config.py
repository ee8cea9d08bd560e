"""Server settings: one frozen dataclass, built from command-line flags and HOTWIRE_<FLAG> environment variables.

This module is the only reader of environment variables. A flag given on the command line wins over its variable.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from hotwire.server.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# max_batch_size given to a model whose config leaves it out but whose graph has a dynamic first dimension.
DEFAULT_MAX_BATCH_SIZE = 32
ENV_PREFIX = "HOTWIRE_"


def bundled_repository() -> Path:
    """The example model repository shipped inside the package."""
    return Path(str(resources.files("hotwire.server") / "example_repository"))


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002  # -1 disables the metrics endpoint
    log_level: str = "INFO"
    log_format: str = "plain"  # plain | json
    request_log_rate: float = 0.0  # fraction of requests logged with their stage breakdown
    slow_request_ms: float = 0.0  # requests slower than this are logged (warning) with their breakdown; 0: off
    max_message_bytes: int = 64 * 1024 * 1024  # both directions
    shutdown_grace_s: float = 30.0  # how long in-flight requests may take to finish on SIGTERM
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    model_control_mode: str = "none"  # none | poll | explicit
    repository_poll_secs: float = 15.0
    load_model: tuple[str, ...] = ()  # explicit mode: the models loaded at start
    kernel_cache_dir: Path | None = None  # numba's on-disk kernel cache (NUMBA_CACHE_DIR); None: numba's default
    workers: int = 1  # server processes sharing the gRPC port (SO_REUSEPORT)
    reuse_port: bool = False  # set for the processes of --workers N, never by users


def _positive(name: str, minimum: int) -> type:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name}: expected >= {minimum}, got {value}")
        return value

    parse.__name__ = name
    return parse  # type: ignore[return-value]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags; each FLAG also reads HOTWIRE_<FLAG> (e.g. --grpc-port: HOTWIRE_GRPC_PORT)."""
    parser.add_argument("--model-repository", type=Path, help="model repository (default: the bundled examples)")
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--grpc-port", type=_positive("--grpc-port", 0), help="gRPC port, 0 = any free (default 8001)")
    parser.add_argument("--metrics-port", type=_positive("--metrics-port", -1),
                        help="Prometheus /metrics port, 0 = any free, -1 = off (default 8002)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    parser.add_argument("--log-format", choices=("plain", "json"), help="default plain")
    parser.add_argument("--request-log-rate", type=float, help="fraction of requests logged (default 0)")
    parser.add_argument("--slow-request-ms", type=float, help="log requests slower than this (default 0: off)")
    parser.add_argument("--max-message-bytes", type=_positive("--max-message-bytes", 1),
                        help="largest gRPC message accepted or sent (default 64 MiB)")
    parser.add_argument("--shutdown-grace-s", type=float, help="time in-flight requests get on shutdown (default 30)")
    parser.add_argument("--default-max-batch-size", type=_positive("--default-max-batch-size", 1),
                        help="max_batch_size for models that leave it out of config.pbtxt (default 32)")
    parser.add_argument("--model-control-mode", choices=("none", "poll", "explicit"),
                        help="none: load all at start (default); poll: also rescan the repository; explicit: "
                             "only --load-model at start, then RepositoryModelLoad/Unload")
    parser.add_argument("--repository-poll-secs", type=float, help="poll mode: seconds between scans (default 15)")
    parser.add_argument("--load-model", action="append", help="explicit mode: a model to load at start (repeatable)")
    parser.add_argument("--kernel-cache-dir", type=Path,
                        help="where compiled numba kernels are cached; warm it once (e.g. at image build) and it "
                             "can be read-only afterwards")
    parser.add_argument("--workers", type=_positive("--workers", 1),
                        help="server processes sharing the gRPC port; a crashed one is restarted (default 1)")
    parser.add_argument("--reuse-port", action="store_const", const=True, help=argparse.SUPPRESS)


def server_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags first, then HOTWIRE_* variables, then defaults; invalid variables are a ConfigError naming them."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(ServerConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
            continue
        variable = ENV_PREFIX + f.name.upper()
        if variable in env:
            values[f.name] = _from_env(variable, env[variable], f.type)
    if "model_repository" not in values:
        values["model_repository"] = bundled_repository()
    config = ServerConfig(**values)  # type: ignore[arg-type]
    _check(config)
    return config


def _check(config: ServerConfig) -> None:
    """The same rules for a value from a flag or from its HOTWIRE_* variable; a ConfigError names the setting."""
    choices = {"log_level": LOG_LEVELS, "log_format": ("plain", "json"),
               "model_control_mode": ("none", "poll", "explicit")}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"--{_flag(name)} '{getattr(config, name)}': expected one of {', '.join(allowed)}")
    ranges: dict[str, tuple[float, float]] = {
        "grpc_port": (0, 65535), "metrics_port": (-1, 65535), "request_log_rate": (0, 1),
        "slow_request_ms": (0, float("inf")), "shutdown_grace_s": (0, float("inf")),
        "repository_poll_secs": (0.01, float("inf")), "max_message_bytes": (1, 2**31 - 1),
        "default_max_batch_size": (1, float("inf")), "workers": (1, 1024),
    }
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        if not low <= value <= high:
            bounds = f"at least {low:g}" if high == float("inf") else f"between {low:g} and {high:g}"
            raise ConfigError(f"--{_flag(name)} {value:g} (or {ENV_PREFIX}{name.upper()}): expected {bounds}")
    if config.load_model and config.model_control_mode != "explicit":
        raise ConfigError("--load-model needs --model-control-mode explicit")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _from_env(variable: str, text: str, type_name: object) -> object:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"environment variable {variable}: expected {kind}, got '{text}'") from None
    if kind in ("Path", "Path | None"):
        return Path(text)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind == "bool":
        return text.strip().lower() in ("1", "true", "yes", "on")
    if variable == ENV_PREFIX + "LOG_LEVEL":
        return text.upper()
    return text


def parse_serve_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(prog="hotwire serve")
    add_serve_arguments(parser)
    return server_config(parser.parse_args(list(argv)), environ)
