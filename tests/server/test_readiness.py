"""--ready-fd (server/readiness.py): the line a listening server writes, and what its reader makes of a writer
that ends without one or takes too long."""

from __future__ import annotations

import os
import time

from hotwire.server import readiness


def test_the_announced_ports_are_read_back_and_the_pipe_is_closed() -> None:
    read_end, write_end = os.pipe()
    readiness.announce(
        write_end, readiness.Listening(pid=42, grpc_port=8001, http_port=-1, metrics_port=8002)
    )
    assert readiness.wait(read_end, timeout_s=5) == readiness.Listening(42, 8001, -1, 8002)
    for fd in (read_end, write_end):  # both ends are closed by the two sides
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} is still open")


def test_a_writer_that_ends_without_the_line_means_not_listening() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b'{"pid": 1')  # a partial line, then the process is gone
    os.close(write_end)
    assert readiness.wait(read_end, timeout_s=5) is None


def test_the_wait_is_bounded() -> None:
    read_end, write_end = os.pipe()
    try:
        started = time.monotonic()
        assert readiness.wait(read_end, timeout_s=0.2) is None
        assert time.monotonic() - started < 5
    finally:
        os.close(write_end)
