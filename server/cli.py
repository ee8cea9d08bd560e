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
    if config.workers > 1:
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


def _channel(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The admin commands' channel: TLS when --tls-ca is given (with a client certificate for mTLS)."""
    import grpc

    if args.tls_ca is None:
        return grpc.insecure_channel(args.url)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(args.url, credentials)


def _admin(args: argparse.Namespace, parameters: dict[str, str]) -> tuple[str, str, str]:
    """RepositoryModelLoad carrying an admin parameter; returns the server's (action, version, elapsed ms)."""
    from hotwire.proto import grpc_service_pb2 as pb
    from hotwire.proto import grpc_service_pb2_grpc

    request = pb.RepositoryModelLoadRequest(model_name=args.model)
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    api_key = args.api_key or os.environ.get("HOTWIRE_API_KEY")
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    with _channel(args) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.RepositoryModelLoad.with_call(request, timeout=300, metadata=metadata)
    trailers = dict(call.trailing_metadata() or ())
    return (
        trailers.get("hotwire-action", ""),
        trailers.get("hotwire-version", ""),
        trailers.get("hotwire-elapsed-ms", ""),
    )


def _rollback(args: argparse.Namespace) -> int:
    action, version, elapsed = _admin(args, {"hotwire.rollback": "" if args.to is None else str(args.to)})
    how = "from standby" if action == "rollback:standby" else "reloaded from the repository (no standby copy)"
    print(f"{args.model}: traffic now on version {version}, {how}, in {float(elapsed or 0):.1f} ms")
    return 0


def _traffic(args: argparse.Namespace) -> int:
    import json

    update = {
        key: value
        for key, value in (
            ("stable", args.stable),
            ("canary", args.canary),
            ("canary_weight", args.weight),
            ("sticky_parameter", args.sticky),
            ("shadow", args.shadow),
            ("shadow_fraction", args.fraction),
            ("standby", args.standby),
        )
        if value is not None
    }
    if not update:
        args.usage_error(
            "nothing to change: give --stable, --canary (with --weight), --sticky, --shadow "
            "(with --fraction) or --standby"
        )
    _admin(args, {"hotwire.traffic": json.dumps(update)})
    print(f"{args.model}: traffic policy updated: {update}")
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from hotwire.server.auth import new_key

    key, line = new_key(args.role)
    print(key)
    print(line)
    return 0


def _add_admin_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="localhost:8001", help="the server's gRPC address")
    parser.add_argument(
        "--api-key", help="an admin key for a server run with --api-keys (default: $HOTWIRE_API_KEY)"
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of a TLS server (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for a server that wants one")
    parser.add_argument("--tls-key", type=Path, help="the client certificate's private key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotwire", description="High-performance ONNX model server (KServe V2 gRPC)"
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
    rollback = commands.add_parser("rollback", help="send a model's traffic back to an earlier version")
    rollback.add_argument("model")
    rollback.add_argument("--to", type=int, help="the version (default: the previous one)")
    _add_admin_client_arguments(rollback)
    rollback.set_defaults(run=_rollback, usage_error=rollback.error)
    traffic = commands.add_parser("traffic", help="set a model's traffic policy (canary, shadow, standby)")
    traffic.add_argument("model")
    traffic.add_argument("--stable", type=int)
    traffic.add_argument("--canary", type=int)
    traffic.add_argument("--weight", type=float, help="canary share of unpinned requests, 0..1")
    traffic.add_argument("--sticky", help="request parameter that pins a client to one side")
    traffic.add_argument("--shadow", type=int)
    traffic.add_argument("--fraction", type=float, help="share of requests mirrored to the shadow, 0..1")
    traffic.add_argument("--standby", type=int, help="superseded versions kept loaded for instant rollback")
    _add_admin_client_arguments(traffic)
    traffic.set_defaults(run=_traffic, usage_error=traffic.error)
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
    except Exception as exc:  # grpc.RpcError from the admin commands: show the server's message
        details = getattr(exc, "details", None)
        if callable(details):
            print(f"hotwire: {exc.code().name}: {details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
