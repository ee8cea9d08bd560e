"""The one way a server says it is listening to whoever started it: a JSON line on an inherited pipe.

`hotwire serve --ready-fd FD` writes `{"pid": ..., "grpc_port": ..., "http_port": ..., "metrics_port": ...}`
and a newline to FD once every port listens, then closes it (a port that is off is -1). The supervisor of
--workers N hears its workers this way, and the tests and benchmarks hear servers this way; the "hotwire
listening" log line is for people. Closing the pipe without a line means the process ended before it was
listening.
"""

from __future__ import annotations

import json
import os
import select
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Listening:
    pid: int
    grpc_port: int
    http_port: int
    metrics_port: int


def announce(fd: int, listening: Listening) -> None:
    """Write the line and close the descriptor (a reader that is gone is no error: the server serves on)."""
    line = (
        json.dumps(
            {
                "pid": listening.pid,
                "grpc_port": listening.grpc_port,
                "http_port": listening.http_port,
                "metrics_port": listening.metrics_port,
            }
        )
        + "\n"
    )
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def wait(fd: int, timeout_s: float | None = None) -> Listening | None:
    """Read the line from the pipe's read end, then close it; None when the writer closed it without one (the
    process ended) or the timeout passed."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    data = b""
    try:
        while b"\n" not in data:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            data += chunk
    finally:
        os.close(fd)
    fields = json.loads(data.split(b"\n", 1)[0])
    return Listening(
        int(fields["pid"]), int(fields["grpc_port"]), int(fields["http_port"]), int(fields["metrics_port"])
    )
