"""Run the real hotwire App on 127.0.0.1 (ephemeral ports) on a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hotwire.server import readiness
from hotwire.server.app import App
from hotwire.server.config import ServerConfig


class ServerThread:
    def __init__(self, repository: Path, **overrides: Any) -> None:
        config = ServerConfig(
            model_repository=repository,
            host="127.0.0.1",
            grpc_port=0,
            http_port=0,
            metrics_port=-1,
            shutdown_grace_s=5.0,
        )
        self.config = dataclasses.replace(config, **overrides)
        self.loop = asyncio.new_event_loop()
        self.app = App(self.config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="hotwire-test-server", daemon=True)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self.app.start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.app.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.app.http_port}"


# The server's (or the supervisor's) own listening line: worker lines carry a `[worker i]` prefix, or a
# "worker" field in JSON.
_OWN_LISTENING_LINE = re.compile(r'^(?!\[worker)(?!.*"worker": \d).*hotwire listening on ')


class LoggedProcess:
    """A server child process with its output collected on a thread; `listening` matches the line that says it
    is up, its first group being the port."""

    def __init__(
        self,
        argv: list[str],
        listening: re.Pattern[str] | None,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self.listening_match: re.Match[str] | None = None
        self._listening = listening
        self._ready = threading.Event()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = self._listening.search(line) if self._listening is not None else None
            if match:
                self.listening_match = match
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    def wait_listening(self, timeout: float = 60) -> int:
        self._ready.wait(timeout)
        assert self.port is not None, "server did not start:\n" + self.log
        return self.port

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Wait until a logged line contains `text`."""
        self._wait_until(lambda: any(text in line for line in self.lines), timeout, repr(text))

    def _wait_until(self, logged: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not logged():
            if time.monotonic() > deadline:
                raise AssertionError(f"never logged {what}:\n{self.log}")
            time.sleep(0.01)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then its exit status once it has exited and every line it wrote is in `lines`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._collector.join(10)  # the pipe is at EOF: the collector ends once it has read the last lines
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._collector.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class ServeProcess(LoggedProcess):
    """`python -m hotwire.server serve ...`; it says it listens, and on which ports, through --ready-fd."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        ready_read, ready_write = os.pipe()
        try:
            super().__init__(
                [sys.executable, "-m", "hotwire.server", "serve", *args, "--ready-fd", str(ready_write)],
                None,
                env,
                pass_fds=(ready_write,),
            )
        finally:
            os.close(ready_write)
        self._ready_read = ready_read
        self.listening: readiness.Listening | None = None
        self._heard = False

    def wait_listening(self, timeout: float = 60) -> int:
        if not self._heard:
            self._heard = True
            self.listening = readiness.wait(self._ready_read, timeout)
        assert self.listening is not None, "server did not start:\n" + self.log
        self.port = self.listening.grpc_port
        # The ready line can arrive before the collector thread has read the log written ahead of it; tests
        # read that log (what was loaded, which warnings), so wait until it holds the server's own line too.
        self._wait_until(
            lambda: any(_OWN_LISTENING_LINE.search(line) for line in self.lines),
            timeout,
            "the 'hotwire listening' log line",
        )
        return self.port

    def close(self) -> None:
        if not self._heard:
            self._heard = True
            os.close(self._ready_read)
        super().close()

    @property
    def http_port(self) -> int | None:
        return (
            self.listening.http_port if self.listening is not None and self.listening.http_port >= 0 else None
        )

    @property
    def metrics_port(self) -> int | None:
        return (
            self.listening.metrics_port
            if self.listening is not None and self.listening.metrics_port >= 0
            else None
        )
