"""`hotwire` command line: argument parsing → config → App.run(). The only place that exits the process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hotwire.server import logs
from hotwire.server.config import (
    add_serve_arguments,
    kernel_cache_dir_from_env,
    server_config,
    unknown_variables,
    unrecognized,
    version,
)
from hotwire.server.errors import ConfigError

log = logging.getLogger("hotwire")


def _use_kernel_cache(directory: Path | None) -> None:
    """Point numba's kernel cache at `directory` (None: hotwire's per-user default, ~/.cache/hotwire/kernels)
    in this process and the ones it starts.

    Read before any kernel is decorated (hotwire.kernels' import); hotwire.kernels.cache makes a read-only
    directory usable (numba alone silently skips it)."""
    if directory is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(directory.expanduser().absolute())


def _warm_kernels(args: argparse.Namespace) -> int:
    directory = args.kernel_cache_dir if args.kernel_cache_dir is not None else kernel_cache_dir_from_env()
    _use_kernel_cache(directory)
    logs.configure("INFO", "plain")
    from hotwire.server import kernel_cache  # imports numba: only now that NUMBA_CACHE_DIR is set

    report = kernel_cache.warm()
    where = ", ".join(sorted(report.cache_paths)) or "nowhere"
    print(
        f"kernel cache {where}: {report.loaded} kernel signatures loaded, {report.compiled} compiled"
        + (f", {len(report.unsaved)} of them could not be saved" if report.unsaved else "")
    )
    if report.unsaved:
        print(
            "hotwire: the kernel cache could not be written: "
            "point --kernel-cache-dir at a writable directory",
            file=sys.stderr,
        )
        return 1
    if args.check and report.compiled:
        print(f"hotwire: --check: {report.compiled} kernel signatures were not in the cache", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    logs.configure(config.log_level, config.log_format)
    if not config.reuse_port:  # a worker's environment is its supervisor's, which has warned already
        for warning in unknown_variables():
            log.warning("%s", warning)
    _use_kernel_cache(config.kernel_cache_dir)
    if not config.reuse_port and (config.workers > 1 or config.devices):  # a worker never supervises
        from hotwire.server.workers import Supervisor  # imports no ORT, numba or event loop

        return Supervisor(config).run()

    from hotwire.server.app import App, StartupError  # imports ORT and gRPC: only in a serving process

    app = App(config)

    def force_exit() -> None:
        os._exit(1)

    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(app.run(force_exit))
        else:
            uvloop.run(app.run(force_exit))
    except StartupError as exc:
        print(f"hotwire: {exc}", file=sys.stderr)
        if config.reuse_port:  # a --workers worker: tell the supervisor not to restart it
            from hotwire.server.workers import STARTUP_REFUSED_EXIT

            return STARTUP_REFUSED_EXIT
        return 1
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from hotwire.server.auth import new_key

    key, line = new_key(args.role)
    print(key)
    print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Imported here, after hotwire.server.config above has set gRPC's log verbosity (read at grpc's first
    # import, which the client's modules would otherwise be).
    from hotwire.bench.latency import add_bench_command
    from hotwire.clients.cli import add_client_commands

    parser = argparse.ArgumentParser(
        prog="hotwire",
        description="High-performance ONNX model server (KServe V2 gRPC and HTTP) and its client",
    )
    parser.add_argument("--version", action="version", version=f"hotwire {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository over gRPC")
    add_serve_arguments(serve)
    serve.set_defaults(run=_serve, usage_error=serve.error)
    warm = commands.add_parser(
        "warm-kernels",
        help="compile the numba kernels into the kernel cache (e.g. at "
        "image build), so servers using it compile nothing",
    )
    warm.add_argument(
        "--kernel-cache-dir",
        type=Path,
        help="the cache to fill, as given to `serve` (default: $HOTWIRE_KERNEL_CACHE_DIR, else "
        "~/.cache/hotwire/kernels); it can be read-only afterwards",
    )
    warm.add_argument(
        "--check",
        action="store_true",
        help="fail (exit 1) unless every kernel loaded from the cache, compiling none",
    )
    warm.set_defaults(run=_warm_kernels, usage_error=warm.error)
    add_client_commands(commands)
    add_bench_command(commands)
    keys = commands.add_parser("keys", help="API keys for --api-keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser(
        "new",
        help="print a fresh random key (give it to the client) and, on the second line, the line for the "
        "--api-keys file (which holds only the key's SHA-256)",
    )
    new.add_argument("--role", choices=("infer", "admin"), default="infer", help="default infer")
    new.set_defaults(run=_keys_new, usage_error=new.error)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Unknown arguments that are tritonserver's flags get a hint, not a bare "unrecognized arguments".
    args, extra = build_parser().parse_known_args(argv)
    from hotwire.clients.errors import InferenceServerError

    if extra:
        args.usage_error(
            unrecognized(extra) if args.command == "serve" else "unrecognized arguments: " + " ".join(extra)
        )
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"hotwire: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hotwire: {exc}", file=sys.stderr)
        return 1
    except InferenceServerError as exc:  # the client commands: the server's status and message
        print(f"hotwire: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
