"""Benchmarks: models, reference servers, load generators; results in bench/RESULTS.md."""
