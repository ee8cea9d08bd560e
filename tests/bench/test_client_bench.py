"""`python -m hotwire.bench.client` runs end to end with tiny settings against the echo reference server: its
table has every row, each with positive numbers, and `--output` replaces its own section of a file and nothing
else. Speed is not asserted here: the benchmark measures it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hotwire.bench import client as bench
from hotwire.bench.run import markers, replace_section

START, END = markers("client")
OTHER = "<!-- bench:run:start -->\nanother benchmark's numbers\n<!-- bench:run:end -->"


def _number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def test_tiny_run_against_echo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "RESULTS.md"
    output.write_text(f"# results\n\nbefore\n\n{START}\nold client numbers\n{END}\n\n{OTHER}\n")
    argv = "--servers echo --concurrency 2 --repeats 1 --window-s 0.2 --warmup-s 0.1 --output".split()
    argv.append(str(output))
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    section = printed[printed.index(START) : printed.index(END) + len(END)]

    assert "`python -m hotwire.bench.client --servers echo --concurrency 2" in section
    assert "tritonclient 2." in section and "grpcio " in section
    assert "Failed measurements" not in section
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| echo |")
    ]
    expected = [
        (load.describe(), bench.LABELS[(load.api, client)])
        for load in bench.loads(["echo"], 2)
        for client in bench.CLIENTS
    ]
    assert [(row[1], row[2]) for row in rows] == expected
    assert [row[1] for row in rows] == ["1 thread"] * 3 + ["2 threads"] * 3 + ["2 asyncio tasks"] * 3
    for row in rows:
        # inf/s, p50, p99, client CPU µs/call, client core %, server core %; then the three ratios
        assert all(_number(v) > 0 for v in row[3:9]), row
        assert all(_number(v) > 0 for v in row[10:13]), row
    for what in ("client CPU per call", "p50 latency", "throughput"):
        assert f", {what}: multiplexed " in section

    # --output: this section replaced in place, the rest of the file as it was
    text = output.read_text()
    assert text == f"# results\n\nbefore\n\n{section}\n\n{OTHER}\n"

    # a file without the markers gets the section appended
    other = tmp_path / "other.md"
    other.write_text(f"# results\n\n{OTHER}\n")
    replace_section(other, section + "\n", bench.SECTION)
    assert other.read_text() == f"# results\n\n{OTHER}\n\n{section}\n"


def test_failed_measurements_are_shown_not_dropped() -> None:
    load = bench.Load("echo", "threads", 1)
    cells = {(load, c): bench.Cell() for c in bench.CLIENTS}
    sample = bench.Sample(100, 1.0, 100.0, 900.0, 1500.0, 40.0, 0.4, 0.5, (0,))
    cells[(load, "tritonclient")].samples.append(sample)
    cells[(load, "hotwire-mux")].samples.append(sample)
    cells[(load, "hotwire-unary")].errors.append("Unavailable: connection refused")
    info = {
        k: "x"
        for k in ("cpu", "cores", "date", "python", "grpc", "tritonclient", "numpy", "hotwire", "onnxruntime")
    }
    args = argparse.Namespace(warmup_s=0.5, window_s=2.0, repeats=1)
    section = bench.render_section(info, "python -m hotwire.bench.client", args, [load], cells, "unpinned")
    assert "| echo | 1 thread | hotwire `Client` unary | error | error | error |" in section
    assert "- echo 1 thread hotwire-unary: Unavailable: connection refused" in section
    assert "multiplexed 1.00× (not met), unary —; target ≤ 0.7×" in section
