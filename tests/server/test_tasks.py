"""BackgroundTasks (server/tasks.py): tasks are held until they end, failures are logged, and the shutdown
waits for them (or cancels them), new ones started meanwhile included."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hotwire.server.tasks import BackgroundTasks


def test_wait_returns_after_every_task_including_ones_started_meanwhile() -> None:
    finished: list[str] = []

    async def scenario() -> int:
        tasks = BackgroundTasks("test")

        async def second() -> None:
            await asyncio.sleep(0.01)
            finished.append("second")

        async def first() -> None:
            await asyncio.sleep(0.01)
            tasks.spawn(second())  # started while the shutdown is already waiting
            finished.append("first")

        tasks.spawn(first())
        await tasks.wait()
        return len(tasks)

    assert asyncio.run(scenario()) == 0
    assert finished == ["first", "second"]


def test_a_failing_task_is_logged_with_its_owner_and_does_not_stop_the_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        tasks = BackgroundTasks("shadow requests")

        async def boom() -> None:
            raise ValueError("shadow version exploded")

        tasks.spawn(boom(), name="shadow m")
        await tasks.wait()

    with caplog.at_level(logging.ERROR, logger="hotwire.server.tasks"):
        asyncio.run(scenario())
    assert "shadow requests: background task shadow m failed" in caplog.text
    assert "shadow version exploded" in caplog.text


def test_close_cancels_what_still_runs() -> None:
    async def scenario() -> bool:
        tasks = BackgroundTasks("test")
        task = tasks.spawn(asyncio.sleep(3600))
        await asyncio.sleep(0)
        await asyncio.wait_for(tasks.close(), timeout=5)
        return task.cancelled()

    assert asyncio.run(scenario())
