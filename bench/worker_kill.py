"""Faults: what clients see when one worker of `hotwire serve --workers 2` is killed (SIGKILL) under load.

    python -m hotwire.bench.worker_kill [--runs 3] [--clients 8] [--seconds 10] [--kill-at 3]
                                        [--workers 2] [--output bench/RESULTS.md]

Serves the bundled classifier (a copy of server/example_repository/classifier, alone) with `--workers N` on
127.0.0.1 and drives it with closed-loop gRPC clients, one connection each (a channel of its own, as separate
client processes would have, so the kernel spreads them over the workers), each waiting 0.1 s after an
UNAVAILABLE as a retry policy would. At --kill-at seconds worker 0 is killed with SIGKILL; the load goes on
for --seconds in all (and at least 2 s past the replacement listening). Per run it reports: requests in all
and failures by status; how many client connections the killed worker held (from /proc: the calls that could
be cut); from the kill, when the supervisor logged the exit and when the replacement worker logged that it
listens (log timestamps, ms resolution); requests/s before the kill, between the kill and the replacement
listening, and after. Prints a Markdown section; with --output, writes it there between its markers
(appended at the end the first time).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from hotwire.bench.run import HOST, ChildServer, machine_info, markers, replace_section
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from hotwire.server.config import bundled_repository

SECTION = "worker-kill"
TITLE = "## Faults: a killed worker (session 5)"
# gRPC shares one connection among a process's channels with the same target and arguments: not these
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
WARM_S = 0.5  # the first half second (connections, first calls) is left out of "before"
AFTER_S = 2.0  # the least load after the replacement listens
BOUND_S = 120.0
_LOG_TIME = re.compile(r"^(?:\[worker \d+\] )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class Outcome:
    finished: float  # time.time()
    code: str  # "OK" or the gRPC status name


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    killed_pid: int = 0
    replacement_pid: int = 0
    connections_on_killed: int = 0
    connections_in_all: int = 0
    started: float = 0.0
    killed: float = 0.0
    exit_logged: float = float("nan")
    listening_logged: float = float("nan")
    ended: float = 0.0

    def codes(self) -> collections.Counter[str]:
        return collections.Counter(o.code for o in self.outcomes)

    def rate(self, start: float, stop: float) -> float:
        if not stop > start:
            return float("nan")
        return sum(1 for o in self.outcomes if o.code == "OK" and start <= o.finished < stop) / (stop - start)


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.random.default_rng(0).random((1, 16), dtype=np.float32).tobytes())
    return request


class Load:
    def __init__(self, address: str, clients: int, run: Run) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(address,), daemon=True) for _ in range(clients)
        ]
        self.first_ok = threading.Barrier(clients + 1)

    def _client(self, address: str) -> None:
        request = _request()
        first = True
        with grpc.insecure_channel(address, OWN_CONNECTION) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + BOUND_S
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    stub.ModelInfer(request, timeout=10)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with self._lock:
                    self._run.outcomes.append(Outcome(time.time(), code))
                if code == "UNAVAILABLE":
                    time.sleep(0.1)
                if first and code == "OK":
                    first = False
                    try:
                        self.first_ok.wait(BOUND_S)
                    except threading.BrokenBarrierError:
                        pass

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.first_ok.abort()
        for thread in self._threads:
            thread.join(30)


def connections(pid: int, port: int) -> int:
    """Established TCP connections on `port` (the server side) that process `pid` holds, from /proc."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "01" and fields[9] in inodes and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _logged_at(line: str) -> float:
    match = _LOG_TIME.match(line)
    if not match:
        return float("nan")
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _worker_pids(lines: list[str]) -> list[tuple[int, int]]:
    return [
        (int(m.group(1)), int(m.group(2)))
        for line in list(lines)
        if (m := re.search(r"worker (\d+) started \(pid (\d+)\)", line))
    ]


def _wait(condition: Callable[[], bool], what: str, bound_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {bound_s:.0f} s: {what}")
        time.sleep(0.005)


def one_run(repository: Path, args: argparse.Namespace) -> Run:
    server = ChildServer(
        "hotwire",
        [
            sys.executable,
            "-m",
            "hotwire.server",
            "serve",
            "--workers",
            str(args.workers),
            "--model-repository",
            str(repository),
            "--host",
            HOST,
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--metrics-port",
            "-1",
        ],
    )
    run = Run()
    try:
        address = server.wait_listening()
        port = int(address.rsplit(":", 1)[1])
        pids = dict(_worker_pids(server.lines))
        run.killed_pid = pids[0]
        with Load(address, args.clients, run) as load:
            load.first_ok.wait(BOUND_S)  # every client has its connection and an answer
            run.started = time.time()
            time.sleep(args.kill_at)
            run.connections_on_killed = connections(run.killed_pid, port)
            run.connections_in_all = sum(connections(pid, port) for pid in pids.values())
            run.killed = time.time()
            os.kill(run.killed_pid, signal.SIGKILL)
            exited = f"worker 0 (pid {run.killed_pid}) exited with signal 9"
            _wait(lambda: any(exited in line for line in list(server.lines)), "the supervisor saw the exit")
            _wait(lambda: len(_worker_pids(server.lines)) > args.workers, "the replacement started")

            def listening() -> list[str]:
                return [
                    line
                    for line in list(server.lines)
                    if re.match(r"\[worker 0\].*hotwire listening on ", line)
                ]

            _wait(lambda: len(listening()) >= 2, "the replacement listening")
            run.replacement_pid = _worker_pids(server.lines)[-1][1]
            run.exit_logged = next(_logged_at(line) for line in list(server.lines) if exited in line)
            run.listening_logged = _logged_at(listening()[1])
            # at least AFTER_S of load after the replacement listens, so "after" is never a sliver
            remaining = max(run.started + args.seconds, run.listening_logged + AFTER_S) - time.time()
            if remaining > 0:
                time.sleep(remaining)
            run.ended = time.time()
    finally:
        server.stop()
    return run


def _ms(value: float) -> str:
    return "—" if value != value else f"{value * 1e3:,.0f}"


def _rate(value: float) -> str:
    return "—" if value != value else f"{value:,.0f}"


def render(runs: list[Run], args: argparse.Namespace, command: str) -> str:
    info = machine_info()
    nproc = _command_output(["nproc"]) or info["cores"]
    model_name = _command_output(["sh", "-c", "lscpu | grep 'Model name'"]) or f"Model name: {info['cpu']}"
    start_marker, end_marker = markers(SECTION)
    lines = [
        start_marker,
        TITLE,
        "",
        f"- machine: `nproc` {nproc}; `{' '.join(model_name.split())}`; {info['date']}",
        f"- versions: python {info['python']}, onnxruntime {info['onnxruntime']}, grpcio {info['grpc']}",
        f"- command: `{command}`",
        f"- server: `hotwire serve --workers {args.workers}`, the bundled classifier alone "
        "(`max_batch_size: 64`, `dynamic_batching { max_queue_delay_microseconds: 0 }`, one CPU instance per "
        "worker), gRPC on 127.0.0.1",
        f"- load: {args.clients} closed-loop gRPC clients in one process (client threads share its GIL), one "
        "connection each, batch 1, waiting 0.1 s after an UNAVAILABLE; worker 0 SIGKILLed "
        f"{args.kill_at:g} s after every client had its first answer, load for {args.seconds:g} s in all "
        f"(or until {AFTER_S:g} s after the replacement listens, if later)",
        "- times from the kill: the supervisor's log line `exited with signal 9; restarting it`, and the "
        "replacement's `hotwire listening` line (log timestamps, ms resolution; the supervisor waits "
        "1 s before restarting a worker that had run under 10 s, `workers.RESTART_BACKOFF_S`)",
        "- requests/s (successes): before = from 0.5 s after the start to the kill; during = kill to the "
        "replacement listening (one worker); after = to the end",
        "",
        "| run | requests | OK | UNAVAILABLE | other failures | connections on the killed worker / all | "
        "exit logged, ms | replacement listening, ms | req/s before | req/s during | req/s after |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for index, run in enumerate(runs, 1):
        codes = run.codes()
        other = ", ".join(
            f"{code} {count}" for code, count in sorted(codes.items()) if code not in ("OK", "UNAVAILABLE")
        )
        cells = [
            str(index),
            f"{sum(codes.values()):,}",
            f"{codes['OK']:,}",
            str(codes["UNAVAILABLE"]),
            other or "0",
            f"{run.connections_on_killed} / {run.connections_in_all}",
            _ms(run.exit_logged - run.killed),
            _ms(run.listening_logged - run.killed),
            _rate(run.rate(run.started + WARM_S, run.killed)),
            _rate(run.rate(run.killed, run.listening_logged)),
            _rate(run.rate(run.listening_logged, run.ended)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(end_marker)
    return "\n".join(lines) + "\n"


def _command_output(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.worker_kill")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kill-at", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.workers < 2 or not 0 < args.kill_at < args.seconds:
        parser.error("needs --workers 2 or more and 0 < --kill-at < --seconds")
    command = "python -m hotwire.bench.worker_kill " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = []
    with tempfile.TemporaryDirectory(prefix="hotwire-worker-kill-") as tmp:
        shutil.copytree(bundled_repository() / "classifier", Path(tmp) / "classifier")
        for _ in range(args.runs):
            runs.append(one_run(Path(tmp), args))
    section = render(runs, args, command.strip())
    if args.output is not None:
        replace_section(args.output, section, SECTION)
    print(section)
    return 0 if all(set(run.codes()) <= {"OK", "UNAVAILABLE"} for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
