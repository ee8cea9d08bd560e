"""Server settings: one frozen dataclass, built from command-line flags and HOTWIRE_<FLAG> environment
variables.

This module is the only reader of hotwire's own HOTWIRE_* variables; a flag given on the command line wins
over its variable. Other libraries' variables are read where they are handed over: NUMBA_CACHE_DIR and
XDG_CACHE_HOME by the kernel cache (kernels/cache.py, set by cli.py), PROMETHEUS_MULTIPROC_DIR by metrics.py
and workers.py.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from importlib import metadata, resources
from pathlib import Path

# gRPC C-core reads GRPC_VERBOSITY once, when grpc is first imported (hotwire.server.errors imports it), so
# this runs first: C-core's own log lines (e.g. its bind error beside hotwire's) stay off stderr, in this
# process and the workers it starts, unless the user sets GRPC_VERBOSITY.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

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
    http_port: int = 8000  # the Open Inference Protocol's REST binding; -1 disables it
    metrics_port: int = 8002  # -1 disables the metrics endpoint
    log_level: str = "INFO"
    log_format: str = "plain"  # plain | json
    request_log_rate: float = 0.0  # fraction of requests logged with their stage breakdown
    # requests slower than this are logged (warning) with their breakdown; 0: off
    slow_request_ms: float = 0.0
    max_message_bytes: int = 64 * 1024 * 1024  # both directions
    shutdown_grace_s: float = 30.0  # how long in-flight requests may take to finish on SIGTERM
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    model_control_mode: str = "none"  # none | poll | explicit
    repository_poll_secs: float = 15.0
    load_model: tuple[str, ...] = ()  # explicit mode: the models loaded at start
    # numba's on-disk kernel cache (NUMBA_CACHE_DIR); None: the per-user one
    kernel_cache_dir: Path | None = None
    workers: int = 1  # server processes sharing the gRPC port (SO_REUSEPORT); with devices: per device
    # CUDA devices, one group of `workers` workers each, every worker seeing only its own device (as device 0)
    devices: tuple[str, ...] = ()
    exit_on_error: bool = False  # a model failing to load at start stops the server (exit 1); Triton: on
    strict_readiness: bool = True  # ServerReady needs every model ready; false: ready once the server is up
    log_verbose: int = 0  # Triton's --log-verbose: > 0 means DEBUG logging
    reuse_port: bool = False  # set for the processes of --workers N, never by users
    ready_fd: int = -1  # a pipe the server writes its ports to once listening (supervisors, tests); -1: none
    # TLS on every port a client reaches (tls.py); a client CA makes client certificates required
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    api_keys: Path | None = None  # the key file (auth.py); None: inference open, admin from loopback only
    # limits.py: per server process (each worker of --workers N has its own)
    max_inflight: int = 4096  # inference requests in flight, every frontend together
    max_request_tensors: int = 256  # inputs plus requested outputs of one request
    max_request_rows: int = 1 << 20  # first dimension of any input
    rate_limit: float = 0.0  # requests per second; 0: none
    rate_burst: float = 0.0  # 0: max(1, rate_limit)
    caller_rate_limit: float = 0.0  # requests per second per API key (per peer address without keys); 0: none
    caller_burst: float = 0.0
    max_model_batch_size: int = 4096  # a config asking for more is refused at load
    max_model_instances: int = 8  # instances per model
    max_buffer_bytes: int = 1 << 30  # batch buffers of all loaded versions together


_INTERNAL = ("reuse_port", "ready_fd")  # fields with no HOTWIRE_* variable (a child would inherit it)


# tritonserver's --log-format values: both are timestamped text lines, which is what hotwire's plain format
# is.
TRITON_LOG_FORMATS = {"default": "plain", "ISO8601": "plain"}

# HOTWIRE_* variables read outside `serve`'s settings, so never taken for misspellings.
OTHER_VARIABLES = {
    ENV_PREFIX + "PERF_ANALYZER_HOME": "where the benchmarks install and look for Triton's perf_analyzer",
    ENV_PREFIX + "API_KEY": "the key `hotwire rollback` and `hotwire traffic` send",
}


def variables() -> list[str]:
    """Every HOTWIRE_* variable `hotwire serve` reads."""
    return [ENV_PREFIX + f.name.upper() for f in fields(ServerConfig) if f.name not in _INTERNAL]


def version() -> str:
    try:
        return metadata.version("hotwire")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


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


CONTROL_MODES = ("none", "poll", "explicit")  # --model-control-mode: model_control.py says what each does
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool | None:
    """Triton's boolean forms (true/false, 1/0) and yes/no, on/off; None when `text` is none of them."""
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _boolean(name: str) -> type:
    def parse(text: str) -> bool:
        value = parse_bool(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"{name}: expected true or false, got '{text}'")
        return value

    parse.__name__ = name
    return parse  # type: ignore[return-value]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags; each FLAG also reads HOTWIRE_<FLAG> (e.g. --grpc-port: HOTWIRE_GRPC_PORT). Triton's
    names for the same settings are aliases (--model-store, --grpc-address, --exit-timeout-secs)."""
    parser.add_argument(
        "--model-repository",
        "--model-store",
        type=Path,
        help="model repository (default: the bundled examples)",
    )
    parser.add_argument(
        "--host",
        "--grpc-address",
        dest="host",
        help="address to listen on, for gRPC, HTTP and metrics (default 0.0.0.0)",
    )
    parser.add_argument(
        "--grpc-port", type=_positive("--grpc-port", 0), help="gRPC port, 0 = any free (default 8001)"
    )
    parser.add_argument(
        "--http-port",
        type=_positive("--http-port", -1),
        help="HTTP/REST port, 0 = any free, -1 = off (default 8000)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_positive("--metrics-port", -1),
        help="Prometheus /metrics port, 0 = any free, -1 = off (default 8002)",
    )
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    parser.add_argument(
        "--log-verbose",
        type=_positive("--log-verbose", 0),
        metavar="N",
        help="Triton's verbosity: N > 0 logs at DEBUG (default 0)",
    )
    parser.add_argument(
        "--log-format",
        choices=("plain", "json", *TRITON_LOG_FORMATS),
        help="default plain (Triton's `default` and `ISO8601` are taken as plain)",
    )
    parser.add_argument("--request-log-rate", type=float, help="fraction of requests logged (default 0)")
    parser.add_argument(
        "--slow-request-ms", type=float, help="log requests slower than this (default 0: off)"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=_positive("--max-message-bytes", 1),
        help="largest gRPC message accepted or sent (default 64 MiB)",
    )
    parser.add_argument(
        "--shutdown-grace-s",
        "--exit-timeout-secs",
        dest="shutdown_grace_s",
        type=float,
        help="time in-flight requests get on shutdown (default 30)",
    )
    parser.add_argument(
        "--default-max-batch-size",
        type=_positive("--default-max-batch-size", 1),
        help="max_batch_size for models that leave it out of config.pbtxt (default 32)",
    )
    parser.add_argument(
        "--model-control-mode",
        choices=CONTROL_MODES,
        help="none: load all at start (default); poll: also rescan the repository; explicit: "
        "only --load-model at start, then RepositoryModelLoad/Unload",
    )
    parser.add_argument(
        "--repository-poll-secs", type=float, help="poll mode: seconds between scans (default 15)"
    )
    parser.add_argument(
        "--load-model", action="append", help="explicit mode: a model to load at start (repeatable)"
    )
    parser.add_argument(
        "--kernel-cache-dir",
        type=Path,
        help="where compiled numba kernels are cached (default: ~/.cache/hotwire/kernels); warm it "
        "once (e.g. at image build) and it can be read-only afterwards",
    )
    parser.add_argument(
        "--workers",
        type=_positive("--workers", 1),
        help="server processes sharing the gRPC and HTTP ports; a crashed one is restarted (default 1)",
    )
    parser.add_argument(
        "--devices",
        type=_device_list,
        help="comma-separated CUDA devices (MIG-<uuid>, GPU-<uuid> or an index, as `nvidia-smi -L` lists "
        "them): --workers workers on each, with CUDA_VISIBLE_DEVICES set to that one device, so models use "
        "device 0 (KIND_GPU gpus: [0] or KIND_AUTO); default: one group seeing every device",
    )
    parser.add_argument(
        "--exit-on-error",
        type=_boolean("--exit-on-error"),
        nargs="?",
        const=True,
        metavar="BOOL",
        help="exit 1 when a model fails to load at start (default false: the others serve)",
    )
    parser.add_argument(
        "--strict-readiness",
        type=_boolean("--strict-readiness"),
        nargs="?",
        const=True,
        metavar="BOOL",
        help="ServerReady only when every model is ready (default true); false: ready once the server is up",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="PEM certificate (chain): TLS on the gRPC, HTTP and metrics ports"
    )
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA certificate(s): clients must present a certificate they signed (mTLS)",
    )
    parser.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        help="API keys, one 'ROLE SHA256_HEX' per line (`hotwire keys new`); clients send "
        "'authorization: Bearer <key>'. Without it inference is open and admin calls are taken "
        "only from loopback",
    )
    limits = parser.add_argument_group("limits (per server process; SECURITY.md lists the defaults)")
    limits.add_argument(
        "--max-inflight",
        type=_positive("--max-inflight", 1),
        help="inference requests in flight at once; more are RESOURCE_EXHAUSTED (default 4096)",
    )
    limits.add_argument(
        "--max-request-tensors",
        type=_positive("--max-request-tensors", 1),
        help="inputs plus requested outputs in one request (default 256)",
    )
    limits.add_argument(
        "--max-request-rows",
        type=_positive("--max-request-rows", 1),
        help="first dimension of any input of one request (default 1048576)",
    )
    limits.add_argument(
        "--rate-limit", type=float, metavar="RPS", help="requests per second (default 0: off)"
    )
    limits.add_argument("--rate-burst", type=float, help="requests allowed at once above the rate")
    limits.add_argument(
        "--caller-rate-limit",
        type=float,
        metavar="RPS",
        help="requests per second per API key, or per client address without --api-keys (default 0: off)",
    )
    limits.add_argument("--caller-burst", type=float, help="per caller, as --rate-burst")
    limits.add_argument(
        "--max-model-batch-size",
        type=_positive("--max-model-batch-size", 1),
        help="largest max_batch_size a model config may set; larger is refused at load (default 4096)",
    )
    limits.add_argument(
        "--max-model-instances",
        type=_positive("--max-model-instances", 1),
        help="instances one model may ask for (default 8)",
    )
    limits.add_argument(
        "--max-buffer-bytes",
        type=_positive("--max-buffer-bytes", 1),
        help="batch-buffer bytes of all loaded models together; a load past it is refused (default 1 GiB)",
    )
    parser.add_argument("--version", action="version", version=f"hotwire {version()}")
    parser.add_argument("--reuse-port", action="store_const", const=True, help=argparse.SUPPRESS)
    parser.add_argument(
        "--ready-fd",
        type=_positive("--ready-fd", 0),
        metavar="FD",
        help="once listening, write one JSON line with the ports (grpc_port, http_port, "
        "metrics_port, pid) to this inherited file descriptor and close it: how a process "
        "manager learns a server is up without reading its log",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "environment variables (a flag on the command line wins):\n  " + "\n  ".join(
        f"{variable:34} {_flag_of(variable)}" for variable in variables()
    )


def _flag_of(variable: str) -> str:
    return "--" + _flag(variable[len(ENV_PREFIX) :].lower())


def server_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags first, then HOTWIRE_* variables, then defaults; invalid variables are a ConfigError naming
    them."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(ServerConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
            continue
        if f.name in _INTERNAL:
            continue
        variable = ENV_PREFIX + f.name.upper()
        if variable in env:
            values[f.name] = _from_env(variable, env[variable], f.type)
    if "model_repository" not in values:
        values["model_repository"] = bundled_repository()
    if values.get("log_format") in TRITON_LOG_FORMATS:
        values["log_format"] = TRITON_LOG_FORMATS[str(values["log_format"])]
    config = ServerConfig(**values)  # type: ignore[arg-type]
    _check(config)
    if config.log_verbose > 0:
        config = replace(config, log_level="DEBUG")
    return config


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each HOTWIRE_* variable hotwire does not read (a misspelling would go unnoticed)."""
    env = os.environ if environ is None else environ
    known = variables()
    warnings = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known and name not in OTHER_VARIABLES:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            warnings.append(
                f"environment variable {name} is not a hotwire setting, ignored ({hint}"
                f"see `hotwire serve --help`)"
            )
    return warnings


def kernel_cache_dir_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """HOTWIRE_KERNEL_CACHE_DIR, for `hotwire warm-kernels` (which takes no other setting)."""
    text = (os.environ if environ is None else environ).get(ENV_PREFIX + "KERNEL_CACHE_DIR")
    return Path(text) if text else None


def _check(config: ServerConfig) -> None:
    """The same rules for a value from a flag or from its HOTWIRE_* variable; a ConfigError names the
    setting."""
    choices = {"log_level": LOG_LEVELS, "log_format": ("plain", "json"), "model_control_mode": CONTROL_MODES}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(
                f"--{_flag(name)} '{getattr(config, name)}': expected one of {', '.join(allowed)}"
            )
    ranges: dict[str, tuple[float, float]] = {
        "grpc_port": (0, 65535),
        "http_port": (-1, 65535),
        "metrics_port": (-1, 65535),
        "request_log_rate": (0, 1),
        "slow_request_ms": (0, float("inf")),
        "shutdown_grace_s": (0, float("inf")),
        "repository_poll_secs": (0.01, float("inf")),
        "max_message_bytes": (1, 2**31 - 1),
        "default_max_batch_size": (1, float("inf")),
        "workers": (1, 1024),
        "log_verbose": (0, float("inf")),
        "max_inflight": (1, float("inf")),
        "max_request_tensors": (1, float("inf")),
        "max_request_rows": (1, float("inf")),
        "rate_limit": (0, float("inf")),
        "rate_burst": (0, float("inf")),
        "caller_rate_limit": (0, float("inf")),
        "caller_burst": (0, float("inf")),
        "max_model_batch_size": (1, float("inf")),
        "max_model_instances": (1, float("inf")),
        "max_buffer_bytes": (1, float("inf")),
    }
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        if not low <= value <= high:
            bounds = f"at least {low:g}" if high == float("inf") else f"between {low:g} and {high:g}"
            raise ConfigError(f"--{_flag(name)} {value:g} (or {ENV_PREFIX}{name.upper()}): expected {bounds}")
    try:
        if config.devices:  # from HOTWIRE_DEVICES, which the flag's parser has not seen
            _device_list(",".join(config.devices))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--devices: {exc}") from None
    if config.load_model and config.model_control_mode != "explicit":
        raise ConfigError("--load-model needs --model-control-mode explicit")


def _flag(name: str) -> str:
    return name.replace("_", "-")


_DEVICE = re.compile(
    r"\d+|(GPU|MIG)-[0-9A-Za-z/_-]+"
)  # MIG-<uuid>; drivers before R470: MIG-GPU-<uuid>/gi/ci


def _device_list(text: str) -> list[str]:
    devices = [part.strip() for part in text.split(",") if part.strip()]
    bad = [d for d in devices if not _DEVICE.fullmatch(d)]
    if not devices or bad:
        raise argparse.ArgumentTypeError(
            f"expected CUDA devices as MIG-<uuid>, GPU-<uuid> or an index, comma-separated; got {text!r}"
        )
    if len(set(devices)) != len(devices):
        raise argparse.ArgumentTypeError(f"a device is listed twice in {text!r}")
    return devices


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
        value = parse_bool(text)
        if value is None:
            raise ConfigError(f"environment variable {variable}: expected true or false, got '{text}'")
        return value
    if variable == ENV_PREFIX + "LOG_LEVEL":
        return text.upper()
    return text


def parse_serve_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(prog="hotwire serve")
    add_serve_arguments(parser)
    args, extra = parser.parse_known_args(list(argv))
    if extra:
        parser.error(unrecognized(extra))
    return server_config(args, environ)


# tritonserver's flags that `hotwire serve` does not take: what to use instead, or why there is nothing.
_UNSUPPORTED = "not supported by hotwire"
TRITON_FLAGS: dict[str, str] = {
    "--http-address": "use --host (HTTP listens on the gRPC address)",
    "--http-thread-count": "hotwire serves HTTP on its event loop; use --workers N for more processes",
    "--http-header-forward-pattern": _UNSUPPORTED,
    "--http-restricted-api": _UNSUPPORTED,
    "--reuse-http-port": "use --workers N: hotwire's workers share the HTTP port",
    "--allow-http": "use --http-port -1 to turn HTTP off",
    "--allow-grpc": "hotwire always serves gRPC; drop the flag",
    "--allow-metrics": "use --metrics-port -1 to turn metrics off",
    "--metrics-address": "use --host (metrics listen on the gRPC address)",
    "--reuse-grpc-port": "use --workers N: hotwire's workers share the gRPC port",
    "--grpc-use-ssl": "use --tls-cert and --tls-key (TLS on every port)",
    "--grpc-use-ssl-mutual": "use --tls-client-ca (client certificates required)",
    "--grpc-server-cert": "use --tls-cert",
    "--grpc-server-key": "use --tls-key",
    "--grpc-root-cert": "use --tls-client-ca",
    "--log-info": "use --log-level INFO",
    "--log-warning": "use --log-level WARNING",
    "--log-error": "use --log-level ERROR",
    "--log-file": "hotwire logs to stderr; redirect it",
    "--backend-config": "set ONNX Runtime options per model in config.pbtxt `parameters`",
    "--strict-model-config": "hotwire always completes a partial config.pbtxt from the ONNX graph",
    "--disable-auto-complete-config": "hotwire always completes a partial config.pbtxt from the ONNX graph",
    **{
        flag: _UNSUPPORTED
        for flag in (
            "--id",
            "--allow-gpu-metrics",
            "--allow-cpu-metrics",
            "--metrics-interval-ms",
            "--metrics-config",
            "--model-load-thread-count",
            "--model-load-retry-count",
            "--model-namespacing",
            "--model-config-name",
            "--backend-directory",
            "--repoagent-directory",
            "--cache-directory",
            "--cache-config",
            "--response-cache-byte-size",
            "--pinned-memory-pool-byte-size",
            "--cuda-memory-pool-byte-size",
            "--cuda-virtual-address-size",
            "--min-supported-compute-capability",
            "--buffer-manager-thread-count",
            "--host-policy",
            "--rate-limit-resource",
            "--model-load-gpu-limit",
            "--trace-config",
            "--trace-file",
            "--trace-level",
            "--trace-rate",
            "--trace-count",
            "--trace-log-frequency",
            "--grpc-infer-allocation-pool-size",
            "--grpc-max-response-pool-size",
            "--grpc-infer-response-compression-level",
            "--grpc-keepalive-time",
            "--grpc-keepalive-timeout",
            "--grpc-keepalive-permit-without-calls",
            "--grpc-http2-max-pings-without-data",
            "--grpc-http2-min-recv-ping-interval-without-data",
            "--grpc-http2-max-ping-strikes",
            "--grpc-max-connection-age",
            "--grpc-max-connection-age-grace",
            "--grpc-restricted-protocol",
            "--grpc-header-forward-pattern",
            "--allow-sagemaker",
            "--sagemaker-port",
            "--sagemaker-safe-port-range",
            "--sagemaker-thread-count",
            "--allow-vertex-ai",
            "--vertex-ai-port",
            "--vertex-ai-thread-count",
            "--vertex-ai-default-model",
        )
    },
}


def unrecognized(extra: Sequence[str]) -> str:
    """The usage error for arguments `serve` does not take: a hint for each tritonserver flag among them."""
    hints, unknown = [], []
    takes_value = False  # the previous argument was a Triton flag without `=VALUE`: this one is its value
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in TRITON_FLAGS:
            hints.append(f"tritonserver's {flag}: {TRITON_FLAGS[flag]}")
            takes_value = "=" not in arg
            continue
        if not (takes_value and not arg.startswith("-")):
            unknown.append(arg)
        takes_value = False
    if unknown:
        hints.append("unrecognized arguments: " + " ".join(unknown))
    return "; ".join(hints)
