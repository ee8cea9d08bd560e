"""`hotwire` command line: argument parsing → config → App.run(). The only place that exits the process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Sequence

from hotwire.server.config import add_serve_arguments, server_config
from hotwire.server.errors import ConfigError

log = logging.getLogger("hotwire")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    _configure_logging(config.log_level)
    if config.workers > 1:
        from hotwire.server.workers import Supervisor  # imports no ORT, numba or event loop

        return Supervisor(config).run()

    from hotwire.server.app import App  # imports ORT and gRPC: only in a serving process

    app = App(config)

    def force_exit() -> None:
        os._exit(1)

    try:
        import uvloop
    except ImportError:
        asyncio.run(app.run(force_exit))
    else:
        uvloop.run(app.run(force_exit))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotwire", description="High-performance ONNX model server (KServe V2 gRPC)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository over gRPC")
    add_serve_arguments(serve)
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"hotwire: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hotwire: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
