"""The client's commands of `hotwire`: infer, models, health, rollback, traffic, client generate.

They talk to any Open Inference Protocol server through `hotwire.clients.Client` (rollback and traffic are
hotwire's own). Exit codes: 0 OK, 1 the server (or the connection) failed, its message printed; 2 usage.
`hotwire.server.cli` adds these commands to its parser and turns `InferenceServerError` into exit 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hotwire.clients.client import Client
from hotwire.clients.tensors import random_array

__all__ = ["add_client_commands"]

_NAME_VALUE = re.compile(r"^([^=]+)=(.+)$")


def _add_connection_arguments(parser: argparse.ArgumentParser, admin: bool = False) -> None:
    parser.add_argument(
        "--url", default="localhost:8001", help="the server's gRPC address (default %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        help=("an admin key" if admin else "a key")
        + " for a server run with --api-keys (default: $HOTWIRE_API_KEY)",
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of a TLS server (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for a server that wants one")
    parser.add_argument("--tls-key", type=Path, help="the client certificate's private key")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call (default %(default)s)")


def _client(args: argparse.Namespace) -> Client:
    return Client(
        args.url,
        multiplex=False,  # one call: a stream would only add its setup
        timeout=args.timeout,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=args.api_key or os.environ.get("HOTWIRE_API_KEY") or None,
    )


def _fixed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A metadata shape with its variable dimensions taken as 1."""
    return tuple(1 if d < 0 else d for d in shape)


def _infer(args: argparse.Namespace) -> int:
    given: dict[str, np.ndarray] = {}
    for spec in args.input:
        match = _NAME_VALUE.match(spec)
        if match is None:
            args.usage_error(f"--input {spec!r}: expected NAME=FILE.npy")  # exits
            raise AssertionError("unreachable")
        name, file = match.group(1), Path(match.group(2))
        try:
            given[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            args.usage_error(f"--input {name}: cannot read {file} as a .npy array: {exc}")
    if not given and not args.random:
        args.usage_error("give the inputs: --input NAME=FILE.npy (repeatable), or --random")
    with _client(args) as client:
        inputs = dict(given)
        if args.random:
            rng = np.random.default_rng(args.seed)
            for tensor in client.model_metadata(args.model, args.model_version).inputs:
                if tensor.name not in inputs:
                    inputs[tensor.name] = random_array(tensor.datatype, _fixed(tensor.shape), rng)
        result = client.infer(args.model, inputs, args.output or None, args.model_version)
    print(f"{result.model_name} version {result.model_version}")
    for name, array in result.items():
        shown = f"{name}: {result.datatypes[name]} {list(array.shape)}"
        if args.output_dir is not None:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            target = args.output_dir / f"{_file_name(name)}.npy"
            np.save(target, array, allow_pickle=array.dtype == object)
            print(f"{shown} -> {target}")
        else:
            with np.printoptions(threshold=200, edgeitems=4):
                print(f"{shown}\n{array}")
    return 0


def _file_name(output: str) -> str:
    """An output name as a file name: nothing that could leave the output directory."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", output).lstrip(".") or "output"


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = client.repository_index(ready_only=args.ready)
    table = [("MODEL", "VERSION", "STATE", "ROLE / REASON")] + [
        (r.name, r.version, r.state, r.reason) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def _health(args: argparse.Namespace) -> int:
    """Live, ready and grpc.health.v1 status of the server (or of one model); exit 1 unless all are good."""
    with _client(args) as client:
        live = client.server_live()
        ready = client.model_ready(args.model) if args.model else client.server_ready()
        status = client.health(args.model or "")
    what = f"model {args.model}" if args.model else "server"
    print(f"{what}: live={live} ready={ready} health={status}")
    return 0 if live and ready and status == "SERVING" else 1


def _rollback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.rollback(args.model, args.to)
    how = (
        "from standby"
        if result.action == "rollback:standby"
        else "reloaded from the repository (no standby copy)"
    )
    print(f"{args.model}: traffic now on version {result.version}, {how}, in {result.elapsed_ms:.1f} ms")
    return 0


def _traffic(args: argparse.Namespace) -> int:
    policy: dict[str, Any] = {
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
    if not policy:
        args.usage_error(
            "nothing to change: give --stable, --canary (with --weight), --sticky, --shadow "
            "(with --fraction) or --standby"
        )
    with _client(args) as client:
        client.set_traffic(args.model, **policy)
    print(f"{args.model}: traffic policy updated: {policy}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    # imported here: the generator's source templates are only needed by this command
    from hotwire.clients.generate import write

    try:
        written = write(
            args.url,
            args.model or None,
            args.out,
            timeout=args.timeout,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token=args.api_key or os.environ.get("HOTWIRE_API_KEY") or None,
        )
    except ValueError as exc:  # no ready model to write
        print(f"hotwire: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: typed clients of {', '.join(written)}")
    return 0


def add_client_commands(commands: Any) -> None:
    """Add the client commands to `hotwire`'s subparsers."""
    infer = commands.add_parser("infer", help="run a model once and print (or save) its outputs")
    infer.add_argument("model")
    infer.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input from a .npy file"
    )
    infer.add_argument("--random", action="store_true", help="random data for the inputs not given")
    infer.add_argument("--seed", type=int, default=0, help="of --random (default %(default)s)")
    infer.add_argument("--output", action="append", default=[], help="an output to return (default: all)")
    infer.add_argument("--model-version", default="", help="default: the server's choice")
    infer.add_argument(
        "--output-dir", type=Path, help="write each output to DIR/NAME.npy instead of printing"
    )
    _add_connection_arguments(infer)
    infer.set_defaults(run=_infer, usage_error=infer.error)

    models = commands.add_parser("models", help="the repository index: models, versions, states and roles")
    models.add_argument("--ready", action="store_true", help="only ready versions")
    _add_connection_arguments(models)
    models.set_defaults(run=_models, usage_error=models.error)

    health = commands.add_parser("health", help="is the server (or a model) live, ready and serving")
    health.add_argument("model", nargs="?", default="", help="a model (default: the server)")
    _add_connection_arguments(health)
    health.set_defaults(run=_health, usage_error=health.error)

    rollback = commands.add_parser("rollback", help="send a model's traffic back to an earlier version")
    rollback.add_argument("model")
    rollback.add_argument("--to", type=int, help="the version (default: the previous one)")
    _add_connection_arguments(rollback, admin=True)
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
    _add_connection_arguments(traffic, admin=True)
    traffic.set_defaults(run=_traffic, usage_error=traffic.error)

    client = commands.add_parser("client", help="client tools: generate typed clients per model")
    client_commands = client.add_subparsers(dest="client_command", required=True, metavar="COMMAND")
    generate = client_commands.add_parser(
        "generate",
        help="write a typed Python module with a client class per model, from the server's metadata",
    )
    generate.add_argument(
        "--model", action="append", default=[], help="a model (repeatable; default: every ready model)"
    )
    generate.add_argument("--out", type=Path, required=True, metavar="FILE.py", help="the module to write")
    _add_connection_arguments(generate)
    generate.set_defaults(run=_generate, usage_error=generate.error)
