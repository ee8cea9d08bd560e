"""hotwire.bench.classes: the zoo × class table is rendered from `hotwire bench` runs as they are written
(capacities, the p99 at them, ratios to the peers, the floor, the steps where the client was the limit)."""

from __future__ import annotations

import argparse

from hotwire.bench.classes import render_section


def server(label: str, capacity: float, limited: bool = False) -> dict[str, object]:
    steps = [
        {"offered_rps": 50.0, "meets_target": True, "p99_ms": 4.0, "client_limited": ""},
        {"offered_rps": capacity, "meets_target": capacity > 50, "p99_ms": 8.5, "client_limited": ""},
        {"offered_rps": capacity * 2, "meets_target": False, "p99_ms": 30.0,
         "client_limited": "5.0% of requests were sent over 1 ms late" if limited else ""},
    ]  # fmt: skip
    return {"label": label, "capacity_rps": capacity, "steps": steps}


def run(model: str, target: str, servers: list[dict[str, object]]) -> dict[str, object]:
    return {
        "model": model,
        "machine": {"cpu": "Test CPU", "cores": "2", "date": "2026-12-03T00:00:00+00:00"},
        "versions": {"hotwire": "0.1.0"},
        "settings": {"target": target},
        "floors": {"onnxruntime": {"p50_ms": 0.0161}},
        "servers": servers,
    }


def test_the_table_from_runs():
    args = argparse.Namespace(
        server_cpu=1, client_cpu=0, precision=0.1, duration=3.0, warmup=1.0, min_requests=500
    )
    runs = [
        run("classifier", "edge", [server("hotwire", 800.0), server("inline", 400.0, limited=True),
                                   server("mlserver", 200.0), server("echo", 1600.0)]),
        run("transformer", "streaming", [server("hotwire", 300.0)]),
    ]  # fmt: skip
    section = render_section(runs, "python -m hotwire.bench.classes", args)
    assert (
        section.startswith("<!-- bench:run:classes:start -->") and "<!-- bench:run:classes:end -->" in section
    )
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| classifier") or line.startswith("| transf")
    ]
    assert rows[0] == (
        "| classifier | edge | 800 (8.5 ms) | 400 (8.5 ms) | 200 (8.5 ms) | 1,600 (8.5 ms) | 2.00× | 4.00× "
        "| 0.016 | inline at 800 rps |"
    )
    assert rows[1] == "| transformer | streaming | 300 (8.5 ms) | – | – | – | – | – | 0.016 | no |"
    assert "machine: Test CPU, 2 cores" in section and "`python -m hotwire.bench.classes`" in section
