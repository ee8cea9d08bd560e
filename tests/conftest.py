"""Shared fixtures: a real server on 127.0.0.1 with an ephemeral port, and gRPC stubs to talk to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# The tests' own kernel cache, new for every run: no test depends on what an earlier run, or a `hotwire serve`
# of the same install, left in the per-user cache. Set before anything below imports hotwire.kernels
# (numba fixes a kernel's cache directory when the kernel is decorated); servers started as subprocesses
# inherit it.
KERNEL_CACHE = tempfile.mkdtemp(prefix="hotwire-test-kernels-")
os.environ["NUMBA_CACHE_DIR"] = KERNEL_CACHE
# Servers the tests start as subprocesses serve HTTP on any free port, never on the fixed default 8000, which
# another server (or a parallel test) may hold; a test of the HTTP port itself passes --http-port.
os.environ["HOTWIRE_HTTP_PORT"] = "0"

import grpc  # noqa: E402
import pytest  # noqa: E402

from hotwire.proto import grpc_service_pb2_grpc  # noqa: E402
from server_harness import ServeProcess, ServerThread  # noqa: E402

if TYPE_CHECKING:
    from credentials import Pki

StartServer = Callable[..., ServerThread]


@pytest.fixture
def running_server() -> Iterator[StartServer]:
    """`running_server(repository, **ServerConfig overrides)` starts a server; all are stopped at teardown."""
    started: list[ServerThread] = []

    def start(repository: Path, **overrides: object) -> ServerThread:
        server = ServerThread(repository, **overrides).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def stub_for() -> Iterator[Callable[[ServerThread], grpc_service_pb2_grpc.GRPCInferenceServiceStub]]:
    channels: list[grpc.Channel] = []

    def make(server: ServerThread) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
        channel = grpc.insecure_channel(server.address)
        channels.append(channel)
        return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServeProcess]]:
    processes: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        process = ServeProcess(list(args), env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(KERNEL_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Throwaway certificates (tests/credentials.py) for the TLS tests."""
    # Imported here, not at the top: trustme is a test extra that CI's protobuf-7 run (tests/proto and the
    # interop suite only) does not install.
    from credentials import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))
