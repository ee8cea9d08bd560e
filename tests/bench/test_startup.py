"""The start-up benchmark: both repositories, cold and warm, timed to ServerReady and written as a section."""

from __future__ import annotations

import os
from pathlib import Path

from hotwire.bench import startup


def test_one_repeat_times_both_repositories_cold_and_warm(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    cache_before = os.environ.get("NUMBA_CACHE_DIR")
    assert startup.main(["--repeats", "1", "--output", str(output)]) == 0
    text = output.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| bundled |", "| classifier only |"))]
    assert len(rows) == 4, text
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        seconds, resident = float(cells[2]), float(cells[4])
        assert 0 < seconds < startup.READY_TIMEOUT_S and resident > 0, row
    assert "python -m hotwire.bench.startup --repeats 1" in text
    # Each child gets its cache through its own environment; this process's (the tests' cache) is untouched.
    assert os.environ.get("NUMBA_CACHE_DIR") == cache_before
