"""Run the real hotwire App on 127.0.0.1 (ephemeral ports) on a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any, Coroutine

from hotwire.server.app import App
from hotwire.server.config import ServerConfig


class ServerThread:
    def __init__(self, repository: Path, **overrides: Any) -> None:
        config = ServerConfig(model_repository=repository, host="127.0.0.1", grpc_port=0, metrics_port=-1,
                              shutdown_grace_s=5.0)
        self.config = dataclasses.replace(config, **overrides)
        self.loop = asyncio.new_event_loop()
        self.app = App(self.config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="hotwire-test-server", daemon=True)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "ServerThread":
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
